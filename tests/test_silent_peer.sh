#!/bin/sh
# test_silent_peer: a peer that stops answering ends the job, named, within parties.peer_timeout. 4 parties
# train (a checkpoint every 10 steps); after the first checkpoint, party 2's rank is stopped (SIGSTOP, as a
# hung node or a paused VM). With parties.peer_timeout = 4 the job must end within 4 s + 8 s of slack, every
# error line (one from each party that saw it before the job ended) naming party 2, no pcmoe process left (the stopped one too), and the checkpoints intact:
# --resume then trains on. The control: with parties.peer_timeout = 0 (no deadline: the blocking waits pcmoe
# had before) the same job is still running 20 s after the SIGSTOP, and the test ends it.
. "$(dirname "$0")/lib.sh"

tiny_config 4 "$TMP/p4.ini"
LONG="--set train.steps=100000 --set checkpoint.every=10 --set train.eval_every=0 --set checkpoint.keep=2"

# pid_of_rank RUN_DIR RANK: the pid of that rank of the job writing RUN_DIR
pid_of_rank() {
    for p in $(pgrep -f -- "run.dir=$1"); do
        grep -qa "OMPI_COMM_WORLD_RANK=$2" "/proc/$p/environ" 2>/dev/null && [ "$(cat "/proc/$p/comm")" = pcmoe ] && { echo "$p"; return; }
    done
}
# start_job RUN_DIR TIMEOUT: the job in the background (its mpirun's pid in $job), once a checkpoint
# is complete; 1 when it never got there
start_job() {
    mpi 4 train "$TMP/p4.ini" $LONG --set parties.peer_timeout="$2" --set run.dir="$1" >"$1.out" 2>&1 &
    job=$!
    i=0
    while [ "$i" -lt 300 ] && ! has_checkpoint "$1"; do sleep 0.1; i=$((i + 1)); done
    has_checkpoint "$1"
}
# has_checkpoint RUN_DIR: 0 once any checkpoint of RUN_DIR is complete (with checkpoint.keep = 2 and a few hundred
# steps a second, step 10's is pruned again within a fraction of a second: poll for any of them)
has_checkpoint() { ls "$1"/checkpoints/step_*/COMPLETE >/dev/null 2>&1; }
now() { date +%s.%N; }

run="$TMP/run"
if start_job "$run" 4; then
    victim=$(pid_of_rank "$run" 2)
    [ -n "$victim" ] || fail "no process of rank 2 found"
    kill -STOP "$victim"
    t0=$(now)
    i=0
    while [ "$i" -lt 300 ] && kill -0 "$job" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
    secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    if kill -0 "$job" 2>/dev/null; then
        fail "the job still runs 30 s after party 2 stopped"
        kill -CONT "$victim"; kill "$job"
    fi
    wait "$job"
    rc=$?
    n_err=$(grep -c "pcmoe: error:" "$run.out")
    named=$(grep "pcmoe: error:" "$run.out" | grep -c "party 2 (rank 2): silent for 4 s")
    line=$(grep "pcmoe: error:" "$run.out" | head -n 1)
    if [ "$rc" -ne 0 ] && [ "$n_err" -ge 1 ] && [ "$named" -eq "$n_err" ] && awk -v s="$secs" 'BEGIN { exit !(s <= 12) }'; then
        ok "party 2 stopped: the job ended in $secs s (exit $rc), $n_err error line(s), one per party that saw it: $(echo "$line" | cut -c1-150)"
    else
        fail "party 2 stopped: exit $rc after $secs s, $n_err error lines, $named naming party 2: $(grep -a 'pcmoe: error' "$run.out" | cut -c1-160)"
    fi
    sleep 1
    left=$(pgrep -f -- "run.dir=$run" | wc -l)
    [ "$left" -eq 0 ] && ok "no pcmoe process left, the stopped one included" || { fail "$left processes left"; pkill -9 -f -- "run.dir=$run"; }
    latest=$(ls -d "$run"/checkpoints/step_*/COMPLETE | tail -n 1 | sed 's|.*/step_0*\([0-9]*\)/COMPLETE|\1|')
    "$PCMOE" info "$run" >"$TMP/info" 2>&1 && ok "the last complete checkpoint (step $latest) loads: $(head -n 1 "$TMP/info" | cut -c1-100)" \
        || fail "pcmoe info after the stop: $(cat "$TMP/info")"
    if mpi 4 train "$TMP/p4.ini" --set train.steps=$((latest + 3)) --set checkpoint.every=10 --set run.dir="$run" --resume >"$TMP/out" 2>&1 \
        && grep -q "\"step\":$((latest + 3)),\"party\":2," "$run/metrics.jsonl"; then
        ok "--resume once the peer is back: steps $((latest + 1)) to $((latest + 3))"
    else
        fail "--resume after the stop: $(grep error "$TMP/out" | head -n 3)"
    fi
else
    fail "the job did not reach its first checkpoint: $(tail -n 3 "$run.out")"
    kill "$job" 2>/dev/null
fi

# the control: no deadline, the waits block for ever
run="$TMP/forever"
if start_job "$run" 0; then
    victim=$(pid_of_rank "$run" 2)
    kill -STOP "$victim"
    sleep 20
    if kill -0 "$job" 2>/dev/null; then ok "with parties.peer_timeout = 0 the job still waits 20 s after the SIGSTOP (as before)"
    else fail "with parties.peer_timeout = 0 the job ended: $(grep error "$run.out" | head -n 2)"; fi
    kill -CONT "$victim" 2>/dev/null
    kill "$job" 2>/dev/null
    wait "$job" 2>/dev/null
    pkill -9 -f -- "run.dir=$run" 2>/dev/null
else
    fail "the control job did not reach its first checkpoint"
    kill "$job" 2>/dev/null
fi
finish
