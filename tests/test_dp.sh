#!/bin/sh
# test_dp: the DP defence on what crosses parties (privacy.clip_norm, grad_clip_norm, noise_multiplier,
# target_epsilon), seen from the owners' side: the rows and gradient rows they received, recorded by
# privacy.record_received.
#  - Clipping: with noise 0, every received row has L2 norm <= clip_norm and every gradient row <=
#    grad_clip_norm, and many sit at the bound (the clip is active).
#  - Noise: with tiny clip norms and a large multiplier, what arrives is the noise itself: its mean, std
#    (noise_multiplier x clip norm, for rows and gradient rows) and kurtosis.
#  - Clip norms no row reaches change nothing: the run is bit for bit the one without the defence.
#  - The accountant: each party's epsilon in summary.json agrees with an independent computation in
#    Python from the run's numbers (binomial tail of appearances, Gaussian RDP on a fine grid of orders,
#    the same conversion): pcmoe's coarser grid may only be above it, by < 2%; target_epsilon is reached
#    (within 0.5% below). The progress line shows it.
#  - model.private_layers = 1: owners receive rows and gradient rows of the later layers only; a model
#    with a private layer agrees with the PyTorch reference (generate's log-probabilities).
#  - Bad combinations of keys are refused with one error line.
. "$(dirname "$0")/lib.sh"

tiny_config 3 "$TMP/p3.ini"
printf '[checkpoint]\nevery = 0\n' >> "$TMP/p3.ini"

# stats REC_DIR KIND WIDTH: "rows max_norm share_at_bound mean std kurtosis" of every block of KIND
# (received / received_grads) in the three parties' record files
stats() {
    "$PYTHON" - "$@" <<'PY'
import array, math, struct, sys
d, kind, bound = sys.argv[1], sys.argv[2], float(sys.argv[3])
rows, norms, vals = 0, [], array.array("f")
for party in range(3):
    data = open(f"{d}/{kind}_party_{party}.bin", "rb").read()
    at = 0
    while at < len(data):
        layer, peer, n, width = struct.unpack_from("4i", data, at)
        at += 16
        block = array.array("f", data[at:at + 4 * n * width])
        at += 4 * n * width
        for i in range(n):
            r = block[i * width:(i + 1) * width]
            norms.append(math.sqrt(sum(x * x for x in r)))
        vals.extend(block)
        rows += n
m = sum(vals) / len(vals)
v = sum((x - m) ** 2 for x in vals) / len(vals)
k = sum((x - m) ** 4 for x in vals) / len(vals) / v ** 2
at_bound = sum(1 for x in norms if x > 0.999 * bound) / max(1, len(norms))
print(rows, max(norms), at_bound, m, math.sqrt(v), k)
PY
}

# 1. clipping, no noise
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/clip" --set privacy.clip_norm=1.5 --set privacy.grad_clip_norm=0.0005 \
    --set privacy.record_received="$TMP/clip/rec" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "the clipped run failed"; finish; }
set -- $(stats "$TMP/clip/rec" received 1.5)
awk -v n="$1" -v mx="$2" -v b="$3" 'BEGIN { exit !(n > 1000 && mx <= 1.5 * 1.00001 && b > 0.5) }' \
    && ok "rows: $1 received, largest norm $2 <= clip_norm 1.5, $3 of them at it" || fail "rows not clipped: $*"
set -- $(stats "$TMP/clip/rec" received_grads 0.0005)
awk -v n="$1" -v mx="$2" -v b="$3" 'BEGIN { exit !(n > 1000 && mx <= 0.0005 * 1.00001 && b > 0.05) }' \
    && ok "gradient rows: $1 received, largest norm $2 <= grad_clip_norm 0.0005, $3 of them at it" || fail "gradient rows not clipped: $*"

# 2. noise: what arrives is noise of std multiplier x clip norm
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/noise" --set privacy.clip_norm=0.001 --set privacy.grad_clip_norm=0.000001 \
    --set privacy.noise_multiplier=2000 --set train.steps=4 --set train.warmup_steps=0 --set privacy.record_received="$TMP/noise/rec" >"$TMP/out" 2>&1 \
    || { cat "$TMP/out"; fail "the noised run failed"; finish; }
