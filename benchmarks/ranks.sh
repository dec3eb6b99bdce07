#!/bin/sh
# Parties of several ranks (parties.ranks_per_party = R): per-rank memory and step time for N = 2 and 4
# parties x R = 1, 2, 4 ranks, at benchmarks/memory.sh's expert-dominated shape: d_model 256, 4 MoE layers
# of 32 experts (top-2, expert_ff 512), seq_len 128, batch 4 per rank (a party's batch grows with R). Per
# run, a party's rank 0 (it holds at least as many experts as any rank of its party): parameters +
# gradients + AdamW state (exact byte counts from the code) beside the analytic bound (the backbone, which
# every rank of a party holds, + ceil(32 / (N R)) experts per layer, 16 bytes per parameter and a step
# counter per tensor), activations, exchange buffers (peak), the whole of it beside `pcmoe plan`'s
# prediction for that rank (balanced routing), peak RSS from the OS, and the median step time. The ranks
# share this machine's cores: with fewer cores than ranks the step time measures oversubscription too.
# usage: benchmarks/ranks.sh [STEPS]   (default 10; writes runs/ranks/, BENCH_OUT=DIR: DIR/ranks/)
set -eu
. "$(dirname "$0")/common.sh"
steps=${1:-10}
out=${BENCH_OUT:-runs}/ranks
mkdir -p "$out"
for n in 2 4; do
    bench_config "$out/parties$n.ini" "$n" 256 4 4 128 32 512 4 "$steps"
    for r in 1 2 4; do
        pcmoe_run "$out/plan$n-$r.log" "$PCMOE" plan "$out/parties$n.ini" --set parties.ranks_per_party=$r \
            --json "$out/plan$n-$r.json"
        pcmoe_run "$out/run$n-$r.log" "$mpirun" --oversubscribe -np $((n * r)) -x OMP_NUM_THREADS=1 "$PCMOE" train \
            "$out/parties$n.ini" --force --set parties.ranks_per_party=$r --set run.dir="$out/run$n-$r"
    done
done
python3 - "$out" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
V, d, L, m, f, BT = 256, 256, 4, 32, 512, 4 * 128
backbone = 2 * V * d + d + L * (2 * d + 4 * d * d + m * d)
expert = 3 * d * f
MiB = 2 ** 20
print("\n| N | R | experts/rank | params+grads+AdamW | bound | activations | exchange buffers (peak) | total | plan | "
      "peak RSS | step time | state / R = 1 |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for n in (2, 4):
    base = None
    for r in (1, 2, 4):
        run = os.path.join(out, f"run{n}-{r}")
        parties = json.load(open(os.path.join(run, "summary.json")))["parties"]
        p = max(parties, key=lambda q: q["mem_params"] + q["mem_grads"] + q["mem_optim"])
        own = -(-m // (n * r))
        bound = 16 * (backbone + L * own * expert) + 4 * (3 + L * 5 + L * 3 * own)
        state = p["mem_params"] + p["mem_grads"] + p["mem_optim"]
        total = state + p["mem_acts"] + p["mem_buffers"]
        plan = json.load(open(os.path.join(out, f"plan{n}-{r}.json")))["processes"]
        planned = max(q["total"] for q in plan)
        times = []  # a party's step time: its ranks' tokens over their summed tokens/s
        for line in open(os.path.join(run, "metrics.jsonl")):
            o = json.loads(line)
            if "tokens_per_s" in o and o["step"] > 2:
                times.append(r * BT / o["tokens_per_s"])
        base = base or state
        print(f"| {n} | {r} | {own} | {state / MiB:.1f} MiB | {bound / MiB:.1f} MiB{'' if state == bound else ' (differs!)'} | "
              f"{p['mem_acts'] / MiB:.1f} MiB | {p['mem_buffers'] / MiB:.1f} MiB | {total / MiB:.1f} MiB | "
              f"{planned / MiB:.1f} MiB ({planned / total:.2f}x) | {p['rss_peak'] / MiB:.0f} MiB | "
              f"{1000 * statistics.median(times):.0f} ms | {state / base:.3f}x |")
PY
