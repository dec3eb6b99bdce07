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

# hf_python: the Python of the Hugging Face tests (scripts/install-deps.sh --with-test-tools makes it: pinned
# transformers and torch), or empty
hf_python() {
    for py in ${PCMOE_HF_VENV:+$PCMOE_HF_VENV/bin/python} /opt/pcmoe-venv/bin/python "$HOME/.local/share/pcmoe/venv/bin/python"; do
        "$py" -c "import torch, transformers, safetensors" >/dev/null 2>&1 && { echo "$py"; return 0; }
    done
    return 1
}

# need_hf_python WHAT: sets HF_PY to hf_python's, or ends the test: a skip (77), or under PCMOE_REQUIRE_TORCH=1
# (scripts/check.sh, which installs it) a failure
need_hf_python() {
    HF_PY=$(hf_python) && return 0
    if [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ]; then fail "no Python with $1 (scripts/install-deps.sh --with-test-tools)"; finish; fi
    echo "SKIP: no Python with $1 (scripts/install-deps.sh --with-test-tools installs one)"
    exit 77
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

# check_audit AUDIT.json MODE D_MODEL N_PARAMS FEDAVG_ROUNDS SHARE_METRICS: what crossed party lines in a run's
# --audit is only what MODE sends, and the row bytes of each pair of parties match the routing
check_audit() { # check_audit AUDIT.json MODE D_MODEL N_PARAMS FEDAVG_ROUNDS SHARE_METRICS
    "$PYTHON" - "$@" <<'PY'
import json, sys
audit, mode, d = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
n_params, rounds, share = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
P = audit["n_parties"]
ranks = audit["ranks"]
allowed = {"pcmoe": {"routing_counts", "expert_rows", "expert_outputs", "output_grads", "input_grads", "metrics", "control", "audit"},
           "fedavg": {"fedavg_weights", "metrics", "control", "audit"}}[mode]
if not share:
    allowed -= {"metrics"}
errors = []
for r in ranks:
    for way in ("sent", "recv"):
        for kind, t in r[way].items():
            if t["total"] and kind not in allowed:
                errors.append(f"rank {r['rank']} {way} {t['total']} bytes of {kind}")
for r in ranks:
    me = r["party"]
    for p in range(P):
        if p == me:
            if r["sent"]["expert_rows"]["per_party"][p] or r["rows_routed_to"][p]:
                errors.append(f"party {me} sent rows to itself")
            continue
        rows = r["rows_routed_to"][p]
        sent_rows = r["sent"]["expert_rows"]["per_party"][p]
        if sent_rows != rows * d * 4:
            errors.append(f"party {me} -> {p}: {sent_rows} row bytes, routing says {rows} rows x {d} x 4 = {rows * d * 4}")
        if r["recv"]["expert_outputs"]["per_party"][p] != sent_rows:
            errors.append(f"party {me} <- {p}: outputs {r['recv']['expert_outputs']['per_party'][p]} != rows {sent_rows}")
        if ranks[p]["recv"]["expert_rows"]["per_party"][me] != sent_rows:
            errors.append(f"party {p} received {ranks[p]['recv']['expert_rows']['per_party'][me]} row bytes from {me}, {me} sent {sent_rows}")
        og, ig = r["sent"]["output_grads"]["per_party"][p], r["recv"]["input_grads"]["per_party"][p]
        if og != ig or og % (d * 4) or og > sent_rows:
            errors.append(f"party {me} <-> {p}: output grads {og}, input grads {ig}, rows {sent_rows}")
    if mode == "pcmoe" and r["sent"]["fedavg_weights"]["total"]:
        errors.append("pcmoe sent fedavg weights")
    if mode == "fedavg":
        fw = r["sent"]["fedavg_weights"]["total"]
        if fw != rounds * n_params * 4:
            errors.append(f"fedavg: {fw} weight bytes, want {rounds} rounds x {n_params} params x 4 = {rounds * n_params * 4}")
    if not share and (r["sent"]["metrics"]["total"] or r["recv"]["metrics"]["total"]):
        errors.append(f"rank {r['rank']}: metrics traffic with share_metrics = false")
routed = sum(sum(r["rows_routed_to"]) for r in ranks)
if mode == "pcmoe" and routed == 0:
    errors.append("no rows were routed to remote experts at all")
print(f"{mode}: {P} parties, {routed:.0f} remote rows routed, "
      f"{sum(r['sent']['expert_rows']['total'] for r in ranks):.0f} row bytes")
for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
PY
}

# same_losses A B: two runs' metrics files hold the same (step, party) training and validation losses, bit for
# bit; prints how many entries and how many differ
same_losses() {
    "$PYTHON" - "$1" "$2" <<'PY'
import json, sys
def load(p):
    return {(o["step"], o["party"]): (o.get("train_loss"), o.get("val_loss")) for o in map(json.loads, open(p))}
a, b = load(sys.argv[1]), load(sys.argv[2])
bad = [k for k in a if a[k] != b.get(k)]
print(f"{len(a)} (step, party) entries, {len(bad)} differ")
sys.exit(1 if bad or set(a) != set(b) or not a else 0)
PY
}

# rss_step0 SCRATCH INIT PARTIES BOUND WHAT WHY: two runs' metrics.jsonl: every one of PARTIES parties' step-0 peak RSS
# in INIT (weights read from somewhere) is within BOUND MiB of SCRATCH's (random weights); prints the largest excess
rss_step0() {
    "$PYTHON" - "$@" <<'PY'
import json, sys
def rss(path):
    return {j["party"]: j["rss_peak"] for j in map(json.loads, open(path)) if j.get("step") == 0 and "rss_peak" in j}
a, b = rss(sys.argv[1]), rss(sys.argv[2])
n, bound = int(sys.argv[3]), float(sys.argv[4])
diff = max(b[p] - a[p] for p in a) / 2**20 if a and set(a) == set(b) else float("inf")
print(f"{sys.argv[5]}: a party's step-0 peak RSS {diff:+.1f} MiB against random init (bound {bound:g} MiB; {sys.argv[6]})")
sys.exit(0 if len(a) == n and len(b) == n and diff < bound else 1)
PY
}
