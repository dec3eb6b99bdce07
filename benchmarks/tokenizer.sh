#!/bin/sh
# Tokenizer throughput: MB/s of `pcmoe tokenize` (one core; the whole command: reading tokenizer.json, the text,
# printing the ids) against the tokenizers library on one thread (Python's time of the calls only): its encode of
# the same text, and its encode_batch of the text's lines (what it is fastest at; other ids, as each line is
# encoded alone), on all shipped corpora concatenated (3.9 MB), for the three tokenizers that
# tests/test_tokenizer.sh trains (byte-level BPE with GPT-2's regex and NFC; Qwen's Split regex; SentencePiece-
# style with byte fallback). The ids of both are checked to be identical first. Best of 3 runs each.
#   usage: benchmarks/tokenizer.sh   (needs the Python of scripts/install-deps.sh --with-test-tools)
set -eu
cd "$(dirname "$0")/.."
PCMOE=${PCMOE:-./pcmoe}
. tests/lib.sh >/dev/null 2>&1 || true
py=$(hf_python) || { echo "tokenizer benchmark: no Python with the tokenizers library (scripts/install-deps.sh --with-test-tools)" >&2; exit 2; }
out=${BENCH_OUT:-runs}/tokenizer
mkdir -p "$out"
"$py" tests/hf/hf_check.py tokenizers "$out" >/dev/null
cat input/data/*.txt > "$out/corpora.txt"
mb=$(awk -v b="$(wc -c < "$out/corpora.txt")" 'BEGIN { printf "%.2f", b / 1e6 }')
echo "# tokenizer throughput on $mb MB of shipped corpora, $(date -u +%Y-%m-%d), $(nproc) cores; tokenizers $("$py" -c 'import tokenizers; print(tokenizers.__version__)')"
printf '| tokenizer | ids | pcmoe MB/s (1 core) | tokenizers encode MB/s | encode_batch of lines MB/s | pcmoe / best of tokenizers |\n|---|---|---|---|---|---|\n'
for kind in olmoe qwen3 mixtral; do
    best=""
    for i in 1 2 3; do
        t0=$(date +%s.%N)
        OMP_NUM_THREADS=1 taskset -c 0 "$PCMOE" tokenize "$out/$kind.json" "$out/corpora.txt" > "$out/$kind.ids"
        t1=$(date +%s.%N)
        best=$(awk -v a="$t0" -v b="$t1" -v c="$best" 'BEGIN { d = b - a; if (c == "" || d < c) c = d; print c }')
    done
    ref=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false taskset -c 0 "$py" - "$out/$kind.json" "$out/corpora.txt" "$out/$kind.ids" <<'PY'
import sys, time
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8", newline="").read()
best = None
for _ in range(3):
    t0 = time.perf_counter(); ids = t.encode(text, add_special_tokens=False).ids; d = time.perf_counter() - t0
    best = d if best is None or d < best else best
if " ".join(map(str, ids)) != open(sys.argv[3]).read().strip():
    sys.exit("ids differ from pcmoe's")
lines = text.splitlines(keepends=True)
batch = None
for _ in range(3):
    t0 = time.perf_counter(); t.encode_batch(lines, add_special_tokens=False); d = time.perf_counter() - t0
    batch = d if batch is None or d < batch else batch
print(best, len(ids), batch)
PY
) || { echo "tokenizer benchmark: $kind: the tokenizers library's ids differ from pcmoe's" >&2; exit 1; }
    set -- $ref
    awk -v k="$kind" -v mb="$mb" -v p="$best" -v r="$1" -v n="$2" -v bt="$3" \
        'BEGIN { q = r < bt ? r : bt; printf "| %s | %d | %.1f | %.1f | %.1f | %.2f |\n", k, n, mb / p, mb / r, mb / bt, q / p }'
done
