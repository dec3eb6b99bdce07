#!/bin/sh
# The privacy-utility frontier on the 4-party demo (input/demo.ini): for each setting, the parties'
# validation loss, the DP epsilon, and what the attack ladder (pcmoe attack, every attack on both
# channels, adaptive to the defence) recovers of party 0's text when party 1 attacks it, as the lift in
# byte accuracy over the majority-byte baseline at the best layer ("worst": the best attack of all), and
# the best accuracy of any attack on rare bytes (all but the attacker's 16 most frequent, whose majority
# baseline is 0). Every setting is trained with SEEDS
# seeds (train.seed and the private shuffles); the table gives the mean and the range over them.
#   default              independent backbones, no defence (what `input/demo.ini` does)
#   same-init            every backbone from the same weights (fine-tuning one public model)
#   ... + private layer  model.private_layers = 1: layer 0's FFN stays with each party
#   ... + DP s           the DP defence, rows clipped to 8, gradient rows to 0.001, noise multiplier s
#   demo-private         input/demo-private.ini as shipped (private layer + DP 1, independent backbones)
# usage: benchmarks/privacy.sh [STEPS] [SEEDS]   (default 600 and 3; writes runs/privacy/, and
#        runs/privacy/frontier.png when gnuplot is installed)
set -eu
. "$(dirname "$0")/common.sh"
steps=${1:-600}
seeds=${2:-3}
out=${BENCH_OUT:-runs}/privacy
rm -rf "$out" && mkdir -p "$out"
dp="--set privacy.clip_norm=8 --set privacy.grad_clip_norm=0.001"
every=$steps

setting() { # setting NAME CONFIG SETS...: trains and attacks one setting with every seed
    name=$1 cfg=$2
    shift 2
    seed=1
    while [ "$seed" -le "$seeds" ]; do
        dir=$out/$name/seed$seed
        mkdir -p "$out/$name"
        start=$(date +%s)
        pcmoe_run "$dir.train.log" "$mpirun" --oversubscribe -np 4 -x OMP_NUM_THREADS=1 "$PCMOE" train "$cfg" --force \
            --set train.steps="$steps" --set train.eval_every="$every" --set checkpoint.every="$steps" --set run.dir="$dir" \
            --set train.seed=$((1336 + seed)) --set privacy.shuffle_seed=$((100 * seed)) --set privacy.record_received="$dir/records" "$@"
        # (the run's settings come from its checkpoint; the config gives the corpora)
        pcmoe_run "$dir.attack.log" "$PCMOE" attack "$cfg" --checkpoint "$dir/checkpoints/step_$(printf %08d "$steps")" \
            --records "$dir/records" --attacker 1 --victim 0 --json "$dir/attack.json"
        rm -rf "$dir/records" # (hundreds of MB per run)
        echo "$name seed $seed: $(( $(date +%s) - start ))s" >&2
        seed=$((seed + 1))
    done
}
setting default input/demo.ini
setting same-init input/demo.ini --set privacy.same_backbone_init=true
setting same-init+private input/demo.ini --set privacy.same_backbone_init=true --set model.private_layers=1
setting same-init+DP1 input/demo.ini --set privacy.same_backbone_init=true $dp --set privacy.noise_multiplier=1
setting same-init+private+DP0.5 input/demo.ini --set privacy.same_backbone_init=true --set model.private_layers=1 $dp --set privacy.noise_multiplier=0.5
setting same-init+private+DP1 input/demo.ini --set privacy.same_backbone_init=true --set model.private_layers=1 $dp --set privacy.noise_multiplier=1
setting same-init+private+DP2 input/demo.ini --set privacy.same_backbone_init=true --set model.private_layers=1 $dp --set privacy.noise_multiplier=2
setting demo-private input/demo-private.ini

python3 - "$out" "$steps" "$seeds" <<'PY'
import glob, json, os, sys
out, steps, seeds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = ["default", "same-init", "same-init+private", "same-init+DP1", "same-init+private+DP0.5", "same-init+private+DP1",
         "same-init+private+DP2", "demo-private"]
families = [("rows: own pairs", "rows", ("nn", "softmax")), ("rows: align", "rows", ("align",)),
            ("rows: 100 pairs", "rows", ("pairs-100",)), ("rows: 1000 pairs", "rows", ("pairs-1000",)),
            ("expert choice", "rows", ("expert", "expert-pairs")),
            ("gradients: own pairs", "gradients", ("nn", "softmax", "align")), ("gradients: 1000 pairs", "gradients", ("pairs-100", "pairs-1000"))]
