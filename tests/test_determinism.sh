#!/bin/sh
# test_determinism: the same config and seed give identical losses in metrics.jsonl across two runs, and
# a different seed gives different ones (so the comparison can fail).
. "$(dirname "$0")/lib.sh"

# the numbers that must repeat: everything but timings and resident memory
losses() { sed 's/"tokens_per_s":[^,}]*,//; s/,"rss_peak":[^,}]*//' "$1/metrics.jsonl"; }
for r in a b; do
    "$PCMOE" train input/tiny.ini --set run.dir="$TMP/$r" >/dev/null 2>"$TMP/err" || { cat "$TMP/err"; fail "run $r failed"; finish; }
done
"$PCMOE" train input/tiny.ini --set train.seed=8 --set run.dir="$TMP/c" >/dev/null 2>&1 || fail "run c failed"
n=$(grep -c '"train_loss"' "$TMP/a/metrics.jsonl")
[ "$n" -eq 20 ] || fail "expected 20 logged steps, got $n"
losses "$TMP/a" > "$TMP/a.txt"
losses "$TMP/b" > "$TMP/b.txt"
losses "$TMP/c" > "$TMP/c.txt"
cmp -s "$TMP/a.txt" "$TMP/b.txt" && ok "same seed: identical losses over $n steps" || fail "same seed, different metrics: $(diff "$TMP/a.txt" "$TMP/b.txt" | head -n 4)"
cmp -s "$TMP/a.txt" "$TMP/c.txt" && fail "a different seed gave identical losses" || ok "different seed: different losses"
finish
