#!/usr/bin/env python3
"""Minimal QMP client for the testbed bench.
  qmp.py SOCKET COMMAND [JSON-ARGS]   one command; prints the reply, exits 1 on an error reply
  qmp.py SOCKET --serve FIFO          stay connected; send each JSON line read from FIFO
                                      (so the bench times the request, not Python's start-up)"""
import json
import socket
import sys


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    f = s.makefile("rw")
    json.loads(f.readline())  # greeting
    send(f, {"execute": "qmp_capabilities"})
    return f


def send(f, cmd):
    f.write(json.dumps(cmd) + "\n")
    f.flush()
    while True:
        reply = json.loads(f.readline())
        if "return" in reply or "error" in reply:
            return reply


def main():
    f = connect(sys.argv[1])
    if sys.argv[2] == "--serve":
        print("QMP-READY", flush=True)
        with open(sys.argv[3]) as fifo:
            for line in fifo:
                if line.strip():
                    print(json.dumps(send(f, json.loads(line))), flush=True)
        return
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    reply = send(f, {"execute": sys.argv[2], **({"arguments": args} if args else {})})
    print(json.dumps(reply))
    sys.exit(1 if "error" in reply else 0)


if __name__ == "__main__":
    main()