for kind in "received 2" "received_grads 0.002"; do
    set -- $kind
    name=$1 want=$2
    set -- $(stats "$TMP/noise/rec" "$name" 1e30)
    awk -v m="$4" -v s="$5" -v k="$6" -v w="$want" 'BEGIN { exit !(m < 0.02 * w && m > -0.02 * w && s > 0.98 * w && s < 1.02 * w && k > 2.9 && k < 3.1) }' \
        && ok "$name: mean $4, std $5 (want $want = 2000 x clip norm), kurtosis $6 over $1 rows" || fail "$name: noise statistics $* (want std $want)"
done

# 3. clip norms no row reaches: the same run as without the defence
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/plain" --set checkpoint.every=20 >/dev/null 2>&1 || fail "plain run failed"
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/wide" --set checkpoint.every=20 --set privacy.clip_norm=1e6 --set privacy.grad_clip_norm=1e6 >/dev/null 2>&1 || fail "wide-clip run failed"
same=1
for q in 0 1 2; do
    h5diff "$TMP/plain/checkpoints/step_00000020/party_$q.h5" "$TMP/wide/checkpoints/step_00000020/party_$q.h5" /backbone >/dev/null 2>&1 || same=0
done
[ "$same" = 1 ] && ok "clip norms no row reaches: every backbone bit for bit as without the defence" || fail "an unreached clip changed the run"

# 4. the accountant, against an independent computation
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/eps" --set privacy.clip_norm=1.5 --set privacy.grad_clip_norm=0.0005 \
    --set privacy.noise_multiplier=3 >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "the DP run failed"; finish; }
grep -q "| eps [0-9.]*" "$TMP/out" && ok "the progress line shows epsilon: $(grep -o '| eps [0-9.e+]*' "$TMP/out" | tail -n 1)" || fail "no epsilon on the progress line"
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/target" --set privacy.clip_norm=1.5 --set privacy.grad_clip_norm=0.0005 \
    --set privacy.target_epsilon=8 >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "the target-epsilon run failed"; finish; }
"$PYTHON" - "$TMP/eps/summary.json" "$TMP/target/summary.json" "$TMP/p3.ini" <<'PY' >"$TMP/acc" 2>&1 && ok "$(cat "$TMP/acc")" || fail "$(cat "$TMP/acc")"
import json, math, os, sys
# the run: tiny_config (2 layers, all MoE, top-2, seq_len 32, batch 4, 20 steps, val_fraction 0.1)
T, B, steps, releases, delta = 32, 4, 20, 2 * 2 * 2, 1e-5
corpora = ["shakespeare", "austen", "grimm"]
def appearances(windows, p, tail):  # smallest A with P(Binomial(windows, p) > A) <= tail
    cdf, a = 0.0, 0
    while True:
        cdf += math.exp(math.lgamma(windows + 1) - math.lgamma(a + 1) - math.lgamma(windows - a + 1) + a * math.log(p) + (windows - a) * math.log1p(-p))
        if 1 - cdf <= tail:
            return a
        a += 1
def epsilon(s, n_releases, delta_conv):  # Gaussian RDP (z = s / 2), fine orders, Canonne-Kamath-Steinke conversion
    z = s / 2
    best = math.inf
    for i in range(1, 200000):
        a = 1 + i * 0.001 if i < 10000 else 11 + (i - 10000) * 0.05
        rdp = n_releases * a / (2 * z * z)
        best = min(best, rdp + math.log((a - 1) / a) - (math.log(delta_conv) + math.log(a)) / (a - 1))
    return max(best, 0)
errors, lines = [], []
for name, s_fixed in (("eps", 3.0), ("target", None)):
    summary = json.load(open(sys.argv[1 if name == "eps" else 2]))
    for p in summary["parties"]:
        q = p["party"]
        n_bytes = os.path.getsize(f"input/data/{corpora[q]}.txt")
        n_train = n_bytes - int(n_bytes * 0.1)
        A = appearances(steps * B, T / (n_train - T), delta / 2)
        s = s_fixed if s_fixed is not None else p["noise_multiplier"]
        want = epsilon(s, releases * A, delta / 2)
        got = p["epsilon"]
        if not (want <= got * (1 + 1e-6) and got <= 1.02 * want):
            errors.append(f"{name} party {q}: epsilon {got}, reference {want:.6g}")
        if s_fixed is None and not (0.995 * 8 <= got <= 8):
            errors.append(f"target 8: party {q} reached {got}")
        lines.append(f"{name} party {q}: eps {got:.4f} (reference {want:.4f}, noise {s:.4g})")
