#!/bin/sh
# test_ckpt_prune: checkpoint pruning keeps every rank's collectives in step. With a checkpoint after
# every step and checkpoint.keep = 2, each step deletes one old checkpoint. Before the fix, a rank that
# listed the checkpoints after rank 0 had already unmarked the oldest one saw one fewer, skipped the
# pruning agreements, and the ranks' collectives diverged: the job hung (it stopped at step 5 of 150 on
# 3 ranks; the same race stalled the requeued Slurm job at its first pruning checkpoint). The job must
# now run to its end, leaving exactly the newest two complete checkpoints.
. "$(dirname "$0")/lib.sh"

tiny_config 3 "$TMP/p3.ini"
start=$(date +%s)
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/run" --set train.steps=150 --set checkpoint.every=1 \
    --set checkpoint.keep=2 --set train.log_every=50 >"$TMP/out" 2>&1 &
job=$!
i=0 # a hang shows as a job still running after 120 s
while [ "$i" -lt 1200 ] && kill -0 "$job" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
if kill -0 "$job" 2>/dev/null; then
    pkill -f -- "run.dir=$TMP/run" # the ranks and their launcher
    fail "the job hung: still running after 120 s, last logged $(grep -o '"step":[0-9]*' "$TMP/run/metrics.jsonl" | tail -n 1)"
    finish
fi
wait "$job"
rc=$?
dirs=$(ls "$TMP/run/checkpoints" | tr '\n' ' ')
if [ "$rc" -eq 0 ] && [ "$dirs" = "step_00000149 step_00000150 " ] && [ -f "$TMP/run/checkpoints/step_00000149/COMPLETE" ] &&
   [ -f "$TMP/run/checkpoints/step_00000150/COMPLETE" ] && [ -f "$TMP/run/summary.json" ]; then
    ok "150 checkpoints, 148 pruned, in $(( $(date +%s) - start )) s; left: $dirs"
else
    fail "exit $rc; checkpoints left: $dirs; $(grep 'pcmoe: error' "$TMP/out")"
fi
finish
