#!/bin/sh
# test_resume: checkpoints resume bit for bit. For pcmoe (both schedules) and fedavg, 20 steps straight
# and 10 steps, stop (--stop-after, as a preempted job), --resume, 10 more end in identical checkpoints:
# every dataset of every party's file (h5diff, /meta aside: it names the run directory). Also: the
# resumed metrics.jsonl holds each (step, party) once, `pcmoe info` reads the run, and `pcmoe eval`
# reproduces the last validation losses exactly.
. "$(dirname "$0")/lib.sh"

tiny_config 2 "$TMP/p2.ini"
for mode in concurrent sequential fedavg; do
    case $mode in fedavg) sets="--set parties.mode=fedavg --set fedavg.every=3" ;; *) sets="--set parties.schedule=$mode" ;; esac
    a="$TMP/$mode-straight" b="$TMP/$mode-split"
    mpi 2 train "$TMP/p2.ini" $sets --set checkpoint.every=10 --set run.dir="$a" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "$mode: straight run failed"; continue; }
    mpi 2 train "$TMP/p2.ini" $sets --set checkpoint.every=10 --set run.dir="$b" --stop-after 10 >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "$mode: run to step 10 failed"; continue; }
    [ -f "$b/checkpoints/step_00000010/COMPLETE" ] && [ ! -d "$b/checkpoints/step_00000020" ] || fail "$mode: --stop-after 10 did not stop at a complete step-10 checkpoint"
    mpi 2 train "$TMP/p2.ini" $sets --set checkpoint.every=10 --set run.dir="$b" --resume >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "$mode: --resume failed"; continue; }
    grep -q "resuming from .*step_00000010 (step 10 of 20)" "$TMP/out" || fail "$mode: no resume notice: $(cat "$TMP/out")"
    same=1
    for p in 0 1; do
        h5diff --exclude-path /meta "$a/checkpoints/step_00000020/party_$p.h5" "$b/checkpoints/step_00000020/party_$p.h5" >"$TMP/diff" 2>&1 || { same=0; head -n 5 "$TMP/diff"; }
    done
    [ "$same" = 1 ] && ok "$mode: 20 straight == 10 + resume + 10, every dataset of both parties" || fail "$mode: resumed checkpoint differs"
    # the comparison can fail: step 10 and step 20 differ
    h5diff --exclude-path /meta "$b/checkpoints/step_00000010/party_0.h5" "$b/checkpoints/step_00000020/party_0.h5" >/dev/null 2>&1 && fail "$mode: h5diff saw no difference between steps 10 and 20"
    dups=$(grep -o '"step":[0-9]*,"party":[0-9]*' "$b/metrics.jsonl" | sort | uniq -d | wc -l)
    [ "$dups" -eq 0 ] && [ "$(grep -c '"step":20,' "$b/metrics.jsonl")" -eq 2 ] && ok "$mode: resumed metrics.jsonl has each step once" || fail "$mode: metrics.jsonl after resume: $dups duplicated lines"
done

# pcmoe info and pcmoe eval on the straight concurrent run
run="$TMP/concurrent-straight"
"$PCMOE" info "$run" >"$TMP/info" 2>&1 && grep -q "party_1.h5: step 20, mode pcmoe (concurrent), party 1 of 2" "$TMP/info" \
    && ok "pcmoe info: $(sed -n 2p "$TMP/info")" || fail "pcmoe info: $(cat "$TMP/info")"
mpi 2 eval "$TMP/p2.ini" --checkpoint "$run/checkpoints/step_00000020" >"$TMP/eval" 2>&1 || fail "pcmoe eval failed: $(cat "$TMP/eval")"
for p in 0 1; do
    want=$(grep "\"step\":20,\"party\":$p," "$run/metrics.jsonl" | grep -o '"val_loss":[^,]*' | cut -d: -f2)
    got=$(sed -n "s/^party $p: val_loss \([0-9.]*\) .*/\1/p" "$TMP/eval")
    awk -v a="$want" -v b="$got" 'BEGIN { d = a - b; exit !(d < 1e-6 && d > -1e-6) }' && ok "eval party $p: $got (training logged $want)" || fail "eval party $p: $got, training logged $want"
done
finish
