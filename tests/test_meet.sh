#!/bin/sh
# test_meet: parties that start their own jobs (pcmoe train CONFIG --party P --connect NAME) meet through
# MPI's ports and a name server (ompi-server, started here; every mpirun gets --ompi-server file:URI), with
# and without parties.keys (each party's job its own keys file):
#  1. 3 parties as 3 separate mpiruns, started in the order 2, 0, 1, train the losses of the same 3 parties
#     under one mpirun, bit for bit, and every job ends with status 0; so do 2 parties of 2 ranks (2 jobs of
#     2 ranks) against one mpirun of 4; and parties with run directories of their own (no shared paths)
#     stop at step 10 and --resume to the same losses;
#  2. a party whose model keys differ, and one whose training keys differ, are refused at the meeting: every
#     job ends non-zero with one error line, naming the key and both values;
#     a party's job killed by its own scheduler ends the others within parties.peer_timeout, naming it;
#     4 parties started at once meet (three rounds); a party that never comes ends the others at the meeting
#     after parties.peer_timeout, naming it; a second job as a party already there is refused;
#  3. a party that finds no meeting (no party 0, or no common name server) gives up after
#     parties.peer_timeout, saying so.
. "$(dirname "$0")/lib.sh"
command -v ompi-server >/dev/null 2>&1 || { echo "SKIP: no ompi-server (Open MPI's name server)"; exit 77; }

ompi-server --no-daemonize --report-uri "$TMP/uri" >"$TMP/server.out" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; rm -rf "$TMP"' EXIT
i=0
while [ "$i" -lt 100 ] && [ ! -s "$TMP/uri" ]; do sleep 0.1; i=$((i + 1)); done
[ -s "$TMP/uri" ] || { fail "ompi-server wrote no URI: $(cat "$TMP/server.out")"; finish; }
tiny_config 3 "$TMP/p3.ini"
tiny_config 2 "$TMP/p2.ini"

# party NAME P NP CONFIG ARGS...: party P's own job of NP ranks, in the background (its pid in $!), output in
# $TMP/NAME.P.out
party() {
    name=$1 p=$2 np=$3 cfg=$4
    shift 4
    timeout 120 "$MPIRUN" --ompi-server "file:$TMP/uri" --oversubscribe -np "$np" -x OMP_NUM_THREADS=1 "$PCMOE" train "$cfg" \
        --party "$p" --connect "$name" "$@" >"$TMP/$name.$p.out" 2>&1 &
}

# 1. three jobs against one mpirun
pids=""
for p in 2 0 1; do party run3 "$p" 1 "$TMP/p3.ini" --set run.dir="$TMP/sep3"; pids="$pids $!"; done
rcs=""
for pid in $pids; do wait "$pid"; rcs="$rcs $?"; done
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/one3" >"$TMP/out" 2>&1 || fail "one mpirun of 3: $(grep error "$TMP/out")"
if [ "$rcs" = " 0 0 0" ] && out=$(same_losses "$TMP/sep3/metrics.jsonl" "$TMP/one3/metrics.jsonl"); then
    ok "3 parties as 3 jobs (started 2, 0, 1) == one mpirun of 3: $out; $(grep 'met' "$TMP/run3.0.out")"
else
    fail "3 jobs: exit statuses$rcs; $(same_losses "$TMP/sep3/metrics.jsonl" "$TMP/one3/metrics.jsonl" 2>&1 | tail -n 1); $(grep -h error "$TMP"/run3.*.out | head -n 3)"
fi
pids=""
for p in 1 0; do party run22 "$p" 2 "$TMP/p2.ini" --set parties.ranks_per_party=2 --set run.dir="$TMP/sep22"; pids="$pids $!"; done
rcs=""
for pid in $pids; do wait "$pid"; rcs="$rcs $?"; done
mpi 4 train "$TMP/p2.ini" --set parties.ranks_per_party=2 --set run.dir="$TMP/one22" >"$TMP/out" 2>&1 || fail "one mpirun of 2 x 2: $(grep error "$TMP/out")"
if [ "$rcs" = " 0 0" ] && out=$(same_losses "$TMP/sep22/metrics.jsonl" "$TMP/one22/metrics.jsonl"); then
    ok "2 parties of 2 ranks as 2 jobs == one mpirun of 4: $out"
else
    fail "2 x 2 as 2 jobs: exit statuses$rcs; $(grep -h error "$TMP"/run22.*.out | head -n 3)"
fi

