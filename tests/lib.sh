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

MPIRUN=${MPIRUN:-mpirun}
PYTHON=${PYTHON:-python3}
# mpi N ARGS...: pcmoe on N ranks, one OpenMP thread each (the ranks share the cores)
mpi() {
    n=$1
    shift
    timeout 300 "$MPIRUN" --oversubscribe -np "$n" -x OMP_NUM_THREADS=1 "$PCMOE" "$@"
}

# tiny_config N FILE [SCHEDULE]: a small pcmoe config for N parties (N <= 6) on different corpora
tiny_config() {
    set -- "$1" "$2" "${3:-concurrent}"
    {
        printf '[parties]\ncount = %s\nschedule = %s\n[privacy]\nshuffle_seed = 99\n' "$1" "$3"
        printf '[model]\nd_model = 32\nn_layers = 2\nn_heads = 2\nseq_len = 32\nd_ff = 64\nn_experts = 6\n'
        printf 'top_k = 2\nexpert_ff = 32\nmoe_every = 1\n'
        printf '[train]\nsteps = 20\nbatch_size = 4\nwarmup_steps = 5\neval_every = 10\neval_batches = 2\nlog_every = 1\n'
        printf '[data]\n'
        i=0
        for f in shakespeare austen grimm sqlite3_h doyle shelley; do
            [ "$i" -lt "$1" ] && printf '%d = input/data/%s.txt\n' "$i" "$f"
            i=$((i + 1))
        done
    } > "$2"
}

# torch_python [MODULE ...]: a python3 that imports torch, numpy and the MODULEs (TORCH_PYTHON when given
# and able, else the first of /usr/bin/python3 and python3 that can), or empty. Decided now, not at
# configure time, so a torch installed after configure is used.
torch_python() {
    modules="torch, numpy"
    for m in "$@"; do modules="$modules, $m"; done
    for py in ${TORCH_PYTHON:-} /usr/bin/python3 python3; do
        "$py" -c "import $modules" >/dev/null 2>&1 && { echo "$py"; return 0; }
    done
    return 1
}

# a python3 with h5py (checkpoint mutation), or empty
H5PY_PYTHON=""
for py in ${TORCH_PYTHON:-} /usr/bin/python3 python3; do
    "$py" -c "import h5py" 2>/dev/null && { H5PY_PYTHON=$py; break; }
done

# refused NAME SUBSTRING COMMAND...: COMMAND exits non-zero with exactly one "pcmoe: error:" line, which
# contains SUBSTRING
refused() {
    name=$1 want=$2
    shift 2
    "$@" >"$TMP/out" 2>&1
    rc=$?
    n_err=$(grep -c "pcmoe: error:" "$TMP/out")
    if [ "$rc" -ne 0 ] && [ "$n_err" -eq 1 ] && grep "pcmoe: error:" "$TMP/out" | grep -qF -- "$want"; then ok "$name: $(grep "pcmoe: error:" "$TMP/out" | cut -c1-170)"
    else fail "$name: exit $rc, $n_err error lines, want '$want': $(head -c 600 "$TMP/out")"; fi
}
