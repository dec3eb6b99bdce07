#!/bin/sh
# test_kill_resume: a rank killed with SIGKILL after at least one checkpoint ends the job within
# seconds; the newest complete checkpoint loads (pcmoe info); an incomplete checkpoint directory (files,
# no marker) newer than it is reported and ignored, never loaded; the resumed run finishes.
. "$(dirname "$0")/lib.sh"

tiny_config 2 "$TMP/p2.ini"
run="$TMP/run"
"$MPIRUN" --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$PCMOE" train "$TMP/p2.ini" --set train.steps=100000 \
    --set train.eval_every=0 --set checkpoint.every=5 --set run.dir="$run" >"$TMP/out" 2>&1 &
job=$!
i=0 # wait for two complete checkpoints
while [ "$i" -lt 300 ] && [ "$(ls "$run"/checkpoints/*/COMPLETE 2>/dev/null | wc -l)" -lt 2 ]; do sleep 0.1; i=$((i + 1)); done
ranks=$(pgrep -P "$job" -x pcmoe)
kill -9 $(echo "$ranks" | head -n 1) 2>/dev/null
start=$(date +%s)
i=0
while kill -0 "$job" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
secs=$(( $(date +%s) - start ))
if kill -0 "$job" 2>/dev/null; then fail "job still running ${secs}s after a rank was killed"; kill -9 $ranks "$job" 2>/dev/null; finish; fi
wait "$job"
rc=$?
[ "$rc" -ne 0 ] && ok "rank killed: job ended in ${secs}s, status $rc" || fail "rank killed: job exited 0"

latest=$(ls -d "$run"/checkpoints/step_* | while read -r d; do [ -f "$d/COMPLETE" ] && basename "$d"; done | tail -n 1)
step=$(echo "$latest" | sed 's/step_0*//')
[ -n "$step" ] && ok "newest complete checkpoint: $latest" || { fail "no complete checkpoint after the kill"; finish; }
"$PCMOE" info "$run/checkpoints/$latest" >"$TMP/info" 2>&1 && ok "it loads: $(head -n 1 "$TMP/info")" || fail "pcmoe info $latest: $(cat "$TMP/info")"

# a newer, incomplete checkpoint (as a kill during a write leaves one): reported, never loaded
bogus="$run/checkpoints/step_99999990"
mkdir -p "$bogus"
cp "$run/checkpoints/$latest/party_0.h5" "$bogus/party_0.h5"
printf 'garbage' > "$bogus/party_1.h5"
"$PCMOE" info "$bogus" >"$TMP/info" 2>&1 && fail "pcmoe info accepted an incomplete checkpoint" || ok "pcmoe info refuses the incomplete one: $(grep -m1 'incomplete' "$TMP/info")"
target=$((step + 10))
mpi 2 train "$TMP/p2.ini" --set train.steps=$target --set train.eval_every=0 --set checkpoint.every=5 --set run.dir="$run" --resume >"$TMP/out" 2>&1 \
    || { cat "$TMP/out"; fail "resume after the kill failed"; finish; }
grep -q "ignoring incomplete checkpoint(s): step_99999990" "$TMP/out" && ok "resume reports the incomplete checkpoint" || fail "no report of the incomplete checkpoint: $(cat "$TMP/out")"
grep -q "resuming from .*$latest (step $step of $target)" "$TMP/out" && ok "resumed from $latest" || fail "did not resume from $latest: $(cat "$TMP/out")"
[ -f "$run/checkpoints/step_$(printf %08d $target)/COMPLETE" ] && ok "resumed run finished at step $target" || fail "no final checkpoint at step $target"
[ "$(cat "$bogus/party_1.h5")" = garbage ] && ok "incomplete checkpoint left as it was" || fail "incomplete checkpoint touched"
finish
