#!/bin/sh
# CPU engine throughput: tokens/s of `pcmoe train` on a config (default input/shakespeare.ini), against
# the same training step (forward, backward, clip, AdamW) of the PyTorch reference model in float32
# eager mode on the same number of threads. Prints a table and the ratio.
#   usage: benchmarks/cpu_throughput.sh [CONFIG.ini] [THREADS] [STEPS]
set -eu
. "$(dirname "$0")/common.sh"
config=${1:-input/shakespeare.ini}
threads=${2:-$(nproc)}
steps=${3:-60}
python=${TORCH_PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

mkdir -p "${BENCH_OUT:-runs}"
pcmoe_run "${BENCH_OUT:-runs}/cpu_throughput.log" env OMP_NUM_THREADS="$threads" "$PCMOE" train "$config" --set train.steps="$steps" \
    --set train.eval_every=0 --set train.log_every=1 --set run.threads="$threads" --set run.dir="$tmp/run"
# median tokens/s over the steps after 3 warm-up steps
c_tps=$(grep -o '"tokens_per_s":[0-9.e+]*' "$tmp/run/metrics.jsonl" | cut -d: -f2 | tail -n +4 | sort -g |
        awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
flops=$(grep -o '"flops":[0-9.e+]*' "$tmp/run/metrics.jsonl" | tail -n 1 | cut -d: -f2)
if "$python" -c "import torch" 2>/dev/null; then
    t_tps=$("$python" benchmarks/torch_step.py "$config" "$threads" "$steps") || { echo "benchmark: the PyTorch reference step failed" >&2; exit 1; }
    t_ver=$("$python" -c "import torch; print(torch.__version__)")
else
    t_tps="" t_ver="(no torch)"
fi
tokens=$(awk -F= '/^ *batch_size/ { b = $2 } /^ *seq_len/ { t = $2 } END { print b * t }' "$config")
printf '\nconfig %s, %s threads, %s steps, %s tokens/step, %s\n' "$config" "$threads" "$steps" "$tokens" "$(uname -m)"
printf '%-34s %14s %14s\n' "engine" "tokens/s" "GFLOP/s"
printf '%-34s %14.0f %14.2f\n' "pcmoe CPU (fp32, OpenMP + BLAS)" "$c_tps" "$(awk -v f="$flops" -v t="$c_tps" -v n="$tokens" 'BEGIN { print f * t / n / 1e9 }')"
if [ -n "$t_tps" ]; then
    printf '%-34s %14.0f %14.2f\n' "PyTorch $t_ver eager (fp32)" "$t_tps" "$(awk -v f="$flops" -v t="$t_tps" -v n="$tokens" 'BEGIN { print f * t / n / 1e9 }')"
    printf 'ratio pcmoe / PyTorch: %.2fx\n' "$(awk -v a="$c_tps" -v b="$t_tps" 'BEGIN { print a / b }')"
fi
