#!/bin/sh
# Reconstruction-attack study (the paper's privacy claim): the first two rungs of the attack ladder on the
# rows channel (benchmarks/privacy.sh runs the whole ladder against the defences). Parties 0 (Shakespeare)
# and 1 (Austen) train the demo's model with PC-MoE, owners recording every row they receive
# (privacy.record_received, a study-only key). Party 1 then attacks party 0 (pcmoe attack):
# nearest-neighbour and softmax-regression inversion, per MoE layer, scored as byte-recovery accuracy
# against the majority-byte baseline.
#   black-box   independent backbones (the default): what a curious owner really has
#   same-init   every backbone starts from the same weights (privacy.same_backbone_init), as when all
#               parties fine-tune one public checkpoint
#   white-box   the attacker is given the victim's trained backbone (control: the attack must work)
#   noise σ     the defence privacy.noise_std = σ on every sent row, attacked white-box, with its cost in
#               validation loss
# usage: benchmarks/attack.sh [STEPS]   (default 200; writes runs/attack/)
set -eu
. "$(dirname "$0")/common.sh"
steps=${1:-200}
out=${BENCH_OUT:-runs}/attack
rm -rf "$out" && mkdir -p "$out"
cfg=$out/two.ini # the demo's model and corpora of parties 0 and 1
awk '/^count/ { print "count = 2"; next } /^[23] = / { next } { print }' input/demo.ini > "$cfg"

train() { # train NAME SETS...
    name=$1
    shift
    pcmoe_run "$out/$name.log" "$mpirun" --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$PCMOE" train "$cfg" --set train.steps="$steps" \
        --set train.eval_every="$steps" --set checkpoint.every="$steps" --set run.dir="$out/$name" \
        --set privacy.record_received="$out/$name/records" "$@"
}
attack() { # attack NAME [--white-box]
    name=$1
    shift
    pcmoe_run "$out/$name$*.attack.log" "$PCMOE" attack "$cfg" --checkpoint "$out/$name/checkpoints/step_$(printf %08d "$steps")" \
        --records "$out/$name/records" --attacker 1 --victim 0 --json "$out/$name$*.json" "$@"
}
val() { grep -o '"final_val_loss":[0-9.]*' "$out/$1/summary.json" | cut -d: -f2 | awk '{ s += $1; n++ } END { printf "%.3f", s / n }'; }

train independent
train same_init --set privacy.same_backbone_init=true
train noise_0.5 --set privacy.noise_std=0.5
train noise_1.0 --set privacy.noise_std=1.0
attack independent
attack independent --white-box
attack same_init
attack noise_0.5 --white-box
attack noise_1.0 --white-box

printf '\nparty 1 attacks party 0 after %s steps; accuracy of recovering each row'"'"'s input byte\n\n' "$steps"
printf '| setting | mean val loss (both parties) | MoE layer | nn | softmax | majority-byte baseline |\n| --- | --- | --- | --- | --- | --- |\n'
for run in "independent:black-box (independent backbones):independent" "independent--white-box:white-box control (victim's backbone):independent" \
           "same_init:same backbone init:same_init" "noise_0.5--white-box:noise 0.5, white-box:noise_0.5" "noise_1.0--white-box:noise 1.0, white-box:noise_1.0"; do
    file=${run%%:*}; rest=${run#*:}; label=${rest%%:*}; dir=${rest#*:}
    python3 - "$out/$file.json" "$label" "$(val "$dir")" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for layer in sorted({r["layer"] for r in rows}):
    acc = {r["attack"]: r["accuracy"] for r in rows if r["layer"] == layer and r["channel"] == "rows"}
    base = [r["baseline"] for r in rows if r["layer"] == layer and r["channel"] == "rows"][0]
    print(f"| {sys.argv[2]} | {sys.argv[3]} | {layer} | {acc['nn']:.3f} | {acc['softmax']:.3f} | {base:.3f} |")
PY
done
