#!/bin/sh
# Memory study: a pcmoe party against a party that trains the same model alone on the same batch
# (parties.mode = local, the same ranks), for N = 1, 2, 4, 8 parties, at an expert-dominated shape:
# d_model 256, 4 MoE layers of 32 experts (top-2, expert_ff 512), seq_len 128, batch 4 per party.
# Per run, the largest party: parameters + gradients + AdamW state (exact byte counts from the code)
# beside the analytic bound (backbone + ceil(32/N) experts per layer, 16 bytes per parameter plus one
# step counter per tensor), activations, exchange buffers (peak), and peak RSS from the OS; the RSS
# ratio pcmoe / alone; and the exchange's time cost, pcmoe's median step time over local's. pcmoe runs
# with its defaults (model.recompute_experts and model.recompute_attention auto: on for a pcmoe party),
# with recompute_attention off, and with both off.
# usage: benchmarks/memory.sh [STEPS]   (default 10; writes runs/memory/, BENCH_OUT=DIR: DIR/memory/)
set -eu
. "$(dirname "$0")/common.sh"
steps=${1:-10}
out=${BENCH_OUT:-runs}/memory
mkdir -p "$out"
for n in 1 2 4 8; do
    bench_config "$out/parties$n.ini" "$n" 256 4 4 128 32 512 4 "$steps"
    for run in pcmoe local pcmoe-noattention pcmoe-norecompute; do
        case $run in
        pcmoe) sets="" ;;
        local) sets="--set parties.mode=local" ;;
        pcmoe-noattention) sets="--set model.recompute_attention=false" ;;
        *) sets="--set model.recompute_experts=false --set model.recompute_attention=false" ;;
        esac
        pcmoe_run "$out/$run$n.log" "$mpirun" --oversubscribe -np "$n" -x OMP_NUM_THREADS=1 "$PCMOE" train "$out/parties$n.ini" \
            --force $sets --set run.dir="$out/$run$n"
    done
done
python3 - "$out" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
V, d, L, m, f = 256, 256, 4, 32, 512
backbone = 2 * V * d + d + L * (2 * d + 4 * d * d + m * d)
expert = 3 * d * f
MiB = 2 ** 20
def load(run, n):
    parties = json.load(open(os.path.join(out, f"{run}{n}", "summary.json")))["parties"]
    big = max(parties, key=lambda p: p["rss_peak"])
    steps = {}
    for line in open(os.path.join(out, f"{run}{n}", "metrics.jsonl")):
        r = json.loads(line)
        if "tokens_per_s" in r and r["step"] > 2: steps.setdefault(r["step"], []).append(512 / r["tokens_per_s"])
    return big, statistics.median(max(v) for v in steps.values())  # the slowest party's step time
print("\n| N | run | params+grads+AdamW | bound | activations | exchange buffers (peak) | peak RSS | RSS / alone | step time / alone |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for n in (1, 2, 4, 8):
    own = -(-m // n)
    tensors = 3 + L * 5 + L * 3 * own
    bound = 16 * (backbone + L * own * expert) + 4 * tensors
    alone, t_alone = load("local", n)
    for run, name in (("local", "alone (local)"), ("pcmoe", "pcmoe"), ("pcmoe-noattention", "pcmoe, recompute_attention off"),
                      ("pcmoe-norecompute", "pcmoe, both recompute keys off")):
        p, t = load(run, n)
        state = p["mem_params"] + p["mem_grads"] + p["mem_optim"]
        b = 16 * (backbone + L * m * expert) + 4 * (3 + L * 5 + L * 3 * m) if run == "local" else bound
        print(f"| {n} | {name} | {state / MiB:.1f} MiB | {b / MiB:.1f} MiB{'' if state == b else ' (differs!)'} | "
              f"{p['mem_acts'] / MiB:.1f} MiB | {p['mem_buffers'] / MiB:.1f} MiB | {p['rss_peak'] / MiB:.0f} MiB | "
              f"{p['rss_peak'] / alone['rss_peak']:.3f}x | {t / t_alone:.2f}x |")
PY
