#!/bin/sh
# test_privacy_audit: what crosses party boundaries, from pcmoe's own traffic audit (--audit).
#  - pcmoe sends only expert rows, expert outputs, the two gradient kinds, routing counts, scalar
#    metrics, and one-int start-up agreements (control), plus the audit report itself: never fedavg
#    weights or anything else. There is no message kind for token ids, labels, gate weights or backbone
#    tensors; the audit proves nothing else was sent through the audited functions.
#  - Row bytes equal routed-remote-rows x d_model x 4 per direction and peer. The row counts come from
#    the routers of the senders, counted apart from the byte counters; outputs mirror rows; the two
#    gradient kinds mirror each other.
#  - privacy.share_metrics = false: no metrics traffic at all, each party writes its own metrics file.
#  - fedavg shows its full-model traffic.
. "$(dirname "$0")/lib.sh"


for n in 2 4; do
    for sched in concurrent sequential; do
        cfg="$TMP/p$n.ini"
        tiny_config "$n" "$cfg" "$sched"
        mpi "$n" train "$cfg" --set run.dir="$TMP/r$n$sched" --audit "$TMP/a$n$sched.json" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "run $n $sched failed"; continue; }
        check_audit "$TMP/a$n$sched.json" pcmoe 32 0 0 1 && ok "pcmoe, $n parties, $sched: only expert traffic, bytes match routing" || fail "pcmoe audit, $n parties, $sched"
    done
done

# metrics kept local
tiny_config 2 "$TMP/p2.ini"
mpi 2 train "$TMP/p2.ini" --set privacy.share_metrics=false --set run.dir="$TMP/local_metrics" --audit "$TMP/a_nm.json" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "share_metrics=false run failed"; }
check_audit "$TMP/a_nm.json" pcmoe 32 0 0 0 && ok "share_metrics = false: no metrics traffic" || fail "share_metrics = false audit"
for p in 0 1; do
    [ -s "$TMP/local_metrics/metrics.party_$p.jsonl" ] && ok "party $p wrote its own metrics" || fail "no metrics.party_$p.jsonl"
    grep -q "\"party\":$((1 - p))" "$TMP/local_metrics/metrics.party_$p.jsonl" && fail "party $p's file holds the other party's metrics"
done

# fedavg: every weight crosses, steps / fedavg.every times
mpi 2 train "$TMP/p2.ini" --set parties.mode=fedavg --set fedavg.every=5 --set run.dir="$TMP/fedavg" --audit "$TMP/a_fa.json" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "fedavg run failed"; }
params=$(grep -o '"params":[0-9]*' "$TMP/fedavg/summary.json" | head -n 1 | cut -d: -f2)
check_audit "$TMP/a_fa.json" fedavg 32 "$params" 4 1 && ok "fedavg: full-model traffic, 4 rounds x $params params" || fail "fedavg audit"
finish
