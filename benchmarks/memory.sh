#!/bin/sh
# Per-party memory of pcmoe against centralized, for N = 1, 2, 4, 8 parties, on a config where experts
# are most of the parameters (input/demo.ini's model with 16 experts of width 512: ~95% experts).
# Parameters + gradients + optimizer state are exact byte counts from the code; activations and
# exchange buffers likewise; RSS is the process's peak resident set. The bound is the analytic
# backbone + ceil(m/N) experts (parameters, gradients and AdamW moments: 16 bytes per parameter).
# usage: benchmarks/memory.sh [EXPERTS] [EXPERT_FF]
set -eu
cd "$(dirname "$0")/.."
m=${1:-16}
f=${2:-512}
out=runs/memory
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=${MPIRUN:-mpirun}
[ -x ./pcmoe ] || { echo "build first: scripts/build.sh" >&2; exit 2; }
mkdir -p "$out"
sets="--force --set model.n_experts=$m --set model.expert_ff=$f --set train.steps=3 --set train.warmup_steps=0 --set train.eval_every=0"
# the demo's model for n parties; corpora reused round-robin past the six shipped ones
make_cfg() {
    awk -v n="$1" 'BEGIN { split("shakespeare austen grimm sqlite3_h doyle shelley shakespeare austen", c, " ") }
        /^count/ { print "count = " n; next }
        /^\[data\]/ { print; for (i = 0; i < n; i++) print i " = input/data/" c[i + 1] ".txt"; next }
        /^[0-9]+ = / { next } { print }' input/demo.ini > "$out/parties$1.ini"
}
make_cfg 8
./pcmoe train "$out/parties8.ini" $sets --set parties.mode=centralized --set run.dir="$out/centralized" >"$out/centralized.log" 2>&1
for n in 1 2 4 8; do
    make_cfg "$n"
    "$mpirun" --oversubscribe -np "$n" -x OMP_NUM_THREADS=1 ./pcmoe train "$out/parties$n.ini" $sets \
        --set run.dir="$out/pcmoe_$n" >"$out/pcmoe_$n.log" 2>&1 || true
done
python3 - "$out" "$m" "$f" <<'PY'
import json, os, sys
out, m, f = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
V, d, L, dff = 256, 64, 2, 256
backbone = 2 * V * d + d + L * (2 * d + 4 * d * d + m * d)
expert = 3 * d * f * L
c = json.load(open(os.path.join(out, "centralized", "summary.json")))["parties"][0]
cpo = c["mem_params"] + c["mem_grads"] + c["mem_optim"]
print(f"\nexperts m={m}, expert_ff={f}: {100 * m * expert / (backbone + m * expert):.1f}% of {backbone + m * expert:,} parameters are experts\n")
print("| run | party | params+grads+optim | bound backbone+ceil(m/N) experts | activations | exchange buffers | peak RSS | vs centralized (params+grads+optim) | vs centralized (RSS) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
print(f"| centralized | all | {cpo / 2**20:.2f} MiB | {16 * (backbone + m * expert) / 2**20:.2f} MiB | {c['mem_acts'] / 2**20:.2f} MiB | 0 | {c['rss_peak'] / 2**20:.1f} MiB | 1.000 | 1.000 |")
for n in (1, 2, 4, 8):
    path = os.path.join(out, f"pcmoe_{n}", "summary.json")
    if not os.path.exists(path):
        print(f"| pcmoe N={n} | (run failed: see {out}/pcmoe_{n}.log) |"); continue
    parties = json.load(open(path))["parties"]
    worst = max(parties, key=lambda s: s["mem_params"] + s["mem_grads"] + s["mem_optim"])
    po = worst["mem_params"] + worst["mem_grads"] + worst["mem_optim"]
    bound = 16 * (backbone + -(-m // n) * expert)
    print(f"| pcmoe N={n} | {worst['party']} (largest) | {po / 2**20:.2f} MiB | {bound / 2**20:.2f} MiB | {worst['mem_acts'] / 2**20:.2f} MiB | "
          f"{worst['mem_buffers'] / 2**20:.2f} MiB | {worst['rss_peak'] / 2**20:.1f} MiB | {po / cpo:.3f} ({100 * (1 - po / cpo):.0f}% less) | {worst['rss_peak'] / c['rss_peak']:.3f} |")
print("\ncentralized here trains all 8 parties' batches in one step (8x the activations of one party); "
      "params+grads+optim is the like-for-like column.")
PY
