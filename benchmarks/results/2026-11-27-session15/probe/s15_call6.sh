#!/usr/bin/env bash
# The long-context spot checks alone (warm machine's build).
set -uo pipefail
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build 2>&1 | grep -v WARNING | tail -1 || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
timeout 100 python3 $R/probe/long_check.py 1048576 65536 2>&1 | grep "^#\|Error"; echo "check 1M rc=${PIPESTATUS[0]}"
timeout 60 python3 $R/probe/long_check.py 524288 2>&1 | grep "^#\|Error"; echo "check 512K rc=${PIPESTATUS[0]}"
