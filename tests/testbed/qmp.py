#!/usr/bin/env python3
"""Minimal QMP client for the testbed bench: qmp.py SOCKET COMMAND [JSON-ARGS].
Prints the reply; exits non-zero on an error reply."""
import json
import socket
import sys


def main():
    path, command = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    f = s.makefile("rw")
    json.loads(f.readline())  # greeting
    for cmd in ({"execute": "qmp_capabilities"}, {"execute": command, **({"arguments": args} if args else {})}):
        f.write(json.dumps(cmd) + "\n")
        f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                break
    print(json.dumps(reply))
    sys.exit(1 if "error" in reply else 0)


if __name__ == "__main__":
    main()
