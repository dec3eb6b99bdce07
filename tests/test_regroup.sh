#!/bin/sh
# test_regroup: pcmoe parties that leave and join between runs. 4 parties train 10 steps; party 3 leaves and
# 3 parties --resume to step 20 (the pool re-sharded: expert e on party e mod 3, each with its AdamW state);
# party 3 joins again and 4 parties --resume to step 30, its backbone at random or from train.init_from. At
# every regrouping, every expert is present in the next checkpoint, each remaining party's loss goes on where
# it was (not back to the untrained model's), and the joiner with init_from starts where its old backbone
# was. A resume that would lose experts (their owner's file gone with it) is refused with one error line
# naming the file, and changes nothing; pcmoe eval refuses another party count.
. "$(dirname "$0")/lib.sh"

tiny_config 4 "$TMP/p4.ini"
tiny_config 3 "$TMP/p3.ini"
tiny_config 2 "$TMP/p2.ini"
CK="--set checkpoint.every=10 --set train.eval_every=10"
A="$TMP/run"

# loss RUN STEP PARTY: that step's training loss of that party
loss() { grep "\"step\":$2,\"party\":$3," "$1/metrics.jsonl" | grep -o '"train_loss":[^,]*' | cut -d: -f2; }
# experts DIR: the experts of every file of checkpoint DIR, sorted, comma-separated
experts() { "$PCMOE" info "$1" 2>/dev/null | sed -n 's/.*experts [0-9]*: \([0-9,]*\) of.*/\1/p' | tr ',' '\n' | sort -n | tr '\n' ',' ; }
# continues RUN STEP PARTIES: each party's loss at STEP + 1 is within 0.1 of its loss at STEP, and below its
# first step's by at least 0.2 (the untrained model's)
continues() {
    for p in $3; do
        a=$(loss "$1" "$2" "$p") b=$(loss "$1" $(($2 + 1)) "$p") first=$(loss "$1" 1 "$p")
        awk -v a="$a" -v b="$b" -v f="$first" 'BEGIN { d = b - a; exit !(a != "" && b != "" && d < 0.1 && d > -0.1 && b < f - 0.2) }' \
            || { echo "party $p: step $2 $a, step $(($2 + 1)) $b, step 1 $first"; return 1; }
    done
    echo "steps $2 -> $(($2 + 1)):$(for p in $3; do printf ' %s -> %s' "$(loss "$1" "$2" "$p")" "$(loss "$1" $(($2 + 1)) "$p")"; done)"
}

mpi 4 train "$TMP/p4.ini" $CK --set train.steps=10 --set run.dir="$A" >"$TMP/out" 2>&1 || { fail "4 parties: $(grep error "$TMP/out")"; finish; }
cp -r "$A" "$TMP/four"

# party 3 leaves
if mpi 3 train "$TMP/p3.ini" $CK --set train.steps=20 --set run.dir="$A" --resume >"$TMP/out" 2>&1; then
    grep -q "the checkpoint's 4 parties of 1 ranks resume as 3 parties of 1: experts re-sharded" "$TMP/out" \
        && ok "4 -> 3: $(grep 'pcmoe: the checkpoint' "$TMP/out")" || fail "4 -> 3: no re-sharding note: $(head -n 5 "$TMP/out")"
    out=$(continues "$A" 10 "0 1 2") && ok "4 -> 3: the parties' losses go on: $out" || fail "4 -> 3: $out"
    [ "$(experts "$A/checkpoints/step_00000020")" = "0,1,2,3,4,5," ] && ok "4 -> 3: every expert in the step-20 checkpoint" \
        || fail "4 -> 3: experts of step 20: $(experts "$A/checkpoints/step_00000020")"
else
    fail "4 -> 3 parties: $(grep error "$TMP/out")"
fi
cp -r "$A" "$TMP/three"
cp -r "$A" "$TMP/lost"

# party 3 joins again: at random, or from its old backbone (train.init_from: the 4-party step-10 checkpoint)
for how in random init; do
    d="$TMP/join-$how"
    cp -r "$TMP/three" "$d"
    sets=""
    [ "$how" = init ] && sets="--set train.init_from=$TMP/four/checkpoints/step_00000010"
    if mpi 4 train "$TMP/p4.ini" $CK --set train.steps=30 --set run.dir="$d" --resume $sets >"$TMP/out" 2>&1; then
        grep -q "party 3 joins at step 20" "$TMP/out" && ok "3 -> 4 ($how): $(grep 'joins' "$TMP/out")" || fail "3 -> 4 ($how): no join note"
        out=$(continues "$d" 20 "0 1 2") && ok "3 -> 4 ($how): the parties' losses go on: $out" || fail "3 -> 4 ($how): $out"
        [ "$(experts "$d/checkpoints/step_00000030")" = "0,1,2,3,4,5," ] && ok "3 -> 4 ($how): every expert in the step-30 checkpoint" \
            || fail "3 -> 4 ($how): experts of step 30: $(experts "$d/checkpoints/step_00000030")"
        j=$(loss "$d" 21 3) old=$(loss "$TMP/four" 10 3) first=$(loss "$TMP/four" 1 3)
        if [ "$how" = random ]; then
            awk -v j="$j" -v f="$first" 'BEGIN { d = j - f; exit !(j != "" && d < 0.15 && d > -0.15) }' \
                && ok "3 -> 4 (random): party 3 starts afresh: loss $j (an untrained party's: $first)" || fail "3 -> 4 (random): party 3 at $j, untrained $first"
        else
            awk -v j="$j" -v o="$old" -v f="$first" 'BEGIN { exit !(j != "" && j < f - 0.2 && j - o < 0.15) }' \
                && ok "3 -> 4 (init_from): party 3 starts from its old backbone: loss $j (it left at $old; untrained $first)" \
                || fail "3 -> 4 (init_from): party 3 at $j, left at $old, untrained $first"
        fi
    else
        fail "3 -> 4 parties ($how): $(grep error "$TMP/out")"
    fi
done

# party 2 leaves and takes its file: its experts (2 and 5) would be lost
rm "$TMP/lost/checkpoints/step_00000020/party_2.h5"
before=$(cd "$TMP/lost" && find . -type f -exec md5sum {} + | sort | md5sum)
refused "a resume that loses experts" "party_2.h5: cannot read checkpoint" \
    mpi 2 train "$TMP/p2.ini" $CK --set train.steps=30 --set run.dir="$TMP/lost" --resume
[ "$(cd "$TMP/lost" && find . -type f -exec md5sum {} + | sort | md5sum)" = "$before" ] && ok "the refused resume changed no file" \
    || fail "the refused resume changed the run directory"
refused "eval with another party count" "only train --resume regroups the parties" \
    mpi 3 eval "$TMP/p3.ini" --checkpoint "$TMP/four/checkpoints/step_00000010"
finish
