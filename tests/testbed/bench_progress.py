#!/usr/bin/env python3
"""Shows make bench's progress from the L1 console (stdin): each section as it starts, each
round's figures as it ends, the time since the bench started and an estimate of what is left
(from the share of sections and rounds done). Usage: run-l1.sh ... | bench_progress.py START"""
import re
import sys
import time

FIGURE = re.compile(r"^([A-Z][A-Z_]*) (vfvmm|qemu) ([0-9]+) (\S+)$")


def clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def show(value, kind):
    if kind == "RTT":
        return f"{value} ms"
    try:
        return f"{int(value) / 1000:.1f} s"
    except ValueError:
        return value


def main():
    start = float(sys.argv[1])
    figures, k, n = [], 1, 1
    for raw in sys.stdin:
        line = raw.rstrip("\r\n")
        elapsed = time.time() - start
        if "L1-BENCH-SECTION " in line:
            name, k, n, rounds = line.split("L1-BENCH-SECTION ", 1)[1].split()[:4]
            k, n = int(k), int(n)
            print(f"bench [{clock(elapsed)}] section {k}/{n}: {name} ({rounds.replace('=', ' ')})", flush=True)
            figures = []
        elif "L1-BENCH-ROUND " in line:
            name, r, rounds = line.split("L1-BENCH-ROUND ", 1)[1].split()[:3]
            done = (k - 1 + int(r) / int(rounds)) / n
            left = elapsed * (1 - done) / done if done > 0 else 0
            shown = ", ".join(f"{kind} {vmm} {show(v, kind)}" for kind, vmm, _, v in figures) or "no figure"
            print(f"bench [{clock(elapsed)}] {name} {r}/{rounds}: {shown} (about {clock(left)} left)", flush=True)
            figures = []
        else:
            m = FIGURE.match(line.strip())
            if m:
                figures.append(m.groups())


if __name__ == "__main__":
    main()
