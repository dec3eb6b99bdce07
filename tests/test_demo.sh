#!/bin/sh
# test_demo: the shipped 4-party demo (input/demo.ini) learns for every party: each party's validation
# loss on its own held-out text falls from the untrained ~5.5 by at least 1.5 nats/byte within 150 of
# its steps (shortened from the demo's 600 to keep the suite quick).
. "$(dirname "$0")/lib.sh"

mpi 4 train input/demo.ini --set train.steps=150 --set train.eval_every=150 --set train.warmup_steps=15 \
    --set run.dir="$TMP/demo" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "demo run failed"; finish; }
for p in 0 1 2 3; do
    first=$(grep "\"party\":$p," "$TMP/demo/metrics.jsonl" | grep '"val_loss"' | head -n 1)
    last=$(grep "\"party\":$p," "$TMP/demo/metrics.jsonl" | grep '"val_loss"' | tail -n 1)
    v0=$(json_num "$first" val_loss)
    v1=$(json_num "$last" val_loss)
    if float_lt "$(awk -v a="$v0" 'BEGIN { print a - 1.5 }')" "$v1"; then
        fail "party $p: validation loss $v0 -> $v1 did not fall by 1.5"
    else
        ok "party $p: validation loss $v0 -> $v1"
    fi
done
finish
