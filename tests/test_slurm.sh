#!/bin/sh
# test_slurm: the shipped job scripts under a real Slurm. The test starts its own single-node cluster
# from Debian's packages (munged, slurmctld, slurmd; configuration, ports, state and logs all in its
# temporary directory) and submits with sbatch:
#  1. jobscripts/pcmoe.sbatch trains a 2-party config to its end; pcmoe-party-nodes.sbatch a party of 2 ranks;
#     pcmoe-party.sbatch, one job per party, meets through an ompi-server and trains;
#  2. requeue and resume: a longer job gets SIGUSR1 (as --signal=B:USR1@90 sends before the time limit)
#     after its first checkpoint; it checkpoints, requeues itself, and the next start resumes from that
#     checkpoint and trains to its end (job COMPLETED, each step logged once, at the speed of the first
#     start: a requeued start that idles fails here, with both starts' step rates; it runs through
#     checkpoints that prune old ones, where the requeued start once hung, see tests/test_ckpt_prune.sh);
#  3. a deliberately broken copy of the job script fails, and the test notices (no summary, job FAILED).
# Skips (77) without Slurm or root, unless PCMOE_REQUIRE_TORCH=1 (scripts/check.sh installs Slurm).
. "$(dirname "$0")/lib.sh"

for t in munged slurmctld slurmd sbatch squeue scontrol scancel; do
    command -v "$t" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin
done
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || [ "$(id -u)" -ne 0 ]; then
    [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ] && { fail "no Slurm (apt-get install slurmctld slurmd slurm-client munge) or not root"; finish; }
    echo "SKIP: needs Slurm's daemons (apt-get install slurmctld slurmd slurm-client munge) and root"; exit 77
fi
host=$(hostname -s)
port=$(( 20000 + $$ % 20000 ))
mkdir -p "$TMP/munge" "$TMP/state" "$TMP/spool"
chmod 700 "$TMP/munge"
dd if=/dev/urandom of="$TMP/munge/munge.key" bs=1024 count=1 2>/dev/null
chmod 400 "$TMP/munge/munge.key"
cat > "$TMP/slurm.conf" <<EOF2
ClusterName=pcmoetest
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$TMP/munge/sock
StateSaveLocation=$TMP/state
SlurmdSpoolDir=$TMP/spool
SlurmctldPidFile=$TMP/slurmctld.pid
SlurmdPidFile=$TMP/slurmd.pid
SlurmctldLogFile=$TMP/slurmctld.log
SlurmdLogFile=$TMP/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=8 RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF2
export SLURM_CONF="$TMP/slurm.conf"
stop_cluster() { # cancel every job first: with proctrack/linuxproc, job processes outlive slurmd
    jobs=$(squeue -h -o %i 2>/dev/null)
    [ -n "$jobs" ] && scancel --full $jobs 2>/dev/null
    i=0
    while [ "$i" -lt 50 ] && squeue -h 2>/dev/null | grep -q .; do sleep 0.2; i=$((i + 1)); done
    # anything of this test's jobs still alive carries its directory in its arguments
    pkill -9 -f -- "run.dir=$TMP/" 2>/dev/null
    pkill -9 -f -- "jobscripts/pcmoe.sbatch $TMP/" 2>/dev/null
    pids=""
    for p in slurmd slurmctld munged; do [ -f "$TMP/$p.pid" ] && pids="$pids $(cat "$TMP/$p.pid")"; done
    kill $pids 2>/dev/null
    i=0
    while [ "$i" -lt 50 ] && kill -0 $pids 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
    rm -rf "$TMP"
}
trap stop_cluster EXIT
munged --force --key-file="$TMP/munge/munge.key" --socket="$TMP/munge/sock" --pid-file="$TMP/munged.pid" \
    --log-file="$TMP/munged.log" --seed-file="$TMP/munge/seed" || { fail "munged did not start"; finish; }
slurmctld || { fail "slurmctld did not start: $(tail -n 5 "$TMP/slurmctld.log")"; finish; }
slurmd || { fail "slurmd did not start: $(tail -n 5 "$TMP/slurmd.log")"; finish; }
i=0
while [ "$i" -lt 100 ] && ! sinfo -h -o %T 2>/dev/null | grep -q idle; do sleep 0.2; i=$((i + 1)); done
sinfo -h -o %T | grep -q idle && ok "single-node Slurm up: $(sinfo -h -o '%P %D %c %T')" || { fail "node not idle: $(sinfo 2>&1; tail -n 5 "$TMP/slurmctld.log" "$TMP/slurmd.log")"; finish; }

