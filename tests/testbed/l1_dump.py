#!/usr/bin/env python3
"""Dumps the state of a silent L1 from L0 through its QMP socket (run-l1.sh's watchdog).

  l1_dump.py QMP_SOCKET KALLSYMS [SAMPLES] > l1-freeze.txt

KALLSYMS is L1's own list of code symbols of this boot (resources/l1-init.sh writes it into the
results directory; Debian's System.map is a stub). The report starts with one summary line,
  L1-FREEZE status=<run state> cpus=<n> samples=<n> where=<class>:<n>,... top=<symbol> (<n>/<n>)
then, per L1 CPU: where its RIP was in each sample, its registers, and the kernel code
addresses found on its stack (a rough backtrace). A RIP is classed as
  l1-kernel   in L1's kernel text (resolved to symbol+offset)
  l1-module   in an L1 module's text (e.g. kvm_amd)
  l1-user     CPL 3 and not L1 kernel code: an L1 process, or an L2 guest's user space
  elsewhere   CPL 0 outside L1's code: the L2 guest's kernel (L1 inside VMRUN)
"""
import bisect
import collections
import re
import sys
import time

from qmp import connect, send


class Symbols:
    def __init__(self, path):
        entries = []
        self.text = (0, 0)
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 3:
                        continue
                    addr = int(parts[0], 16)
                    module = parts[3].strip("[]") if len(parts) > 3 else None
                    entries.append((addr, parts[2], module))
        except (OSError, ValueError):
            pass
        entries.sort()
        self.addrs = [e[0] for e in entries]
        self.entries = entries
        named = {name: addr for addr, name, module in entries if module is None}
        self.text = (named.get("_text", 0), named.get("_etext", 0))
        self.loaded = bool(entries) and all(self.text)

    def resolve(self, addr):
        """(class, 'symbol+0xoff [module]') or (None, None) when addr is not L1 code."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return None, None
        base, name, module = self.entries[i]
        off = addr - base
        if module is None:
            if not self.text[0] <= addr < self.text[1]:
                return None, None
            return "l1-kernel", f"{name}+{off:#x}"
        # Module text is not bounded in kallsyms: accept what lies close to its last symbol.
        if off >= 0x4000:
            return None, None
        return "l1-module", f"{name}+{off:#x} [{module}]"


REG = re.compile(r"\b(RIP|RSP|CPL|EFL|CR3)=([0-9a-fA-F]+)")


def registers(f, cpu):
    reply = send(f, {"execute": "human-monitor-command",
                     "arguments": {"command-line": "info registers", "cpu-index": cpu}})
    text = reply.get("return", "")
    return text, {k: v for k, v in REG.findall(text)}


def classify(syms, regs):
    rip = int(regs.get("RIP", "0"), 16)
    where, name = syms.resolve(rip)
    if where is None:
        where = "l1-user" if regs.get("CPL") == "3" else "elsewhere"
        name = f"{rip:#x}"
    return where, name


def main():
    sock, kallsyms = sys.argv[1], sys.argv[2]
    nsamples = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    syms = Symbols(kallsyms)
    f = connect(sock)
    status = send(f, {"execute": "query-status"}).get("return", {}).get("status", "?")
    cpus = [c["cpu-index"] for c in send(f, {"execute": "query-cpus-fast"}).get("return", [])]
    samples = collections.defaultdict(list)
    last = {}
    for _ in range(nsamples):
        for cpu in cpus:
            text, regs = registers(f, cpu)
            samples[cpu].append((classify(syms, regs), regs.get("CPL", "?")))
            last[cpu] = (text, regs)
        time.sleep(0.1)

    where_count = collections.Counter(w for cpu in cpus for (w, _), _ in samples[cpu])
    top = collections.Counter(n for cpu in cpus for (_, n), _ in samples[cpu]).most_common(1)
    total = sum(where_count.values())
    top_text = f"{top[0][0]} ({top[0][1]}/{total})" if top else "-"
    wheres = ",".join(f"{w}:{n}" for w, n in sorted(where_count.items()))
    print(f"L1-FREEZE status={status} cpus={len(cpus)} samples={nsamples} where={wheres} top={top_text}")
    if not syms.loaded:
        print(f"(no L1 symbols in {kallsyms}: RIPs are not resolved)")
    for cpu in cpus:
        print(f"\n== L1 CPU {cpu}: RIP in {nsamples} samples, 100 ms apart")
        for ((where, name), cpl), n in collections.Counter(samples[cpu]).most_common():
            print(f"  {n:3d}x  {where:<10} CPL={cpl}  {name}")
        text, regs = last[cpu]
        print(f"\n== L1 CPU {cpu}: registers (last sample)\n{text.rstrip()}")
        rsp = regs.get("RSP")
        if rsp:
            reply = send(f, {"execute": "human-monitor-command",
                             "arguments": {"command-line": f"x/64gx {int(rsp, 16):#x}", "cpu-index": cpu}})
            frames = []
            for word in re.findall(r"0x([0-9a-f]{16})", reply.get("return", "")):
                where, name = syms.resolve(int(word, 16))
                if where:
                    frames.append(name)
            print(f"\n== L1 CPU {cpu}: L1 code addresses on the stack at RSP (innermost first)")
            print("\n".join(f"  {n}" for n in frames) if frames else "  (none: not an L1 kernel stack)")


if __name__ == "__main__":
    main()
