#!/bin/sh
# test_train_shakespeare: the small default config learns. On tiny Shakespeare the validation loss must
# start near ln(256) = 5.55 nats/byte (an untrained model) and fall below 2.5 nats/byte (3.6 bits/byte)
# by the end of input/shakespeare.ini's 600 steps, within 3 minutes.
. "$(dirname "$0")/lib.sh"

run="$TMP/run"
start=$(date +%s)
"$PCMOE" train input/shakespeare.ini --set run.dir="$run" >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err"; fail "training failed"; finish; }
secs=$(( $(date +%s) - start ))
first=$(grep '"val_loss"' "$run/metrics.jsonl" | head -n 1)
last=$(grep '"val_loss"' "$run/metrics.jsonl" | tail -n 1)
v0=$(json_num "$first" val_loss)
v1=$(json_num "$last" val_loss)
b1=$(json_num "$last" val_bpb)
echo "validation loss: step $(json_num "$first" step) $v0 nats/byte -> step $(json_num "$last" step) $v1 nats/byte ($b1 bits/byte) in ${secs}s"
float_lt 5.3 "$v0" && float_lt "$v0" 5.8 && ok "initial val loss $v0 is near ln 256" || fail "initial val loss $v0 not near ln 256"
float_lt "$v1" 2.5 && ok "final val loss $v1 < 2.5" || fail "final val loss $v1 is not below 2.5"
[ "$secs" -lt 180 ] && ok "took ${secs}s (< 180s)" || fail "took ${secs}s, limit 180s"
finish