# wait_job ID SECONDS: until the job has left the queue
wait_job() {
    i=0
    while [ "$i" -lt $(( $2 * 5 )) ] && squeue -h -j "$1" 2>/dev/null | grep -q .; do sleep 0.2; i=$((i + 1)); done
    ! squeue -h -j "$1" 2>/dev/null | grep -q .
}
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
export PCMOE MPIRUN OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tiny_config 2 "$TMP/p2.ini"

# 1. a job that trains to its end
id=$(sbatch --parsable --ntasks=2 --chdir="$top_srcdir" --output="$TMP/job1.out" jobscripts/pcmoe.sbatch "$TMP/p2.ini" "$TMP/run1")
wait_job "$id" 120 || fail "job $id still queued after 120 s"
[ -f "$TMP/run1/summary.json" ] && [ -f "$TMP/run1/checkpoints/step_00000020/COMPLETE" ] && [ "$(job_state "$id")" = COMPLETED ] \
    && ok "sbatch pcmoe.sbatch: job $id COMPLETED, 20 steps, final checkpoint" || fail "job $id: state $(job_state "$id"): $(tail -n 5 "$TMP/job1.out")"

# 1b. a party of several ranks: pcmoe-party-nodes.sbatch, one party per node, --ntasks-per-node ranks each
tiny_config 1 "$TMP/p1.ini"
id=$(sbatch --parsable --nodes=1 --ntasks-per-node=2 --chdir="$top_srcdir" --output="$TMP/job1b.out" \
     jobscripts/pcmoe-party-nodes.sbatch "$TMP/p1.ini" "$TMP/run1b" --set train.steps=6)
wait_job "$id" 120 || fail "job $id still queued after 120 s"
[ "$(job_state "$id")" = COMPLETED ] && [ -f "$TMP/run1b/checkpoints/step_00000006/party_0.rank_1.h5" ] \
    && grep -q "1 parties of 2 ranks, one party per node" "$TMP/job1b.out" \
    && ok "sbatch --nodes=1 --ntasks-per-node=2 pcmoe-party-nodes.sbatch: job $id COMPLETED, a party of 2 ranks, its rank files" \
    || fail "pcmoe-party-nodes.sbatch job $id: state $(job_state "$id"): $(tail -n 5 "$TMP/job1b.out")"

# 1c. parties as jobs of their own: pcmoe-party.sbatch twice (party 0 and 1), meeting through an ompi-server
if command -v ompi-server >/dev/null 2>&1; then
    ompi-server --no-daemonize --report-uri "$TMP/uri" >"$TMP/server.out" 2>&1 &
    server=$!
    i=0
    while [ "$i" -lt 100 ] && [ ! -s "$TMP/uri" ]; do sleep 0.1; i=$((i + 1)); done
    ids=""
    for p in 1 0; do
        ids="$ids $(sbatch --parsable --ntasks=1 --chdir="$top_srcdir" --output="$TMP/job1c.$p.out" jobscripts/pcmoe-party.sbatch \
            "$TMP/p2.ini" "$p" slurm-meet "$TMP/uri" "$TMP/run1c" --set train.steps=6)"
    done
    for id in $ids; do wait_job "$id" 120 || fail "job $id still queued after 120 s"; done
    states=$(for id in $ids; do job_state "$id"; done | tr '\n' ' ')
    kill "$server" 2>/dev/null
    [ "$states" = "COMPLETED COMPLETED " ] && grep -q '"step":6,"party":1,' "$TMP/run1c/metrics.jsonl" \
        && ok "two pcmoe-party.sbatch jobs (parties 1 and 0) met and trained: $(grep 'met' "$TMP"/job1c.0.out | head -n 1)" \
        || fail "pcmoe-party.sbatch: states $states: $(tail -n 3 "$TMP"/job1c.0.out)"
else
    fail "no ompi-server (Open MPI's name server)"
fi

