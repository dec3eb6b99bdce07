#!/bin/sh
# test_attacks: the attack ladder of pcmoe attack works where it should, and the DP defence stops the
# inversions it is meant to stop. Two tiny pcmoe parties, every backbone from the same weights
# (privacy.same_backbone_init), 60 steps, owners recording what they receive; party 1 attacks party 0.
#  - No defence: inverting the rows with the attacker's own pairs, inverting them with 1000 known pairs
#    of the victim, and inverting the gradient rows (scored on the next byte) each recover >= 30 points
#    more than the majority-byte baseline at the first MoE layer; the unsupervised alignment >= 15 points.
#  - The DP defence at noise multiplier 8 (clip 4 and 0.002): every inversion, on rows and on gradient
#    rows, recovers at most 10 points more than the baseline (the routing channel, outside the DP
#    guarantee, is reported, not bounded).
#  - The JSON holds every (channel, attack) of the ladder for every MoE layer.
. "$(dirname "$0")/lib.sh"

tiny_config 2 "$TMP/p2.ini"
printf '[checkpoint]\nevery = 60\n' >> "$TMP/p2.ini"
sed -i 's/^steps = 20$/steps = 60/' "$TMP/p2.ini"

run() { # run NAME SETS...: train with records, then party 1 attacks party 0 (JSON in NAME.json)
    name=$1
    shift
    mpi 2 train "$TMP/p2.ini" --set run.dir="$TMP/$name" --set privacy.same_backbone_init=true \
        --set privacy.record_received="$TMP/$name/rec" "$@" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "$name: training failed"; return 1; }
    "$PCMOE" attack "$TMP/p2.ini" --checkpoint "$TMP/$name/checkpoints/step_00000060" --records "$TMP/$name/rec" \
        --attacker 1 --victim 0 --json "$TMP/$name.json" >"$TMP/$name.table" 2>&1 || { cat "$TMP/$name.table"; fail "$name: attack failed"; return 1; }
}

# lift JSON CHANNEL ATTACK LAYER: accuracy - baseline of one line
lift() {
    "$PYTHON" -c "
import json, sys
r = [json.loads(l) for l in open('$1')]
m = [x['accuracy'] - x['baseline'] for x in r if x['channel'] == '$2' and x['attack'] == '$3' and x['layer'] == $4]
print(f'{m[0]:.3f}' if m else 'missing')"
}
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "missing" && a + 0 >= b + 0) }'; }

if run open; then
    n=$("$PYTHON" -c "import json; print(sum(1 for l in open('$TMP/open.json')))")
    [ "$n" -eq 24 ] && ok "the ladder: $n (channel, attack, layer) results" || fail "the ladder has $n results, want 24 (2 layers x (7 rows + 5 gradients))"
    for spec in "rows softmax 0.3" "rows pairs-1000 0.3" "gradients softmax 0.3" "rows align 0.15"; do
        set -- $spec
        l=$(lift "$TMP/open.json" "$1" "$2" 0)
        at_least "$l" "$3" && ok "no defence, same init: $1 $2 recovers +$l over the baseline (>= $3)" || fail "no defence: $1 $2 only $l over the baseline (want >= $3)"
    done
fi
if run dp --set privacy.clip_norm=4 --set privacy.grad_clip_norm=0.002 --set privacy.noise_multiplier=8; then
    worst=$("$PYTHON" -c "
import json
r = [json.loads(l) for l in open('$TMP/dp.json')]
inv = [x for x in r if not x['attack'].startswith('expert')]
w = max(inv, key=lambda x: x['accuracy'] - x['baseline'])
e = max((x for x in r if x['attack'].startswith('expert')), key=lambda x: x['accuracy'] - x['baseline'])
print(f\"{w['accuracy'] - w['baseline']:.3f} ({w['channel']} {w['attack']}, layer {w['layer']}); routing: {e['attack']} {e['accuracy'] - e['baseline']:+.3f}\")")
    awk -v a="${worst%% *}" 'BEGIN { exit !(a + 0 <= 0.1) }' && ok "DP noise 8: the best inversion recovers $worst" || fail "DP noise 8: an inversion recovers $worst (want <= 0.1)"
fi
finish
