#!/bin/sh
# The README's second command: set up (dependencies including PyTorch for the reference tests), build,
# and run the whole test suite (make check). Ends with "N passed, N failed"; exit status 0 only when
# nothing failed. Extra arguments go to configure (e.g. --enable-sanitizers).
set -u
cd "$(dirname "$0")/.."
scripts/install-deps.sh --with-test-tools || exit 1
scripts/build.sh "$@" || { echo "0 passed, 1 failed"; exit 1; }
export PCMOE_REQUIRE_TORCH=1 # torch was installed above: a parity test must run, not skip
make check
status=$?
log=test-suite.log # automake's summary of the whole run
if [ ! -f "$log" ]; then
    echo "check: $log not written: make check did not run the tests"
    echo "0 passed, 1 failed"
    exit 1
fi
count() { sed -n "s/^# $1: *\([0-9]*\)$/\1/p" "$log" | head -n 1; }
pass=$(count PASS); fail=$(count FAIL); xpass=$(count XPASS); error=$(count ERROR); skip=$(count SKIP)
failed=$(( ${fail:-0} + ${xpass:-0} + ${error:-0} ))
[ "$status" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1 # make check failed outside the test harness
[ "$status" -ne 0 ] && cat "$log"
echo "${pass:-0} passed, $failed failed, ${skip:-0} skipped"
[ "$failed" -eq 0 ]
