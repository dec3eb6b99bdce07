#!/bin/sh
# The paper's comparison on the 4-party demo (input/demo.ini): final validation loss of each party on
# its own held-out text, for every mode, with the same model and the same number of training tokens:
#   centralized          one model, one rank, batch_size windows of every party per step
#   pcmoe concurrent     every party trains each step through the shared experts
#   pcmoe sequential     parties take turns: 4x the steps, for the same tokens
#   local                each party alone, whole model, no communication
#   fedavg               whole models, all weights averaged every fedavg.every steps
# usage: benchmarks/demo_table.sh [STEPS]   (default 600, the demo's; writes runs/demo_table/;
#        then benchmarks/plot.sh draws the validation curves)
set -eu
. "$(dirname "$0")/common.sh"
steps=${1:-600}
out=${BENCH_OUT:-runs}/demo_table
mkdir -p "$out"
every=$((steps / 6)) # six evaluations per run, for the curves (benchmarks/plot.sh)
[ "$every" -ge 1 ] || every=1
common="--force --set train.steps=$steps --set train.eval_every=$every --set checkpoint.every=0"

run() { # run NAME RANKS ARGS...
    name=$1 ranks=$2
    shift 2
    start=$(date +%s)
    pcmoe_run "$out/$name.log" "$mpirun" --oversubscribe -np "$ranks" "$PCMOE" train input/demo.ini --set run.dir="$out/$name" "$@"
    echo "$name: $(( $(date +%s) - start ))s" >&2
}
run centralized 1 $common --set parties.mode=centralized --set run.threads=2
run pcmoe_concurrent 4 $common
run pcmoe_sequential 4 --force --set parties.schedule=sequential --set train.steps=$((4 * steps)) \
    --set train.eval_every=$((4 * every)) --set train.warmup_steps=120 --set checkpoint.every=0
run local 4 $common --set parties.mode=local
run fedavg 4 $common --set parties.mode=fedavg

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
modes = ["centralized", "pcmoe_concurrent", "pcmoe_sequential", "local", "fedavg"]
names = ["shakespeare", "austen", "grimm", "sqlite3_h"]
val, tokens = {}, {}
for m in modes:
    s = json.load(open(os.path.join(out, m, "summary.json")))
    tokens[m] = s["tokens"]
    for p in s["parties"]:
        val[(m, p["party"])] = p["final_val_loss"]
print(f"\nfinal validation loss (nats/byte) on each party's own held-out text; {int(tokens['centralized']):,} training tokens per mode\n")
print(f"| party | {' | '.join(modes)} |")
print("|" + " --- |" * (len(modes) + 1))
for p in range(4):
    print(f"| {p} {names[p]} | " + " | ".join(f"{val[(m, p)]:.3f}" for m in modes) + " |")
mean = {m: sum(val[(m, p)] for p in range(4)) / 4 for m in modes}
print("| mean | " + " | ".join(f"{mean[m]:.3f}" for m in modes) + " |")
print("| vs centralized | " + " | ".join(f"{mean[m] / mean['centralized']:.3f}x" for m in modes) + " |")
print("| training tokens | " + " | ".join(f"{int(tokens[m]):,}" for m in modes) + " |")
PY
