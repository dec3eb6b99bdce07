#!/bin/sh
# Large vocabularies: tokens/s and peak RSS of one training step (forward, backward, AdamW; fp32, CPU) at
# V = 32,000 (Mixtral's architecture) and V = 151,936 (Qwen3-MoE's), pcmoe against transformers' eager training
# step of the same model (the same random checkpoint, made by transformers and read by pcmoe with
# train.init_from), in the same run, on the same cores. pcmoe runs twice: with the LM head and cross-entropy in
# chunks of model.logits_chunk_mb (256 MiB, the default: the (B*T, V) logits never whole) and with every row at
# once (logits_chunk_mb = 0). transformers runs at 1 and at all threads and the better is compared. Small dense
# dimensions (d 256, 2 layers, 8 experts of 512, top-2), so that the LM head dominates as it does at real shapes.
#   usage: benchmarks/large_vocab.sh [B] [T] [STEPS]   (default 4 x 512 tokens, 3 timed steps after a warm-up;
#   needs the Python of scripts/install-deps.sh --with-test-tools)
set -eu
. "$(dirname "$0")/common.sh"
. tests/lib.sh >/dev/null 2>&1 || true
cd "$(dirname "$0")/.." 2>/dev/null || true
py=$(hf_python) || { echo "large_vocab: no Python with transformers (scripts/install-deps.sh --with-test-tools)" >&2; exit 2; }
B=${1:-4}; T=${2:-512}; STEPS=${3:-3}
cores=$(nproc)
out=${BENCH_OUT:-runs}/large_vocab
mkdir -p "$out"
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# pcmoe_step DIR MB: tokens/s (median of the timed steps) and the process's peak RSS in bytes
pcmoe_step() {
    run="$out/run_$(basename "$1")_$2"
    printf '[model]\nhf = %s\nseq_len = %s\nlogits_chunk_mb = %s\n[train]\ninit_from = %s\nbatch_size = %s\n' \
        "$1" "$T" "$2" "$1" "$B" > "$run.ini"
    printf 'steps = %s\nwarmup_steps = 0\neval_every = 0\nlog_every = 1\n[checkpoint]\nevery = 0\n' \
        $((STEPS + 1)) >> "$run.ini"
    printf '[data]\n0 = input/data/shakespeare.txt\n[run]\nthreads = %s\ndir = %s\n' "$cores" "$run" >> "$run.ini"
    pcmoe_run "$run.log" /usr/bin/time -f "maxrss %M" "$PCMOE" train "$run.ini" --force
    tps=$(grep -o '"tokens_per_s":[0-9.e+]*' "$run/metrics.jsonl" | tail -n +2 | cut -d: -f2 | median)
    echo "$tps $(($(sed -n 's/^maxrss //p' "$run.log") * 1024))"
}

echo "# large-vocabulary training step, B $B x T $T tokens, fp32, $cores cores, $(date -u +%Y-%m-%d); transformers $("$py" -c 'import transformers; print(transformers.__version__)'), torch $("$py" -c 'import torch; print(torch.__version__)')"
printf '| V | pcmoe chunked tok/s | peak RSS | pcmoe whole logits tok/s | peak RSS | transformers tok/s (threads) | peak RSS | pcmoe chunked / transformers: speed | memory |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for V in 32000 151936; do
    d="$out/hf_$V"
    [ -f "$d/config.json" ] || "$py" benchmarks/hf_step.py make "$d" "$V"
    set -- $(pcmoe_step "$d" 256) $(pcmoe_step "$d" 0)
    [ $# = 4 ] || { echo "large_vocab: a pcmoe run failed (logs in $out)" >&2; exit 1; }
    c_tps=$1 c_rss=$2 w_tps=$3 w_rss=$4
    best=""
    for th in 1 "$cores"; do
        r=$(taskset -c 0-$((cores - 1)) "$py" benchmarks/hf_step.py time "$d" "$th" "$STEPS" "$B" "$T") \
            || { echo "large_vocab: transformers' step failed" >&2; exit 1; }
        set -- $r
        if [ -z "$best" ] || awk -v a="$1" -v b="$h_tps" 'BEGIN { exit !(a > b) }'; then best=$th h_tps=$1 h_rss=$2; fi
    done
    awk -v V="$V" -v ct="$c_tps" -v cr="$c_rss" -v wt="$w_tps" -v wr="$w_rss" -v ht="$h_tps" -v hr="$h_rss" -v th="$best" \
        'BEGIN { g = 1073741824; printf "| %d | %.0f | %.2f GiB | %.0f | %.2f GiB | %.0f (%d) | %.2f GiB | %.2fx | %.2fx |\n",
                 V, ct, cr / g, wt, wr / g, ht, th, hr / g, ct / ht, cr / hr }'
done
