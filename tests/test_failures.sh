#!/bin/sh
# test_failures: a job never hangs. A party whose corpus is missing, a rank killed with SIGKILL, and a
# job started on the wrong number of ranks each end the whole job within seconds, with a message that
# names the cause and a non-zero exit status.
. "$(dirname "$0")/lib.sh"

tiny_config 2 "$TMP/p2.ini"

# 1. party 1's corpus is missing: every rank stops, party 1 says why
start=$(date +%s)
mpi 2 train "$TMP/p2.ini" --set data.1="$TMP/missing.txt" --set run.dir="$TMP/r1" >"$TMP/out" 2>&1
rc=$?
secs=$(( $(date +%s) - start ))
if [ "$rc" -ne 0 ] && [ "$secs" -lt 30 ] && grep -q "party 1: data.1 = .*missing.txt: cannot read corpus" "$TMP/out"; then
    ok "missing corpus of party 1: exit $rc in ${secs}s: $(grep 'pcmoe: error' "$TMP/out" | head -n 1)"
else
    fail "missing corpus: exit $rc in ${secs}s: $(cat "$TMP/out")"
fi

# 2. one rank killed mid-run: mpirun ends the job
"$MPIRUN" --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$PCMOE" train "$TMP/p2.ini" --set train.steps=100000 \
    --set train.eval_every=0 --set run.dir="$TMP/r2" >"$TMP/out2" 2>&1 &
job=$!
i=0
while [ "$i" -lt 100 ] && [ "$(grep -c '"train_loss"' "$TMP/r2/metrics.jsonl" 2>/dev/null || echo 0)" -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
ranks=$(pgrep -P "$job" -x pcmoe) # this job's ranks only (tests may run in parallel)
victim=$(echo "$ranks" | tail -n 1)
if [ -z "$victim" ]; then
    fail "kill test: no pcmoe rank found"
else
    kill -9 "$victim"
    start=$(date +%s)
    i=0
    while kill -0 "$job" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    secs=$(( $(date +%s) - start ))
    if kill -0 "$job" 2>/dev/null; then
        fail "kill test: job still running ${secs}s after a rank was killed"
        kill -9 $ranks "$job" 2>/dev/null
    else
        wait "$job"
        rc=$?
        [ "$rc" -ne 0 ] && ok "rank killed: job ended in ${secs}s with status $rc" || fail "rank killed: job exited 0"
    fi
fi
for pid in $ranks; do # a rank still running (not a zombie) 5 s after the job ended is left behind
    i=0
    while [ "$i" -lt 50 ] && ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z; do sleep 0.1; i=$((i + 1)); done
    ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z && { fail "rank process $pid left behind"; kill -9 "$pid"; }
done

# 3. wrong rank counts
mpi 3 train "$TMP/p2.ini" --set run.dir="$TMP/r3" >"$TMP/out" 2>&1
rc=$?
[ "$rc" -ne 0 ] && grep -q "parties.count = 2, parties.mode = pcmoe: needs 2 MPI ranks, the job has 3" "$TMP/out" \
    && ok "3 ranks for 2 parties: $(grep -m1 'pcmoe: error' "$TMP/out")" || fail "rank mismatch: exit $rc: $(cat "$TMP/out")"
mpi 2 train "$TMP/p2.ini" --set parties.mode=centralized --set run.dir="$TMP/r4" >"$TMP/out" 2>&1
rc=$?
[ "$rc" -ne 0 ] && grep -q "needs 1 MPI rank, the job has 2" "$TMP/out" && ok "centralized on 2 ranks refused" || fail "centralized on 2 ranks: exit $rc: $(cat "$TMP/out")"
finish
