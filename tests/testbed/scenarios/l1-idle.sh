#!/bin/bash
# Scenario (runs in L1): does nothing for 10 minutes, so that L1 can be frozen from L0 (QMP stop)
# and run-l1.sh's watchdog be seen catching it (tests/tests/testbed_watchdog.rs).
echo "L1-IDLE waiting"
sleep 600