# 1a. the same three jobs with parties.keys, each its own keys file: the exchange sealed, the same losses
K="$TMP/keys"
mkdir -p "$K"
for p in 0 1 2; do "$PCMOE" keygen --party $p --out "$K/party$p.key" >/dev/null; done
for p in 0 1 2; do for q in 0 1 2; do [ $p = $q ] || cat "$K/party$q.key.pub" >>"$K/party$p.key"; done; done
pids=""
for p in 1 2 0; do party keyed3 "$p" 1 "$TMP/p3.ini" --set run.dir="$TMP/keyed3" --set parties.keys="$K/party$p.key"; pids="$pids $!"; done
rcs=""
for pid in $pids; do wait "$pid"; rcs="$rcs $?"; done
if [ "$rcs" = " 0 0 0" ] && out=$(same_losses "$TMP/keyed3/metrics.jsonl" "$TMP/one3/metrics.jsonl") && ! grep -q unencrypted "$TMP/keyed3.0.out"; then
    ok "3 jobs with parties.keys (each its own file) == one mpirun of 3 without: $out"
else
    fail "3 jobs with keys: exit statuses$rcs; $(grep -h error "$TMP"/keyed3.*.out | head -n 3)"
fi

# 1b. no shared paths: each party's job has a run directory of its own; 10 steps, stop, --resume to 20: party
#     0's metrics are those of the one mpirun, bit for bit, and each directory holds only its party's file
#     and its own marker
for phase in "--stop-after 10" "--resume"; do
    pids=""
    for p in 0 1 2; do party own "$p" 1 "$TMP/p3.ini" --set run.dir="$TMP/own$p" --set checkpoint.every=10 $phase; pids="$pids $!"; done
    rcs=""
    for pid in $pids; do wait "$pid"; rcs="$rcs $?"; done
    [ "$rcs" = " 0 0 0" ] || fail "own run directories, $phase: exit statuses$rcs: $(grep -h error "$TMP"/own.*.out | head -n 3)"
done
files=$(cd "$TMP/own1/checkpoints/step_00000020" 2>/dev/null && ls | tr '\n' ' ')
if out=$(same_losses "$TMP/own0/metrics.jsonl" "$TMP/one3/metrics.jsonl") && [ "$files" = "COMPLETE party_1.h5 " ]; then
    ok "a run directory per party (no shared paths), 10 + --resume + 10 == one mpirun of 20: $out; party 1's holds $files"
else
    fail "a run directory per party: $(same_losses "$TMP/own0/metrics.jsonl" "$TMP/one3/metrics.jsonl" 2>&1 | tail -n 1); party 1's step 20: $files"
fi

# 1c. four parties started at once meet, three times over (each party its own port: with one port for all,
#     Open MPI 4.1 paired concurrent connects wrongly and 9 of 15 such meetings hung)
tiny_config 4 "$TMP/p4.ini"
hung=0 rounds=""
for round in 1 2 3; do
    pids=""
    for p in 0 1 2 3; do
        party "four$round" "$p" 1 "$TMP/p4.ini" --set train.steps=6 --set run.dir="$TMP/four$round"
        pids="$pids $!"
    done
    rcs=""
    for pid in $pids; do wait "$pid"; rcs="$rcs $?"; done
    rounds="$rounds;$rcs"
    [ "$rcs" = " 0 0 0 0" ] || hung=$((hung + 1))
done
[ "$hung" = 0 ] && ok "4 parties started at once met and trained, 3 rounds (exit$rounds)" \
    || fail "4 parties started at once: $hung of 3 rounds failed (exit$rounds)"

# 2. disagreements at the meeting: every job ends non-zero, each with one line naming the key and both values
for case_ in "model.d_model=64|model.d_model: party 0 has 32, party 2 has 64" "train.steps=30|train.steps: party 0 has 20, party 2 has 30"; do
    set_=${case_%%|*} want=${case_#*|}
    name=bad$(echo "$set_" | tr -dc 'a-z')
    pids=""
    for p in 0 1 2; do
        extra=""
        [ "$p" = 2 ] && extra="--set $set_"
        party "$name" "$p" 1 "$TMP/p3.ini" --set run.dir="$TMP/$name" $extra
        pids="$pids $!"
    done
    rcs="" lines=""
    for pid in $pids; do wait "$pid"; rcs="$rcs $?"; done
    good=1
    for p in 0 1 2; do
        n=$(grep -c "pcmoe: error:" "$TMP/$name.$p.out")
        grep "pcmoe: error:" "$TMP/$name.$p.out" | grep -qF "$want" && [ "$n" -eq 1 ] || good=0
    done
    case $rcs in *" 0"*) good=0 ;; esac
    [ "$good" = 1 ] && ok "refused at the meeting ($set_ on party 2), every job (exit$rcs): $(grep -h 'pcmoe: error' "$TMP/$name.0.out" | cut -c1-150)" \
        || fail "$set_ on party 2: exit$rcs; $(grep -h 'error' "$TMP"/"$name".*.out | head -n 4)"
