#!/bin/sh
# CPU engine throughput: tokens/s and model FLOP/s of one party's `pcmoe train` step (forward, backward,
# clip, AdamW) at three shapes, at each thread count, against the machine's SGEMM peak measured in the
# same run (benchmarks/sgemm_peak: the larger of the BLAS on its own threads and pcmoe's way of calling
# it), just before and just after each pcmoe run, the larger of the two counting (on a shared machine
# whose speed drifts, the ratio errs low rather than high), and against the same step of the PyTorch
# reference model (tests/reference/model.py) in float32 eager mode on the same threads.
#   shapes: demo   (input/demo.ini's model: d_model 64, 2 MoE layers of 8 experts, seq_len 64, batch 8)
#           medium (d_model 256, 4 MoE layers of 8 experts, top-2, expert_ff 512, seq_len 128, batch 16)
#           large  (d_model 512, 8 MoE layers of 32 experts, top-2, expert_ff 512, seq_len 256, batch 8)
#   usage: benchmarks/cpu_throughput.sh [STEPS] [THREADS ...]   (defaults: 30 steps; 1 and 2 threads)
# The median step after 3 warm-up steps counts (large: STEPS / 3 steps). Model FLOPs are pcmoe's own count
# (GEMMs and the causal attention triangle), the same for both engines.
set -eu
. "$(dirname "$0")/common.sh"
steps=${1:-30}
[ $# -gt 0 ] && shift
threads_list=${*:-1 2}
python=${TORCH_PYTHON:-/usr/bin/python3}
out=${BENCH_OUT:-runs}/cpu_throughput
mkdir -p "$out"
PEAK=${PEAK:-benchmarks/sgemm_peak} # (built by make beside pcmoe)
[ -x "$PEAK" ] || { echo "$PEAK: not built: run make" >&2; exit 2; }
has_torch=0
"$python" -c "import torch" 2>/dev/null && has_torch=1

# shape NAME D LAYERS HEADS T EXPERTS FF BATCH STEPS: a one-party config
shape() { bench_config "$out/$1.ini" 1 "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$9"; }
shape demo 64 2 4 64 8 128 8 "$steps"
shape medium 256 4 4 128 8 512 16 "$steps"
shape large 512 8 8 256 32 512 8 "$(( steps / 3 > 4 ? steps / 3 : 4 ))"

printf '\n%s, %s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" \
    "$([ "$has_torch" = 1 ] && echo "PyTorch $("$python" -c 'import torch; print(torch.__version__)')" || echo "no torch: pcmoe only")"
printf '| shape | threads | SGEMM peak GFLOP/s | pcmoe tokens/s | pcmoe GFLOP/s | %% of peak | PyTorch tokens/s | pcmoe / PyTorch |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- |\n'
measure_peak() { env OMP_NUM_THREADS="$1" "$PEAK" "$1" | awk '$2 > p { p = $2 } END { print p }'; }
for th in $threads_list; do
    for s in demo medium large; do
        run="$out/$s-$th"
        before=$(measure_peak "$th")
        pcmoe_run "$run.log" env OMP_NUM_THREADS="$th" "$PCMOE" train "$out/$s.ini" --set run.threads="$th" --set run.dir="$run" --force
        peak=$(measure_peak "$th" | awk -v b="$before" '{ print ($1 > b) ? $1 : b }')
        tps=$(median_tps "$run")
        tokens=$(awk -F= '/^batch_size/ { b = $2 } /^seq_len/ { t = $2 } END { print b * t }' "$out/$s.ini")
        flops=$(flops_per_step "$run")
        gf=$(awk -v f="$flops" -v t="$tps" -v n="$tokens" 'BEGIN { print f * t / n / 1e9 }')
        t_tps="-" ratio="-"
        if [ "$has_torch" = 1 ]; then
            n=$(awk -F= '/^steps/ { print $2 + 0 }' "$out/$s.ini")
            t_tps=$("$python" benchmarks/torch_step.py "$out/$s.ini" "$th" "$n") || { echo "benchmark: the PyTorch reference step failed ($s, $th threads)" >&2; exit 1; }
            ratio=$(awk -v a="$tps" -v b="$t_tps" 'BEGIN { printf "%.2fx", a / b }')
            t_tps=$(printf '%.0f' "$t_tps")
        fi
        printf '| %s | %s | %.0f | %.0f | %.1f | %.1f%% | %s | %s |\n' "$s" "$th" "$peak" "$tps" "$gf" \
            "$(awk -v g="$gf" -v p="$peak" 'BEGIN { print 100 * g / p }')" "$t_tps" "$ratio"
    done
done
