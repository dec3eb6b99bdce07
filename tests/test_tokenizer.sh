#!/bin/sh
# test_tokenizer: pcmoe tokenize against the tokenizers library itself. tests/hf/hf_check.py trains five
# tokenizers with it on shipped corpora (nothing is downloaded): byte-level BPE with GPT-2's regex and NFC
# (OLMoE's kind), byte-level BPE with Qwen's Split regex (Qwen3's), SentencePiece-style BPE with "▁" and
# byte fallback, merges as ["a", "b"] pairs (Mixtral's), and two with Metaspace pre-tokenizers: "first"
# unsplit (Mistral's as newer transformers convert it) and "always" split, with its decoder. For each, on
# every shipped corpus and on a Unicode
# stress text (CJK, emoji with modifiers and joiners, combining marks, CRLF, tabs, runs of spaces, digits,
# special tokens inside the text): the ids are identical to tokenizers' (no special tokens added); --decode
# gives tokenizers' decode of them, and on every corpus the text itself. Bad tokenizer files, bad text and
# bad ids end in one error line.
. "$(dirname "$0")/lib.sh"

need_hf_python "the tokenizers library"
CHECK="$top_srcdir/tests/hf/hf_check.py"
"$HF_PY" "$CHECK" tokenizers "$TMP/tok" >"$TMP/out" 2>&1 && ok "$(tail -n 1 "$TMP/out")" || { cat "$TMP/out"; fail "training the tokenizers"; finish; }

