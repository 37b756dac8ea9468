#!/usr/bin/env python3
"""vfio-free.py GROUP TIMEOUT: wait until /dev/vfio/GROUP can be opened (no process holds the
VF any more); prints the milliseconds waited, exits 1 on timeout."""
import errno
import os
import sys
import time

group, timeout = sys.argv[1], float(sys.argv[2])
start = time.monotonic()
while time.monotonic() - start < timeout:
    try:
        fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
        os.close(fd)
        print(int((time.monotonic() - start) * 1000))
        sys.exit(0)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
    time.sleep(0.005)
sys.exit(1)
