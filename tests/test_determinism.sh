#!/bin/sh
# test_determinism: the same config and seed give identical losses in metrics.jsonl across two runs, and
# a different seed gives different ones (so the comparison can fail). model.recompute_experts and
# model.recompute_attention, each on and off, give bit-identical losses and gradient norms (the
# recomputation repeats the forward's calls), with local experts (--simulate) and through the exchange
# (pcmoe over MPI, 3 parties; batches of 16, so experts run in several passes of EXCHANGE_PASS_ROWS),
# while the memory they report differs (so each key takes effect).
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

# recompute_experts and recompute_attention on and off: the step's numbers, and the activation + exchange
# memory. Runs: on (both keys true), off (both false), and one key on at a time.
numbers() { grep -o '"step":[0-9]*,"party":[0-9]*,"train_loss":[^,]*,"ce":[^,]*,"aux":[^,]*,"z":[^,]*,"lr":[^,]*,"grad_norm":[^,]*' "$1/metrics.jsonl"; }
acts() { grep -o '"mem_acts":[0-9]*,"mem_buffers":[0-9]*' "$1/summary.json" | head -n 1; }
tiny_config 3 "$TMP/p3.ini"
for rc in on:true:true off:false:false experts:true:false attention:false:true; do
    name=${rc%%:*} keys="--set model.recompute_experts=$(echo "$rc" | cut -d: -f2) --set model.recompute_attention=${rc##*:}"
    "$PCMOE" train "$TMP/p3.ini" --simulate $keys --set run.dir="$TMP/sim_$name" >/dev/null 2>"$TMP/err" || { cat "$TMP/err"; fail "--simulate, $name failed"; }
    mpi 3 train "$TMP/p3.ini" $keys --set train.batch_size=16 --set run.dir="$TMP/mpi_$name" >/dev/null 2>"$TMP/err" || { cat "$TMP/err"; fail "mpi, $name failed"; }
done
for kind in sim mpi; do
    numbers "$TMP/${kind}_off" > "$TMP/off.txt"
    n=$(wc -l < "$TMP/off.txt")
    for name in on experts attention; do
        numbers "$TMP/${kind}_$name" > "$TMP/$name.txt"
        if [ "$n" -ge 60 ] && cmp -s "$TMP/$name.txt" "$TMP/off.txt"; then ok "$kind: recompute $name = off, bit for bit, $n party-steps"
        else fail "$kind: recompute $name and off differ ($n lines): $(diff "$TMP/$name.txt" "$TMP/off.txt" | head -n 4)"; fi
        [ "$(acts "$TMP/${kind}_$name")" != "$(acts "$TMP/${kind}_off")" ] && ok "$kind: memory with recompute $name: $(acts "$TMP/${kind}_$name"), off: $(acts "$TMP/${kind}_off")" \
            || fail "$kind: recompute $name changes no memory: $(acts "$TMP/${kind}_off")"
    done
done
finish
