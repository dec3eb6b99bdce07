#!/bin/sh
# test_cli: the command line and config validation. Every bad input must end with exit code 2 and ONE
# line on stderr that names the culprit (file or --set, key, value), and must not touch existing runs.
. "$(dirname "$0")/lib.sh"

help=$("$PCMOE" --help) && printf '%s\n' "$help" | grep -q "pcmoe train CONFIG.ini" && ok "--help" || fail "--help: $help"
version=$("$PCMOE" --version) && printf '%s\n' "$version" | grep -q "^pcmoe [0-9]" && ok "--version" || fail "--version: $version"
keys=$("$PCMOE" keys)
for k in model.d_model model.top_k model.moe_every train.lr train.seed data.val_fraction data.\<N\> run.dir run.blas_threads; do
    printf '%s\n' "$keys" | grep -q "$k" || fail "pcmoe keys does not list $k"
done

# the config reference (docs/config.md; tests/test_docs.sh holds it to the binary's table) documents every key
for k in $(printf '%s\n' "$keys" | awk '/^  [a-z]+\.[a-z0-9_<>N]+ / { print $1 }'); do
    grep -qF "\`$k\`" docs/config.md || fail "docs/config.md does not document $k"
done
[ "$(printf '%s\n' "$keys" | awk '/^  [a-z]+\.[a-z0-9_<>N]+ / { n++ } END { print n }')" -ge 30 ] && ok "docs/config.md documents every key" || fail "pcmoe keys lists too few keys"

good="$TMP/good.ini"
cp input/tiny.ini "$good"
printf 'short text\n' > "$TMP/short.txt"
: > "$TMP/empty.txt"
head -c 3000 "$PCMOE" > "$TMP/binary.ini" # an ELF file: not text
mkdir -p "$TMP/emptydir"

# expect_error NAME SUBSTRING ARGS...: pcmoe ARGS exits 2 with one error line containing SUBSTRING
expect_error() {
    name=$1 want=$2
    shift 2
    timeout 60 "$PCMOE" "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    lines=$(grep -c . "$TMP/err")
    if [ "$rc" -ne 2 ]; then fail "$name: exit $rc, want 2 ($(head -c 300 "$TMP/err"))"; return; fi
    if [ "$lines" -ne 1 ]; then fail "$name: $lines stderr lines, want 1: $(cat "$TMP/err")"; return; fi
    if ! grep -q "^pcmoe: error: " "$TMP/err"; then fail "$name: no 'pcmoe: error:' prefix: $(cat "$TMP/err")"; return; fi
    if ! grep -qF -- "$want" "$TMP/err"; then fail "$name: message lacks '$want': $(cat "$TMP/err")"; return; fi
    ok "$name: $(cat "$TMP/err")"
}
# with_line TEXT SECTION: a copy of the good config with TEXT added under [SECTION]
with_line() {
    awk -v sec="[$2]" -v line="$1" '{ print } $0 == sec { print line }' "$good" > "$TMP/case.ini"
    echo "$TMP/case.ini"
}

