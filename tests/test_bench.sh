#!/bin/sh
# test_bench: pcmoe bench. On a one-party checkpoint, every choice's log-likelihood and the acc / acc_norm
# on 30 ARC-Easy and 30 PIQA items (input/eval/) agree with the PyTorch reference model fed the same
# checkpoint (tests/reference/check_bench.py: log-likelihoods <= 1e-4 relative, accuracies exactly). On a
# 3-party pcmoe checkpoint, bench over MPI (the exchange serving every party's experts) prints the same
# per-party results as bench --simulate, and so does eval (the other parties' backbones and every expert
# are read from their files under --simulate). A bad task line, a gold index out of range and a missing
# --task are refused with one error line. Skips (77) without a python3 that has torch, numpy and h5py,
# unless PCMOE_REQUIRE_TORCH=1.
. "$(dirname "$0")/lib.sh"

REF_PY=$(torch_python h5py) || REF_PY=""
if [ -z "$REF_PY" ]; then
    if [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ]; then fail "no python3 with torch, numpy and h5py"; finish; fi
    echo "SKIP: no python3 with torch, numpy and h5py (apt-get install python3-torch python3-numpy python3-h5py)"
    exit 77
fi

# one party: against the reference
"$PCMOE" train input/tiny.ini --set checkpoint.every=20 --set run.dir="$TMP/one" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "training the one-party checkpoint failed"; finish; }
ck="$TMP/one/checkpoints/step_00000020"
for task in arc_easy piqa; do
    head -n 30 "$top_srcdir/input/eval/$task.jsonl" > "$TMP/$task.jsonl"
    if "$PCMOE" bench input/tiny.ini --checkpoint "$ck" --task "$TMP/$task.jsonl" --json "$TMP/$task.json" >"$TMP/out" 2>&1; then
        grep -q "^party 0: acc [0-9.]* acc_norm [0-9.]* (30 items" "$TMP/out" && ok "$task: $(head -n 1 "$TMP/out")" || fail "$task: no result line: $(cat "$TMP/out")"
        "$REF_PY" "$top_srcdir/tests/reference/check_bench.py" "$ck/party_0.h5" "$TMP/$task.jsonl" "$TMP/$task.json" >"$TMP/ref" 2>&1 \
            && ok "$task: the PyTorch reference agrees: $(cat "$TMP/ref")" || fail "$task: the PyTorch reference differs: $(cat "$TMP/ref")"
    else
        fail "$task: bench failed: $(cat "$TMP/out")"
    fi
done

# three pcmoe parties: over MPI = --simulate, for bench and for eval
tiny_config 3 "$TMP/p3.ini"
mpi 3 train "$TMP/p3.ini" --set train.steps=10 --set checkpoint.every=10 --set run.dir="$TMP/pc" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "pcmoe training failed"; finish; }
pck="$TMP/pc/checkpoints/step_00000010"
mpi 3 bench "$TMP/p3.ini" --checkpoint "$pck" --task "$TMP/arc_easy.jsonl" > "$TMP/mpi.txt" 2>"$TMP/err" || { cat "$TMP/err"; fail "bench over MPI failed"; }
"$PCMOE" bench "$TMP/p3.ini" --simulate --checkpoint "$pck" --task "$TMP/arc_easy.jsonl" > "$TMP/sim.txt" 2>"$TMP/err" || { cat "$TMP/err"; fail "bench --simulate failed"; }
[ "$(grep -c '^party [0-2]: acc' "$TMP/mpi.txt")" -eq 3 ] && cmp -s "$TMP/mpi.txt" "$TMP/sim.txt" \
    && ok "bench over MPI = bench --simulate: $(tr '\n' ';' < "$TMP/mpi.txt" | cut -c1-200)" \
    || fail "bench over MPI and --simulate differ: $(cat "$TMP/mpi.txt") / $(cat "$TMP/sim.txt")"
mpi 3 eval "$TMP/p3.ini" --checkpoint "$pck" > "$TMP/mpi.txt" 2>"$TMP/err" || { cat "$TMP/err"; fail "eval over MPI failed"; }
"$PCMOE" eval "$TMP/p3.ini" --simulate --checkpoint "$pck" > "$TMP/sim.txt" 2>"$TMP/err" || { cat "$TMP/err"; fail "eval --simulate failed"; }
[ "$(grep -c '^party [0-2]: val_loss' "$TMP/mpi.txt")" -eq 3 ] && cmp -s "$TMP/mpi.txt" "$TMP/sim.txt" \
    && ok "eval over MPI = eval --simulate of a pcmoe checkpoint" || fail "eval over MPI and --simulate differ: $(cat "$TMP/mpi.txt") / $(cat "$TMP/sim.txt")"

# refusals
{ head -n 1 "$TMP/arc_easy.jsonl"; echo '{"query": "Question: 2+2?", "choices": ["4", "5"], "gold": 1'; } > "$TMP/bad1.jsonl"
refused "a truncated task line" "$TMP/bad1.jsonl:2: expected ',' or '}'" "$PCMOE" bench input/tiny.ini --checkpoint "$ck" --task "$TMP/bad1.jsonl"
echo '{"query": "Question: 2+2?", "choices": ["4", "5"], "gold": 2}' > "$TMP/bad2.jsonl"
refused "gold out of range" "$TMP/bad2.jsonl:1: \"gold\" = 2: not a choice index (0 to 1)" mpi 3 bench "$TMP/p3.ini" --checkpoint "$pck" --task "$TMP/bad2.jsonl"
refused "no --task" "bench needs --task FILE.jsonl" "$PCMOE" bench input/tiny.ini --checkpoint "$ck"
refused "a missing task file" "$TMP/none.jsonl: cannot read task" "$PCMOE" bench input/tiny.ini --checkpoint "$ck" --task "$TMP/none.jsonl"
finish
