# tests/lib.sh: helpers shared by the shell tests (sourced, not run). Under `make check` the paths come
# from the environment; run by hand from the source tree they default to it.
set -u
top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
top_builddir=${top_builddir:-$top_srcdir}
PCMOE=${PCMOE:-$top_builddir/pcmoe}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d "${TMPDIR:-/tmp}/pcmoe-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
cd "$top_srcdir" || exit 99 # configs name their corpora relative to the source tree
FAILS=0

fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
ok() { echo "ok: $*"; }
# finish: exit status 0 when nothing failed
finish() { if [ "$FAILS" -eq 0 ]; then echo "PASS"; exit 0; else echo "FAIL: $FAILS check(s) failed"; exit 1; fi; }

# json_num FILE_OR_LINE KEY: the number after "KEY": in a flat JSON line
json_num() { printf '%s\n' "$1" | grep -o "\"$2\":[^,}]*" | head -n 1 | cut -d: -f2; }

# float_lt A B: true when A < B
float_lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 < b + 0) }'; }