expect_error "no command" "no command given"
expect_error "unknown command" "unknown command 'trian'" trian "$good"
expect_error "train without config" "train needs a CONFIG.ini" train
expect_error "unknown option" "unknown option '--frobnicate'" train "$good" --frobnicate
expect_error "missing config file" "nope.ini: cannot read config" train "$TMP/nope.ini"
expect_error "binary config file" "non-text byte" train "$TMP/binary.ini"
expect_error "unknown key" "unknown key model.d_modle" train "$(with_line 'd_modle = 64' model)"
expect_error "unknown section" "unknown section [modle]" train "$good" --set modle.d_model=64
expect_error "wrong type int" "model.d_model = 'abc': not an integer" train "$good" --set model.d_model=abc
expect_error "wrong type float" "train.lr = '1e-3x': not a finite number" train "$good" --set train.lr=1e-3x
expect_error "nan float" "train.lr = 'nan': not a finite number" train "$good" --set train.lr=nan
expect_error "out of range" "model.top_k = 0: out of range" train "$good" --set model.top_k=0
expect_error "negative steps" "train.steps = -5: out of range" train "$good" --set train.steps=-5
expect_error "d_model % n_heads" "model.n_heads = 3: must divide model.d_model = 32" train "$good" --set model.n_heads=3
expect_error "odd head size" "must be even (RoPE)" train "$good" --set model.n_heads=32
expect_error "top_k > n_experts" "model.top_k = 5: must be <= model.n_experts = 4" train "$good" --set model.top_k=5
expect_error "moe_every > n_layers" "model.moe_every = 3: must be <= model.n_layers = 2" train "$good" --set model.moe_every=3
expect_error "min_lr > lr" "train.min_lr = 0.01: must be <= train.lr" train "$good" --set train.min_lr=0.01
expect_error "warmup > steps" "train.warmup_steps = 50: must be <= train.steps = 20" train "$good" --set train.warmup_steps=50
expect_error "bad --set form" "--set model.d_model: expected section.key=value" train "$good" --set model.d_model
expect_error "duplicate key" "duplicate key model.d_model" train "$(with_line 'd_model = 32' model)"
expect_error "missing corpus" "nowhere.txt: cannot read corpus" train "$good" --set data.0="$TMP/nowhere.txt" --set run.dir="$TMP/r"
expect_error "empty corpus" "empty.txt: corpus is empty" train "$good" --set data.0="$TMP/empty.txt" --set run.dir="$TMP/r"
expect_error "empty corpus directory" "holds no regular files" train "$good" --set data.0="$TMP/emptydir" --set run.dir="$TMP/r"
expect_error "corpus shorter than seq_len" "too short for model.seq_len = 32" train "$good" --set data.0="$TMP/short.txt" --set run.dir="$TMP/r"
expect_error "second party in single-party build" "data.1" train "$good" --set data.1=input/data/austen.txt

printf 'd_model = 32\n' > "$TMP/nosection.ini"
expect_error "key outside section" "nosection.ini:1: key 'd_model' before any [section]" train "$TMP/nosection.ini"

# a good run writes config.ini, metrics.jsonl, summary.json; progress is plain lines when not a TTY
run="$TMP/run"
if "$PCMOE" train "$good" --set run.dir="$run" >"$TMP/out" 2>"$TMP/err"; then
    for f in config.ini metrics.jsonl summary.json; do [ -s "$run/$f" ] || fail "good run: no $f"; done
    line=$(grep '"train_loss"' "$run/metrics.jsonl" | head -n 1)
    for k in step party train_loss lr tokens_per_s; do [ -n "$(json_num "$line" $k)" ] || fail "metrics line lacks $k: $line"; done
    grep -q '"val_loss"' "$run/metrics.jsonl" || fail "no val_loss in metrics.jsonl"
    grep -q '^step 20/20 | loss' "$TMP/err" && ok "plain progress lines" || fail "no plain progress line: $(tail -n 2 "$TMP/err")"
    # the resolved config reads back to the same config
    "$PCMOE" train "$run/config.ini" --set run.dir="$TMP/run2" >/dev/null 2>&1 || fail "resolved config.ini does not load"
    if diff "$run/config.ini" "$TMP/run2/config.ini" | grep -v "^[<>] dir = \|^---\|^[0-9c,]*$" | grep -q .; then
        fail "resolved config does not round-trip: $(diff "$run/config.ini" "$TMP/run2/config.ini")"
    else
        ok "resolved config.ini round-trips"
    fi
else
    fail "good run failed: $(cat "$TMP/err")"
fi

# an existing run directory is never overwritten without --force
sum_before=$(cksum < "$run/metrics.jsonl")
expect_error "existing run dir" "already holds a run" train "$good" --set run.dir="$run"
[ "$(cksum < "$run/metrics.jsonl")" = "$sum_before" ] && ok "existing metrics.jsonl untouched" || fail "existing metrics.jsonl changed"
"$PCMOE" train "$good" --set run.dir="$run" --force >/dev/null 2>&1 && ok "--force overwrites" || fail "--force run failed"

finish
