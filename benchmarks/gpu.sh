#!/bin/sh
# GPU benchmark (needs a CUDA device and a pcmoe configured with CUDA; exits 77 with a message where
# there is none, as on this project's own machines):
#  1. throughput at the medium shape (d_model 256, 4 MoE layers of 8 experts, top-2, expert_ff 512,
#     seq_len 128, batch 16): pcmoe run.device = cuda tokens/s and model FLOP/s, as a fraction of the
#     device's fp32 SGEMM peak measured in the same run (TF32 off), beside the PyTorch reference model's
#     eager step on the same device (when torch has CUDA); and pcmoe with run.tf32 = true;
#  2. peak device memory per party at N = 1, 2, 4, 8 pcmoe parties (ranks share the node's GPUs:
#     local rank % GPU count) against a party that trains the same model alone (parties.mode = local),
#     at the expert-dominated shape of benchmarks/memory.sh's issue (4 MoE layers of 32 experts).
# usage: benchmarks/gpu.sh [STEPS]   (writes runs/gpu/; BENCH_OUT=DIR: DIR/gpu/)
set -eu
. "$(dirname "$0")/common.sh"
steps=${1:-50}
out=${BENCH_OUT:-runs}/gpu
mkdir -p "$out"
python=${TORCH_PYTHON:-/usr/bin/python3}

# a device and a CUDA pcmoe, or skip
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "benchmarks/gpu.sh: skipped: no CUDA device on $(hostname) (nvidia-smi -L fails)" >&2
    exit 77
fi
if ! "$PCMOE" train input/tiny.ini --set run.device=cuda --set train.steps=1 --set train.warmup_steps=0 \
        --set train.eval_every=0 --set checkpoint.every=0 --set run.dir="$out/probe" --force >"$out/probe.log" 2>&1; then
    echo "benchmarks/gpu.sh: skipped: $PCMOE cannot train on cuda: $(grep '^pcmoe: error' "$out/probe.log" || tail -n 1 "$out/probe.log")" >&2
    exit 77
fi

# shape NAME EXPERTS BATCH PARTIES: the medium (8 experts) or expert-dominated (32) shape
shape() { bench_config "$out/$1.ini" "$4" 256 4 4 128 "$2" 512 "$3" "$steps"; }

# 1. throughput
shape medium 8 16 1
tokens=$((16 * 128))
for tf in false true; do
    pcmoe_run "$out/medium-tf32-$tf.log" "$PCMOE" train "$out/medium.ini" --set run.device=cuda --set run.tf32=$tf \
        --set run.dir="$out/medium-tf32-$tf" --force
done
peak="" t_tps="" t_note="(torch without CUDA: not run)"
if "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    peak=$("$python" - <<'PY'
import time, torch
torch.backends.cuda.matmul.allow_tf32 = False
n = 8192
a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
for _ in range(3): a @ b
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(10): a @ b
torch.cuda.synchronize()
print(2 * n ** 3 * 10 / (time.perf_counter() - t0))
PY
)
    t_tps=$("$python" benchmarks/torch_step.py "$out/medium.ini" 1 "$steps" cuda) || { echo "benchmark: the PyTorch reference step failed" >&2; exit 1; }
    t_note="PyTorch $("$python" -c 'import torch; print(torch.__version__)') eager (fp32)"
fi
flops=$(flops_per_step "$out/medium-tf32-false")
printf '\nmedium shape on %s, %s steps, %s tokens/step\n' "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)" "$steps" "$tokens"
[ -n "$peak" ] && printf 'fp32 SGEMM peak (8192^3, TF32 off): %.1f TFLOP/s\n' "$(awk -v p="$peak" 'BEGIN { print p / 1e12 }')"
printf '%-34s %14s %12s %10s\n' "engine" "tokens/s" "TFLOP/s" "of peak"
row() { # row NAME TOKENS_PER_S
    tf=$(awk -v f="$flops" -v t="$2" -v n="$tokens" 'BEGIN { print f * t / n }')
    printf '%-34s %14.0f %12.3f %10s\n' "$1" "$2" "$(awk -v x="$tf" 'BEGIN { print x / 1e12 }')" \
        "$([ -n "$peak" ] && awk -v x="$tf" -v p="$peak" 'BEGIN { printf "%.1f%%", 100 * x / p }' || echo -)"
}
row "pcmoe cuda (fp32)" "$(median_tps "$out/medium-tf32-false")"
row "pcmoe cuda (run.tf32 = true)" "$(median_tps "$out/medium-tf32-true")"
if [ -n "$t_tps" ]; then
    row "$t_note" "$t_tps"
    printf 'ratio pcmoe / PyTorch: %.2fx\n' "$(awk -v a="$(median_tps "$out/medium-tf32-false")" -v b="$t_tps" 'BEGIN { print a / b }')"
else
    echo "$t_note"
fi

# 2. peak device memory per party
printf '\nexpert-dominated shape (4 MoE layers of 32 experts, batch 4 per party): peak device memory, largest party\n'
printf '%-4s %22s %22s %8s\n' "N" "pcmoe party (MiB)" "alone, local (MiB)" "ratio"
for n in 1 2 4 8; do
    shape "experts$n" 32 4 "$n"
    short="--set train.steps=3 --set run.device=cuda --force"
    pcmoe_run "$out/experts$n-pcmoe.log" "$mpirun" --oversubscribe -np "$n" "$PCMOE" train "$out/experts$n.ini" $short --set run.dir="$out/experts$n-pcmoe"
    pcmoe_run "$out/experts$n-local.log" "$mpirun" --oversubscribe -np "$n" "$PCMOE" train "$out/experts$n.ini" $short \
        --set parties.mode=local --set run.dir="$out/experts$n-local"
    python3 - "$out/experts$n-pcmoe/summary.json" "$out/experts$n-local/summary.json" "$n" <<'PY'
import json, sys
peak = [max(p["device_peak"] for p in json.load(open(f))["parties"]) for f in sys.argv[1:3]]
print("%-4s %22.1f %22.1f %7.2fx" % (sys.argv[3], peak[0] / 2**20, peak[1] / 2**20, peak[0] / peak[1]))
PY
done