done

# 2b. a party's job killed by its own scheduler (SIGKILL to its mpirun and its rank): the others end within
#     parties.peer_timeout, naming it
party killed 0 1 "$TMP/p3.ini" --set run.dir="$TMP/killed" --set train.steps=100000 --set parties.peer_timeout=4; keep0=$!
party killed 1 1 "$TMP/p3.ini" --set run.dir="$TMP/killed" --set train.steps=100000 --set parties.peer_timeout=4; keep1=$!
party killed 2 1 "$TMP/p3.ini" --set run.dir="$TMP/killed" --set train.steps=100000 --set parties.peer_timeout=4; victim=$!
i=0
while [ "$i" -lt 300 ] && [ "$(cat "$TMP/killed/metrics.jsonl" 2>/dev/null | grep -c '"step":')" -lt 15 ]; do sleep 0.1; i=$((i + 1)); done
for p in $(pgrep -f -- "--party 2 --connect killed"); do kill -9 "$p" 2>/dev/null; done
start=$(date +%s)
wait "$keep0"; rc0=$?
wait "$keep1"; rc1=$?
wait "$victim" 2>/dev/null
secs=$(( $(date +%s) - start ))
if [ "$rc0" -ne 0 ] && [ "$rc1" -ne 0 ] && [ "$secs" -le 12 ] && grep -q "party 2 (rank 2): silent for 4 s" "$TMP/killed.0.out" \
    && grep -q "party 2 (rank 2): silent for 4 s" "$TMP/killed.1.out"; then
    ok "party 2's job killed: parties 0 and 1 ended in ${secs}s (exit $rc0, $rc1), each naming it"
else
    fail "party 2's job killed: exit $rc0, $rc1 after ${secs}s: $(grep -h error "$TMP"/killed.[01].out | head -n 2)"
fi

# 2c. a party that never comes: party 0 waits parties.peer_timeout for it, then every job at the meeting ends
#     naming it; a second job as party 1 (while the first is at the meeting) is refused
party absent 0 1 "$TMP/p3.ini" --set run.dir="$TMP/absent" --set parties.peer_timeout=8; a0=$!
party absent 1 1 "$TMP/p3.ini" --set run.dir="$TMP/absent" --set parties.peer_timeout=8; a1=$!
sleep 3
timeout 60 "$MPIRUN" --ompi-server "file:$TMP/uri" -np 1 "$PCMOE" train "$TMP/p3.ini" --party 1 --connect absent \
    --set run.dir="$TMP/absent2" >"$TMP/absent.dup.out" 2>&1
rcd=$?
start=$(date +%s)
wait "$a0"; rc0=$?
wait "$a1"; rc1=$?
secs=$(( $(date +%s) - start ))
want="party 0 waited 8 s (parties.peer_timeout) for party 2: is"
if [ "$rc0" -ne 0 ] && [ "$rc0" -ne 124 ] && [ "$rc1" -ne 0 ] && [ "$rc1" -ne 124 ] && [ "$secs" -le 20 ] \
    && grep -q "$want" "$TMP/absent.0.out" && grep -q "$want" "$TMP/absent.1.out"; then
    ok "party 2 never came: parties 0 and 1 ended (exit $rc0, $rc1): $(grep 'pcmoe: error' "$TMP/absent.1.out" | cut -c1-110)"
else
    fail "party 2 never came: exit $rc0, $rc1 after ${secs}s: $(grep -h error "$TMP"/absent.[01].out | head -n 2)"
fi
[ "$rcd" -ne 0 ] && [ "$rcd" -ne 124 ] && grep -q "party 1 is already at the meeting" "$TMP/absent.dup.out" \
    && ok "a second job as party 1 refused (exit $rcd): $(grep 'pcmoe: error' "$TMP/absent.dup.out")" \
    || fail "a second job as party 1: exit $rcd: $(tail -n 2 "$TMP/absent.dup.out")"

# 3. no meeting to find (no party 0, or no common name server: without --ompi-server, mpirun serves the names
#    of its own job only)
start=$(date +%s)
timeout 60 "$MPIRUN" --ompi-server "file:$TMP/uri" -np 1 "$PCMOE" train "$TMP/p3.ini" --party 1 --connect nobody \
    --set parties.peer_timeout=3 --set run.dir="$TMP/nobody" >"$TMP/out" 2>&1
rc=$?
secs=$(( $(date +%s) - start ))
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q "party 0 has not opened the meeting within 3 s" "$TMP/out" \
    && ok "a party with no meeting gives up after ${secs}s: $(grep 'pcmoe: error' "$TMP/out" | cut -c1-120)" || fail "no meeting: exit $rc after ${secs}s: $(tail -n 3 "$TMP/out")"
finish