for kind in olmoe qwen3 mixtral mistral metaspace; do
    tok="$TMP/tok/$kind.json" same=0 texts=0 ids=0 round=0
    for f in input/data/*.txt "$TMP/tok/stress.txt"; do
        name=$(basename "$f")
        texts=$((texts + 1))
        "$HF_PY" "$CHECK" encode "$tok" "$f" "$TMP/want.ids" 2>"$TMP/err" || { fail "$kind $name: tokenizers: $(tail -n 1 "$TMP/err")"; continue; }
        "$PCMOE" tokenize "$tok" "$f" >"$TMP/got.ids" 2>"$TMP/err" || { fail "$kind $name: pcmoe tokenize: $(cat "$TMP/err")"; continue; }
        if cmp -s "$TMP/want.ids" "$TMP/got.ids"; then same=$((same + 1)); ids=$((ids + $(wc -w < "$TMP/got.ids")))
        else fail "$kind $name: ids differ from tokenizers' ($(cmp "$TMP/want.ids" "$TMP/got.ids" | head -n 1))"; continue; fi
        "$HF_PY" "$CHECK" decode "$tok" "$TMP/got.ids" "$TMP/want.txt" 2>"$TMP/err" || { fail "$kind $name: tokenizers decode: $(tail -n 1 "$TMP/err")"; continue; }
        "$PCMOE" tokenize "$tok" "$TMP/got.ids" --decode >"$TMP/got.txt" 2>"$TMP/err" || { fail "$kind $name: --decode: $(cat "$TMP/err")"; continue; }
        cmp -s "$TMP/want.txt" "$TMP/got.txt" || fail "$kind $name: --decode differs from tokenizers' decode"
        if [ "$name" != stress.txt ]; then
            cmp -s "$f" "$TMP/got.txt" && round=$((round + 1)) || fail "$kind $name: decode(encode(text)) is not the text"
        fi
    done
    [ "$same" -eq "$texts" ] && ok "$kind: ids identical to tokenizers' on $texts texts ($ids ids), decode = tokenizers' decode, $round corpora round-trip"
done
# stdin, and the ids of the stress text's special tokens
printf 'a<|endoftext|>b' | "$PCMOE" tokenize "$TMP/tok/qwen3.json" >"$TMP/got" 2>&1 && grep -qw 0 "$TMP/got" \
    && ok "standard input; an added token inside the text is its own id: $(cat "$TMP/got")" || fail "stdin / added token: $(cat "$TMP/got")"

# bad input
"$HF_PY" - "$TMP/tok/olmoe.json" "$TMP" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
def put(name, f):
    k = json.loads(json.dumps(j)); f(k); json.dump(k, open(f"{sys.argv[2]}/{name}.json", "w"))
put("wordpiece", lambda k: k["model"].update(type="WordPiece"))
put("merge", lambda k: k["model"]["merges"].insert(0, "zzqq xxyy"))
put("whitespace", lambda k: k.update(pre_tokenizer={"type": "WhitespaceSplit"}))
put("scheme", lambda k: k.update(pre_tokenizer={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "sometimes", "split": True}))
put("regex", lambda k: k.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "(?<x"}, "behavior": "Isolated", "invert": False}))
put("lstrip", lambda k: k["added_tokens"][0].update(lstrip=True))
put("behavior", lambda k: k.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Removed", "invert": False}))
PY
head -c 3000 "$TMP/tok/olmoe.json" > "$TMP/truncated.json"
refused "tokenizer.json not JSON" "truncated.json: not a JSON file" "$PCMOE" tokenize "$TMP/truncated.json" "$TMP/tok/stress.txt"
refused "a model other than BPE" "model.type = WordPiece: only BPE is supported" "$PCMOE" tokenize "$TMP/wordpiece.json" "$TMP/tok/stress.txt"
refused "a merge outside the vocabulary" "model.merges[0] = \"zzqq xxyy\": zzqq is not in model.vocab" "$PCMOE" tokenize "$TMP/merge.json" "$TMP/tok/stress.txt"
refused "an unsupported pre-tokenizer" "pre_tokenizer.type = WhitespaceSplit" "$PCMOE" tokenize "$TMP/whitespace.json" "$TMP/tok/stress.txt"
refused "a Metaspace prepend_scheme" "prepend_scheme = sometimes: always, first or never" "$PCMOE" tokenize "$TMP/scheme.json" "$TMP/tok/stress.txt"
refused "a regex PCRE2 cannot compile" "pre_tokenizer pattern (?<x" "$PCMOE" tokenize "$TMP/regex.json" "$TMP/tok/stress.txt"
refused "an added token flag" "lstrip = true is not supported" "$PCMOE" tokenize "$TMP/lstrip.json" "$TMP/tok/stress.txt"
refused "a Split behaviour" "behavior = Removed" "$PCMOE" tokenize "$TMP/behavior.json" "$TMP/tok/stress.txt"
printf 'ok \377 bad' > "$TMP/latin1.txt"
refused "text that is not UTF-8" "latin1.txt: not UTF-8 at byte 3" "$PCMOE" tokenize "$TMP/tok/olmoe.json" "$TMP/latin1.txt"
printf '12 99999 3' > "$TMP/bad.ids"
refused "an id past the vocabulary" "'99999 3' at byte 3: not a token id below" "$PCMOE" tokenize "$TMP/tok/olmoe.json" "$TMP/bad.ids" --decode
refused "a missing tokenizer" "no/such.json: not a JSON file" "$PCMOE" tokenize no/such.json "$TMP/bad.ids"
refused "no tokenizer" "tokenize needs a TOKENIZER.json" "$PCMOE" tokenize
# model.tokenizer in a run: its ids must fit model.vocab_size; a corpus must be its text
refused "a tokenizer larger than model.vocab_size" "model.tokenizer = $TMP/tok/olmoe.json: 800 ids; model.vocab_size = 256 is smaller" \
    "$PCMOE" train input/tiny.ini --set model.tokenizer="$TMP/tok/olmoe.json" --set run.dir="$TMP/r"
refused "a corpus that is not UTF-8" "latin1.txt: not UTF-8 at byte 3; a corpus must be UTF-8 text" \
    "$PCMOE" train input/tiny.ini --set model.tokenizer="$TMP/tok/olmoe.json" --set model.vocab_size=1024 --set data.0="$TMP/latin1.txt" --set run.dir="$TMP/r"
refused "an eos_token_id past the tokenizer" "model.eos_token_id = 900: past the 800 ids" \
    "$PCMOE" train input/tiny.ini --set model.tokenizer="$TMP/tok/olmoe.json" --set model.vocab_size=1024 --set model.eos_token_id=900 --set run.dir="$TMP/r"
# a run on tokens: the corpus is its ids, documents joined by EOS (a directory of two files)
mkdir "$TMP/docs" && head -c 40000 input/data/austen.txt > "$TMP/docs/a.txt" && head -c 40000 input/data/doyle.txt > "$TMP/docs/b.txt"
if "$PCMOE" train input/tiny.ini --set model.tokenizer="$TMP/tok/olmoe.json" --set model.vocab_size=1024 --set model.eos_token_id=0 \
    --set data.0="$TMP/docs" --set train.steps=4 --set train.warmup_steps=1 --set train.eval_every=4 --set run.dir="$TMP/tr" >"$TMP/out" 2>&1; then
    a=$("$PCMOE" tokenize "$TMP/tok/olmoe.json" "$TMP/docs/a.txt" | wc -w) b=$("$PCMOE" tokenize "$TMP/tok/olmoe.json" "$TMP/docs/b.txt" | wc -w)
    bpb=$(grep -o '"val_bpb":[^,]*' "$TMP/tr/metrics.jsonl" | tail -n 1 | cut -d: -f2) loss=$(grep -o '"val_loss":[^,]*' "$TMP/tr/metrics.jsonl" | tail -n 1 | cut -d: -f2)
    awk -v l="$loss" -v b="$bpb" -v na="$a" -v nb="$b" 'BEGIN { r = l / log(2) / b; want = 80000 / (na + nb + 1); e = r / want - 1
        exit !(e < 1e-4 && e > -1e-4) }' && ok "training on tokens: val_bpb = val_loss / ln 2 / $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", 80000 / (a + b + 1) }') bytes per token ($a + $b ids and an EOS)" \
        || fail "training on tokens: val_loss $loss, val_bpb $bpb, documents of $a and $b ids"
else fail "training on tokens: $(grep 'pcmoe: error' "$TMP/out")"; fi
finish