def span(v, digits=3):
    f = lambda x: f"{x:.{digits}f}"
    return f(sum(v) / len(v)) + (f" ({f(min(v))}..{f(max(v))})" if len(v) > 1 and f(min(v)) != f(max(v)) else "")
rows = []
print(f"\nparty 1 attacks party 0 (demo, {steps} steps, {seeds} seed(s): mean (min..max)); lift = byte accuracy - majority-byte "
      f"baseline, at the best layer; val loss = mean over the 4 parties\n")
print("| setting | val loss | epsilon (largest party) | " + " | ".join(f for f, _, _ in families) + " | worst | best accuracy on rare bytes |")
print("|" + " --- |" * (len(families) + 5))
for name in names:
    runs = sorted(glob.glob(os.path.join(out, name, "seed*")))
    runs = [r for r in runs if os.path.isdir(r)]
    val, eps, lifts, worst, rare = [], [], {f: [] for f, _, _ in families}, [], []
    for r in runs:
        s = json.load(open(os.path.join(r, "summary.json")))
        val.append(sum(p["final_val_loss"] for p in s["parties"]) / len(s["parties"]))
        if "epsilon" in s["parties"][0]:
            eps.append(max(p["epsilon"] for p in s["parties"]))
        att = [json.loads(l) for l in open(os.path.join(r, "attack.json"))]
        for f, ch, names_ in families:
            lifts[f].append(max([a["accuracy"] - a["baseline"] for a in att if a["channel"] == ch and a["attack"] in names_] or [float("nan")]))
        w = max(att, key=lambda a: a["accuracy"] - a["baseline"])
        worst.append(w["accuracy"] - w["baseline"])
        rare.append(max(a["rare_accuracy"] for a in att))
    rows.append((name, sum(val) / len(val), sum(worst) / len(worst), min(worst), max(worst), max(eps) if eps else float("nan")))
    print(f"| {name} | {span(val)} | {span(eps, 1) if eps else '-'} | " + " | ".join(f"{span(lifts[f]):s}" for f, _, _ in families) +
          f" | {span(worst)} | {span(rare)} |")
with open(os.path.join(out, "frontier.dat"), "w") as f: # val, worst lift (mean, min, max), label offset, name, epsilon
    for i, (name, v, w, lo, hi, e) in enumerate(rows):
        f.write(f"{v:.4f} {w:.4f} {lo:.4f} {hi:.4f} {(0.07, -0.07, 0.14)[i % 3]} \"{name}\" {e:.4f}\n")
PY
if command -v gnuplot >/dev/null; then
    gnuplot <<EOF
set terminal pngcairo size 1300,560
set output "$out/frontier.png"
set multiplot layout 1,2 title "Privacy-utility frontier (demo, party 1 attacks party 0)"
set title "best attack of the ladder against validation loss"
set xlabel "mean validation loss (nats/byte)"
set ylabel "best attack: byte accuracy - majority baseline"
set grid
set key top right
set yrange [-0.1:1]
set offsets graph 0.02, graph 0.25, 0, 0
set arrow 1 from graph 0, first 0.1 to graph 1, first 0.1 nohead dt 2 lc rgb "red"
set label 1 "10 points" at graph 0.02, first 0.13 tc rgb "red"
plot "$out/frontier.dat" using 1:2:3:4 with yerrorbars pt 7 ps 1.2 title "mean, and range over the seeds", \\
     "" using 1:(\$2 + \$5):6 with labels left offset 0.5,0 font ",9" notitle
unset arrow 1
unset label 1
set title "epsilon against validation loss (the settings with the DP defence)"
set ylabel "epsilon (delta = 1e-5, largest party)"
set logscale y
set yrange [10:1000]
set offsets graph 0.05, graph 0.3, 0, 0
plot "$out/frontier.dat" using 1:(\$7 > 0 ? \$7 : 1/0) with points pt 7 ps 1.2 notitle, \\
     "" using 1:(\$7 > 0 ? \$7 * (1 + 2 * \$5) : 1/0):6 with labels left offset 0.5,0 font ",9" notitle
unset multiplot
EOF
    echo "plot: $out/frontier.png" >&2
else
    echo "no gnuplot (apt-get install gnuplot-nox): no plot" >&2
fi
