#!/bin/sh
# test_determinism: the same config and seed give identical losses in metrics.jsonl across two runs, and
# a different seed gives different ones (so the comparison can fail). model.recompute_experts on and off
# give bit-identical losses and gradient norms (the recomputation repeats the forward's calls), with local
# experts (--simulate), through the exchange (pcmoe over MPI, 3 parties; batches of 16, so experts run in
# several passes of EXCHANGE_PASS_ROWS), while the memory they report
# differs (so the key takes effect).
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

# recompute_experts on and off: the step's numbers, and the activation + exchange memory
numbers() { grep -o '"step":[0-9]*,"party":[0-9]*,"train_loss":[^,]*,"ce":[^,]*,"aux":[^,]*,"z":[^,]*,"lr":[^,]*,"grad_norm":[^,]*' "$1/metrics.jsonl"; }
acts() { grep -o '"mem_acts":[0-9]*,"mem_buffers":[0-9]*' "$1/summary.json" | head -n 1; }
tiny_config 3 "$TMP/p3.ini"
for rc in true false; do
    "$PCMOE" train "$TMP/p3.ini" --simulate --set model.recompute_experts=$rc --set run.dir="$TMP/sim_$rc" >/dev/null 2>"$TMP/err" || { cat "$TMP/err"; fail "--simulate, recompute $rc failed"; }
    mpi 3 train "$TMP/p3.ini" --set model.recompute_experts=$rc --set train.batch_size=16 --set run.dir="$TMP/mpi_$rc" >/dev/null 2>"$TMP/err" || { cat "$TMP/err"; fail "mpi, recompute $rc failed"; }
done
for kind in sim mpi; do
    numbers "$TMP/${kind}_true" > "$TMP/on.txt"
    numbers "$TMP/${kind}_false" > "$TMP/off.txt"
    n=$(wc -l < "$TMP/on.txt")
    if [ "$n" -ge 60 ] && cmp -s "$TMP/on.txt" "$TMP/off.txt"; then ok "$kind: recompute_experts on = off, bit for bit, $n party-steps"
    else fail "$kind: recompute_experts on and off differ ($n lines): $(diff "$TMP/on.txt" "$TMP/off.txt" | head -n 4)"; fi
    [ "$(acts "$TMP/${kind}_true")" != "$(acts "$TMP/${kind}_false")" ] && ok "$kind: memory on: $(acts "$TMP/${kind}_true"), off: $(acts "$TMP/${kind}_false")" \
        || fail "$kind: recompute_experts changes no memory: $(acts "$TMP/${kind}_true")"
done
finish
