#!/bin/sh
# The fine-tuning workflow on shipped corpora: pretrain one model centrally on public text the parties do
# not hold (Doyle and Shelley), then fine-tune it on the demo's four private corpora (input/demo.ini:
# Shakespeare, Austen, Grimm, SQLite's header) with pcmoe, local and fedavg, each starting from the
# pretrained checkpoint (train.init_from) with fresh AdamW state. Two references: the same pcmoe run from
# random weights, and a centralized fine-tune that pools the four corpora (what no party may do).
# Prints each party's validation loss on its own held-out text: before fine-tuning (the pretrained model,
# the pcmoe run's step-0 evaluation) and after, per mode.
# usage: benchmarks/finetune.sh [PRETRAIN_STEPS] [FINETUNE_STEPS]   (default 600 and 200; writes
#        runs/finetune/, BENCH_OUT=DIR: DIR/finetune/)
set -eu
. "$(dirname "$0")/common.sh"
pre_steps=${1:-600}
ft_steps=${2:-200}
out=${BENCH_OUT:-runs}/finetune
mkdir -p "$out"
warm=$((ft_steps / 10))

# the pretraining config: the demo's [model] keys, two parties of public text, one centralized model
sed -e 's/^count = 4$/count = 2/' -e 's/^mode = pcmoe$/mode = centralized/' \
    -e 's#^0 = input/data/shakespeare.txt$#0 = input/data/doyle.txt#' -e 's#^1 = input/data/austen.txt$#1 = input/data/shelley.txt#' \
    -e '/^2 = input\/data\/grimm.txt$/d' -e '/^3 = input\/data\/sqlite3_h.txt$/d' input/demo.ini > "$out/pretrain.ini"
grep -q '^0 = input/data/doyle.txt$' "$out/pretrain.ini" && grep -q '^count = 2$' "$out/pretrain.ini" \
    || { echo "finetune: input/demo.ini no longer has the lines this script rewrites" >&2; exit 2; }

run() { # run NAME RANKS CONFIG ARGS...
    name=$1 ranks=$2 cfg=$3
    shift 3
    start=$(date +%s)
    pcmoe_run "$out/$name.log" "$mpirun" --oversubscribe -np "$ranks" "$PCMOE" train "$cfg" --force --set run.dir="$out/$name" "$@"
    echo "$name: $(( $(date +%s) - start ))s" >&2
}
run pretrain 1 "$out/pretrain.ini" --set train.steps="$pre_steps" --set checkpoint.every="$pre_steps" --set run.threads=2
ck=$(printf '%s/pretrain/checkpoints/step_%08d' "$out" "$pre_steps")
ft="--set train.steps=$ft_steps --set train.warmup_steps=$warm --set train.eval_every=$ft_steps --set checkpoint.every=0"
run scratch_pcmoe 4 input/demo.ini $ft
run ft_pcmoe 4 input/demo.ini $ft --set train.init_from="$ck"
run ft_local 4 input/demo.ini $ft --set train.init_from="$ck" --set parties.mode=local
run ft_fedavg 4 input/demo.ini $ft --set train.init_from="$ck" --set parties.mode=fedavg
run ft_centralized 1 input/demo.ini $ft --set train.init_from="$ck" --set parties.mode=centralized --set run.threads=2

python3 - "$out" "$pre_steps" "$ft_steps" <<'PY'
import json, os, sys
out, pre_steps, ft_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = ["shakespeare", "austen", "grimm", "sqlite3_h"]
def val(run, step):  # party -> validation loss at `step` (metrics.jsonl)
    v = {}
    for line in open(os.path.join(out, run, "metrics.jsonl")):
        j = json.loads(line)
        if j.get("step") == step and "val_loss" in j:
            v[j["party"]] = j["val_loss"]
    return v
pre_val = {p: v for p, v in val("pretrain", pre_steps).items()}
cols = [("pretrained, no fine-tuning", val("ft_pcmoe", 0)), ("pcmoe from scratch", val("scratch_pcmoe", ft_steps)),
        ("pcmoe", val("ft_pcmoe", ft_steps)), ("local", val("ft_local", ft_steps)), ("fedavg", val("ft_fedavg", ft_steps)),
        ("centralized (pooled data)", val("ft_centralized", ft_steps))]
print(f"\nvalidation loss (nats/byte) on each party's own held-out text; pretraining: {pre_steps} steps centralized on Doyle "
      f"and Shelley (its own validation loss {sum(pre_val.values()) / len(pre_val):.3f}); fine-tuning: {ft_steps} steps from it\n")
print("| party | " + " | ".join(c for c, _ in cols) + " |")
print("|" + " --- |" * (len(cols) + 1))
for p in range(4):
    print(f"| {p} {names[p]} | " + " | ".join(f"{v[p]:.3f}" for _, v in cols) + " |")
mean = [sum(v[p] for p in range(4)) / 4 for _, v in cols]
print("| mean | " + " | ".join(f"{m:.3f}" for m in mean) + " |")
print("| vs pcmoe | " + " | ".join(f"{m / mean[2]:.3f}x" for m in mean) + " |")
PY