print("epsilon agrees with the reference: " + "; ".join(lines[:2]) + " ... " + lines[-1] + ("; " + "; ".join(errors) if errors else ""))
sys.exit(1 if errors else 0)
PY

# 5. model.private_layers: the first layers' FFNs stay with the party; nothing of theirs crosses
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/priv" --set model.private_layers=1 --set privacy.record_received="$TMP/priv/rec" \
    --set train.steps=4 --set train.warmup_steps=0 >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "the private_layers run failed"; }
"$PYTHON" - "$TMP/priv/rec" <<'PY' >"$TMP/pl" 2>&1 && ok "private_layers = 1: $(cat "$TMP/pl")" || fail "private_layers = 1: $(cat "$TMP/pl")"
import struct, sys
layers = set()
for party in range(3):
    for kind in ("received", "received_grads"):
        data, at = open(f"{sys.argv[1]}/{kind}_party_{party}.bin", "rb").read(), 0
        while at < len(data):
            layer, peer, n, width = struct.unpack_from("4i", data, at)
            at += 16 + 4 * n * width
            layers.add(layer)
print(f"owners received rows and gradient rows of layers {sorted(layers)} only")
sys.exit(0 if layers == {1} else 1)
PY
REF_PY=$(torch_python h5py) || REF_PY=""
if [ -n "$REF_PY" ]; then # the model with a private layer against the PyTorch reference (layer 0 dense, layer 1 MoE)
    "$PCMOE" train input/tiny.ini --set model.moe_every=1 --set model.private_layers=1 --set checkpoint.every=20 --set run.dir="$TMP/pl1" >/dev/null 2>&1 \
        || fail "one-party private_layers run failed"
    printf 'To be, or not to be: that is the question.' > "$TMP/prompt.txt"
    "$PCMOE" generate input/tiny.ini --set model.moe_every=1 --set model.private_layers=1 --checkpoint "$TMP/pl1/checkpoints/step_00000020" \
        --prompt-file "$TMP/prompt.txt" --max-new 20 --json "$TMP/pl1.json" >/dev/null 2>&1 || fail "generate on the private_layers checkpoint failed"
    "$REF_PY" "$top_srcdir/tests/reference/check_generate.py" "$TMP/pl1/checkpoints/step_00000020/party_0.h5" "$TMP/prompt.txt" "$TMP/pl1.json" >"$TMP/ref" 2>&1 \
        && ok "private_layers = 1: the PyTorch reference agrees ($(cat "$TMP/ref"))" || fail "private_layers = 1: the reference differs: $(cat "$TMP/ref")"
fi

# 6. refusals
refused "clip_norm alone" "privacy.clip_norm and privacy.grad_clip_norm go together" mpi 3 train "$TMP/p3.ini" --set privacy.clip_norm=1 --set run.dir="$TMP/x"
refused "noise without clipping" "privacy.noise_multiplier needs privacy.clip_norm" mpi 3 train "$TMP/p3.ini" --set privacy.noise_multiplier=1 --set run.dir="$TMP/x"
refused "noise and target" "give it or privacy.noise_multiplier" mpi 3 train "$TMP/p3.ini" --set privacy.clip_norm=1 --set privacy.grad_clip_norm=1 --set privacy.noise_multiplier=1 --set privacy.target_epsilon=3 --set run.dir="$TMP/x"
refused "noise_std with clipping" "drop noise_std" mpi 3 train "$TMP/p3.ini" --set privacy.clip_norm=1 --set privacy.grad_clip_norm=1 --set privacy.noise_std=1 --set run.dir="$TMP/x"
refused "clipping in fedavg" "parties.mode = fedavg has none" mpi 3 train "$TMP/p3.ini" --set parties.mode=fedavg --set privacy.clip_norm=1 --set privacy.grad_clip_norm=1 --set run.dir="$TMP/x"
refused "no MoE layer left" "model.private_layers = 2: leaves no MoE layer" mpi 3 train "$TMP/p3.ini" --set model.private_layers=2 --set run.dir="$TMP/x"
refused "an unreachable target" "privacy.target_epsilon = 1e-06: out of reach" mpi 3 train "$TMP/p3.ini" --set privacy.clip_norm=1 --set privacy.grad_clip_norm=1 --set privacy.target_epsilon=0.000001 --set run.dir="$TMP/x"
finish