# 2. SIGUSR1 before the time limit: checkpoint, requeue, resume, finish
id=$(sbatch --parsable --ntasks=2 --chdir="$top_srcdir" --output="$TMP/job2.out" jobscripts/pcmoe.sbatch "$TMP/p2.ini" "$TMP/run2" \
     --set train.steps=600 --set train.batch_size=16 --set train.eval_every=0 --set checkpoint.every=100)
i=0
while [ "$i" -lt 300 ] && ! ls "$TMP"/run2/checkpoints/step_*/COMPLETE >/dev/null 2>&1; do sleep 0.1; i=$((i + 1)); done
scancel --signal=USR1 --batch "$id" || fail "scancel --signal=USR1 failed"
i=0 # once requeued, skip the start delay Slurm gives requeued jobs (BeginTime)
while [ "$i" -lt 300 ] && ! grep -q "requeueing job" "$TMP/job2.out" 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
i=0 # ... but only once the node has finished cleaning up the first run (else the relaunch fails)
while [ "$i" -lt 300 ] && { [ "$(job_state "$id")" != PENDING ] || [ "$(sinfo -h -o %T)" != idle ]; }; do sleep 0.2; i=$((i + 1)); done
sleep 1
scontrol update jobid="$id" StartTime=now 2>/dev/null
# the requeued start must resume from the checkpoint and train to the end
i=0
while [ "$i" -lt 600 ] && ! grep -q "resuming from" "$TMP/job2.out" 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
from=$(sed -n 's/.*resuming from .*(step \([0-9]*\) of 600).*/\1/p' "$TMP/job2.out" | head -n 1)
wait_job "$id" 180 || fail "requeued job $id still running after 180 s"
# steps per second of each start, from the metrics' wall clock (tokens_per_s of party 0's steps)
rate() { grep '"party":0,' "$TMP/run2/metrics.jsonl" | awk -F'"step":' -v lo="$1" -v hi="$2" '{ split($2, a, ","); s = a[1] + 0 }
    s > lo && s <= hi { match($0, /"tokens_per_s":[0-9.e+]*/); t += 1 / (substr($0, RSTART + 15, RLENGTH - 15) / 512); n++ }
    END { if (n) printf "%.0f", n / t; else print 0 }'; }
if grep -q "requeueing job $id" "$TMP/job2.out" && [ -n "$from" ] && [ "$(job_state "$id")" = COMPLETED ] &&
   [ -f "$TMP/run2/summary.json" ] && [ -f "$TMP/run2/checkpoints/step_00000600/COMPLETE" ] &&
   [ "$(grep -c '"step":'"$from"',"party":0' "$TMP/run2/metrics.jsonl")" -eq 1 ] &&
   [ "$(grep -c '"step":600,"party":1' "$TMP/run2/metrics.jsonl")" -eq 1 ]; then
    ok "SIGUSR1 -> checkpoint -> requeue -> resumed from step $from -> COMPLETED at step 600 (restart $(scontrol show job "$id" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p'); steps/s before $(rate 0 "$from"), after $(rate "$from" 600))"
else
    fail "requeue/resume: state $(job_state "$id"), resumed from '$from', steps/s before $(rate 0 "${from:-0}") after $(rate "${from:-0}" 600); $(grep -E 'pcmoe|resum|requeue' "$TMP/job2.out" | tail -n 6)"
fi

# 3. a broken copy of the job script must fail, and be seen to
sed 's/"$PCMOE" train "$config"/"$PCMOE" trian "$config"/' jobscripts/pcmoe.sbatch > "$TMP/broken.sbatch"
id=$(sbatch --parsable --ntasks=2 --chdir="$top_srcdir" --output="$TMP/job3.out" "$TMP/broken.sbatch" "$TMP/p2.ini" "$TMP/run3")
wait_job "$id" 120 || fail "broken job $id still queued"
[ ! -f "$TMP/run3/summary.json" ] && [ "$(job_state "$id")" = FAILED ] && ok "the broken job script fails: job $id FAILED" \
    || fail "the broken job script was not caught: state $(job_state "$id")"
bash jobscripts/pcmoe.sbatch "$TMP/p2.ini" >"$TMP/out" 2>&1 </dev/null
[ $? -eq 2 ] && grep -q "run it with sbatch" "$TMP/out" && ok "outside Slurm the script refuses to run" || fail "outside Slurm: $(cat "$TMP/out")"
finish
