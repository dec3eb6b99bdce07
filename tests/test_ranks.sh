#!/bin/sh
# test_ranks: a party of several ranks (parties.ranks_per_party = R: its experts split across its ranks, its
# backbone data-parallel, each rank a batch of its own):
#  1. equivalence: 2 parties x 2 ranks at batch 4 compute what 2 parties x 1 rank at batch 8 compute in one
#     process (--simulate): every training and validation loss within 1e-6 relative, 20 steps, both schedules
#     (the load-balancing loss included: it is the party batch's); 3 parties x 2 ranks without recompute too;
#     and the same R = 2 run twice gives the same bits;
#  2. the audit: between parties only routed rows and their gradients, routing counts, metrics and control
#     agreements cross, and the row bytes of every pair of parties are exactly those of the 1-rank run at
#     batch 8 (the same rows, routed the same way); backbone gradients and the party's statistics stay inside
#     the party, in the bytes the party sum must move (2 (R - 1) floats per backbone parameter and step);
#  3. per-rank checkpoints: each rank's file (the backbone only in rank 0's), `pcmoe info` shows the layout;
#     10 steps, stop, --resume, 10 more end in the straight run's files, every dataset; --resume with R = 1
#     (batch 8) and from R = 1 to R = 2 continue the run within 1e-6; train.init_from reads an R = 2
#     checkpoint into a 1-rank party;
#  4. bad layouts get one error line: -np not parties x R, R above a party's experts, --resume without a
#     rank's file (its experts would be lost), --simulate, another mode, another command (another party
#     count: tests/test_regroup.sh);
#  5. run.device = cuda (the emulation build, tests/pcmoe_emu) with R = 2, rows staged and direct: the CPU's
#     losses within 1e-5.
. "$(dirname "$0")/lib.sh"

# compare A B TOL: every train_loss and val_loss of metrics files A and B, per (step, party), within TOL
# relative; prints the worst difference (TOL 0: the same bits)
compare() {
    "$PYTHON" - "$@" <<'PY'
import json, sys
def load(path):
    out = {}
    for line in open(path):
        o = json.loads(line)
        for key in ("train_loss", "val_loss"):
            if o.get(key) is not None:
                out[(o["step"], o["party"], key)] = o[key]
    return out
a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
if not a or sorted(a) != sorted(b):
    sys.exit(f"different (step, party) losses: {len(a)} and {len(b)}, e.g. {sorted(set(a) ^ set(b))[:3]}")
worst = max(abs(a[k] - b[k]) / abs(b[k]) for k in b)
print(f"{len(a)} losses, worst relative difference {worst:.2e}")
sys.exit(0 if worst <= tol else 1)
PY
}

tiny_config 2 "$TMP/p2.ini"
R2="--set parties.ranks_per_party=2"

# 1. equivalence with --simulate at the party's batch
for sched in concurrent sequential; do
    mpi 4 train "$TMP/p2.ini" $R2 --set parties.schedule=$sched --set run.dir="$TMP/r2-$sched" --audit "$TMP/audit-r2-$sched.json" \
        >"$TMP/out" 2>&1 || { fail "2 x 2 ranks, $sched: $(grep 'error' "$TMP/out" | head -n 3)"; continue; }
    "$PCMOE" train "$TMP/p2.ini" --simulate --set parties.schedule=$sched --set train.batch_size=8 \
        --set run.dir="$TMP/sim-$sched" >"$TMP/out" 2>&1 || { fail "--simulate, $sched: $(tail -n 3 "$TMP/out")"; continue; }
    out=$(compare "$TMP/r2-$sched/metrics.jsonl" "$TMP/sim-$sched/metrics.jsonl" 1e-6 2>&1) \
        && ok "2 parties x 2 ranks at batch 4 == --simulate at batch 8, $sched: $out" \
        || fail "2 parties x 2 ranks vs --simulate at batch 8, $sched: $out"
done
tiny_config 3 "$TMP/p3.ini"
NR="--set model.recompute_experts=false --set model.recompute_attention=false --set train.steps=10"
if mpi 6 train "$TMP/p3.ini" $R2 $NR --set run.dir="$TMP/r3" >"$TMP/out" 2>&1 \
    && "$PCMOE" train "$TMP/p3.ini" --simulate $NR --set train.batch_size=8 --set run.dir="$TMP/sim3" >"$TMP/out" 2>&1; then
    out=$(compare "$TMP/r3/metrics.jsonl" "$TMP/sim3/metrics.jsonl" 1e-6 2>&1) \
        && ok "3 parties x 2 ranks, no recompute, == --simulate at batch 8: $out" || fail "3 parties x 2 ranks vs --simulate: $out"
else
    fail "3 parties x 2 ranks: $(grep 'error' "$TMP/out" | head -n 3)"
fi
if mpi 4 train "$TMP/p2.ini" $R2 --set run.dir="$TMP/r2-again" >"$TMP/out" 2>&1; then
    out=$(compare "$TMP/r2-concurrent/metrics.jsonl" "$TMP/r2-again/metrics.jsonl" 0 2>&1) \
        && ok "the same 2 x 2 run twice: the same bits ($out)" || fail "the same 2 x 2 run twice differs: $out"
else
    fail "second 2 x 2 run: $(grep 'error' "$TMP/out" | head -n 3)"
fi

# 2. the audit, against the 1-rank run at batch 8 (the same rows cross the same party lines)
mpi 2 train "$TMP/p2.ini" --set train.batch_size=8 --set run.dir="$TMP/r1" --audit "$TMP/audit-r1.json" >"$TMP/out" 2>&1 \
    || fail "1 rank per party at batch 8: $(grep 'error' "$TMP/out" | head -n 3)"
backbone=$("$PCMOE" info "$TMP/r2-concurrent/checkpoints/step_00000020/party_0.h5" | sed -n 's/.*(backbone \([0-9]*\),.*/\1/p')
if out=$("$PYTHON" - "$TMP/audit-r2-concurrent.json" "$TMP/audit-r1.json" "${backbone:-0}" 20 32 <<'PY' 2>&1
import json, sys
a2, a1 = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
backbone, steps, d = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
N, R = a2["n_parties"], a2["ranks_per_party"]
errors = []
if (N, R, len(a2["ranks"])) != (2, 2, 4) or backbone <= 0:
    errors.append(f"audit of {N} parties x {R} ranks, {len(a2['ranks'])} rank entries; backbone {backbone}")
crossing = {"routing_counts", "expert_rows", "expert_outputs", "output_grads", "input_grads", "metrics", "control", "audit"}
def pair_bytes(audit, kind):  # (from party, to party) -> bytes sent across
    out = {}
    for r in audit["ranks"]:
        for q, b in enumerate(r["sent"][kind]["per_party"]):
            out[(r["party"], q)] = out.get((r["party"], q), 0) + b
    return out
for r in a2["ranks"]:
    for way in ("sent", "recv"):
        for kind, t in r[way].items():
            if t["total"] and kind not in crossing:
                errors.append(f"rank {r['rank']} {way} {t['total']:.0f} bytes of {kind} across party lines")
    for q in range(N):
        rows = r["rows_routed_to"][q]
        if r["sent"]["expert_rows"]["per_party"][q] != rows * d * 4:
            errors.append(f"rank {r['rank']} -> party {q}: row bytes {r['sent']['expert_rows']['per_party'][q]}, routed {rows} rows")
    if r["sent"]["expert_rows"]["per_party"][r["party"]] or r["rows_routed_to"][r["party"]]:
        errors.append(f"rank {r['rank']}: rows to its own party counted as crossing")
for kind in ("expert_rows", "expert_outputs", "output_grads", "input_grads", "metrics"):
    x2, x1 = pair_bytes(a2, kind), pair_bytes(a1, kind)
    if x2 != x1:
        errors.append(f"{kind}: party pairs {x2} with 2 ranks, {x1} with 1")
routed = sum(sum(r["rows_routed_to"]) for r in a2["ranks"])
if routed == 0:
    errors.append("no rows crossed a party line")
for p in range(N):
    mine = [r for r in a2["ranks"] if r["party"] == p]
    bb = sum(r["intra_party"]["sent"]["backbone_grads"] for r in mine)
    want = steps * 2 * (R - 1) * backbone * 4
    if bb != want or sum(r["intra_party"]["recv"]["backbone_grads"] for r in mine) != want:
        errors.append(f"party {p}: {bb:.0f} backbone gradient bytes inside, want {steps} x 2 x {R - 1} x {backbone} x 4 = {want}")
    if not all(r["intra_party"]["sent"]["party_stats"] and r["intra_party"]["sent"]["expert_rows"] for r in mine):
        errors.append(f"party {p}: no statistics or rows between its ranks")
x = pair_bytes(a2, "expert_rows")
print(f"{routed:.0f} rows routed across, {sum(x.values()):.0f} row bytes (those of the 1-rank run), "
      f"{steps * 2 * (R - 1) * backbone * 4} backbone gradient bytes inside each party")
for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
PY
); then ok "audit: $out"; else fail "audit: $out"; fi

# 3. per-rank checkpoints
CK="--set checkpoint.every=10"
a="$TMP/straight" b="$TMP/split"
mpi 4 train "$TMP/p2.ini" $R2 $CK --set run.dir="$a" >"$TMP/out" 2>&1 || fail "straight run: $(grep error "$TMP/out" | head -n 3)"
mpi 4 train "$TMP/p2.ini" $R2 $CK --set run.dir="$b" --stop-after 10 >"$TMP/out" 2>&1 || fail "run to step 10: $(grep error "$TMP/out" | head -n 3)"
files=$(cd "$b/checkpoints/step_00000010" 2>/dev/null && ls | tr '\n' ' ')
[ "$files" = "COMPLETE party_0.h5 party_0.rank_1.h5 party_1.h5 party_1.rank_1.h5 " ] && ok "step 10: $files" || fail "step 10 holds: $files"
"$PCMOE" info "$b/checkpoints/step_00000010" >"$TMP/info" 2>&1 \
    && grep -q "party_1.rank_1.h5: step 10, mode pcmoe (concurrent), party 1 of 2, rank 1 of its 2" "$TMP/info" \
    && grep -q "backbone 0, in the party's rank-0 file, experts 6144: 3 of 6" "$TMP/info" \
    && ok "pcmoe info: $(grep -A1 party_1.rank_1 "$TMP/info" | tr '\n' ' ' | cut -c1-200)" || fail "pcmoe info: $(cat "$TMP/info")"
if h5ls -r "$b/checkpoints/step_00000010/party_0.rank_1.h5" | grep -q "^/backbone"; then fail "rank 1's file holds a backbone"; fi
cp -r "$b" "$TMP/to1"
cp -r "$b" "$TMP/to1-bad"
mpi 4 train "$TMP/p2.ini" $R2 $CK --set run.dir="$b" --resume >"$TMP/out" 2>&1 || fail "--resume: $(grep error "$TMP/out" | head -n 3)"
same=1
for f in party_0.h5 party_0.rank_1.h5 party_1.h5 party_1.rank_1.h5; do
    h5diff --exclude-path /meta "$a/checkpoints/step_00000020/$f" "$b/checkpoints/step_00000020/$f" >"$TMP/diff" 2>&1 || { same=0; head -n 3 "$TMP/diff"; }
done
[ "$same" = 1 ] && ok "20 straight == 10 + resume + 10, every dataset of every rank's file" || fail "resumed checkpoints differ"
# another R: 2 ranks -> 1 (the party's batch of 8 on one rank), and 1 -> 2
if mpi 2 train "$TMP/p2.ini" --set train.batch_size=8 $CK --set run.dir="$TMP/to1" --resume >"$TMP/out" 2>&1; then
    out=$(compare "$a/metrics.jsonl" "$TMP/to1/metrics.jsonl" 1e-6 2>&1) && ok "resume of a 2-rank party on 1 rank: $out" \
        || fail "resume of a 2-rank party on 1 rank: $out"
else fail "resume with R = 1: $(grep error "$TMP/out" | head -n 3)"; fi
c="$TMP/from1"
if mpi 2 train "$TMP/p2.ini" --set train.batch_size=8 $CK --set run.dir="$c" --stop-after 10 >"$TMP/out" 2>&1 \
    && mpi 4 train "$TMP/p2.ini" $R2 $CK --set run.dir="$c" --resume >"$TMP/out" 2>&1; then
    out=$(compare "$a/metrics.jsonl" "$c/metrics.jsonl" 1e-6 2>&1) && ok "resume of a 1-rank party on 2 ranks: $out" \
        || fail "resume of a 1-rank party on 2 ranks: $out"
    [ -f "$c/checkpoints/step_00000020/party_1.rank_1.h5" ] || fail "the resumed 2-rank run wrote no rank-1 files"
else fail "1 -> 2 ranks: $(grep error "$TMP/out" | head -n 3)"; fi
# train.init_from an R = 2 checkpoint, on 1 rank a party: its first validation is the source's last
if mpi 2 train "$TMP/p2.ini" --set train.batch_size=8 --set train.init_from="$a/checkpoints/step_00000020" \
    --set run.dir="$TMP/init" --set train.steps=1 --set train.warmup_steps=0 >"$TMP/out" 2>&1; then
    v1=$(grep '"step":0,"party":1,' "$TMP/init/metrics.jsonl" | grep -o '"val_loss":[^,]*' | cut -d: -f2)
    v2=$(grep '"step":20,"party":1,' "$a/metrics.jsonl" | grep -o '"val_loss":[^,]*' | cut -d: -f2)
    awk -v a="$v1" -v b="$v2" 'BEGIN { d = (a - b) / b; exit !(a != "" && d < 1e-6 && d > -1e-6) }' \
        && ok "init_from a 2-rank checkpoint: party 1 starts at val_loss $v1 (the source's last: $v2)" \
        || fail "init_from a 2-rank checkpoint: val_loss $v1, the source's last $v2"
else fail "init_from an R = 2 checkpoint: $(grep error "$TMP/out" | head -n 3)"; fi

# 4. bad layouts
refused "-np 3 for 2 x 2" "needs 4 MPI ranks (2 x 2), the job has 3" mpi 3 train "$TMP/p2.ini" $R2
refused "R above a party's experts" "parties.ranks_per_party = 4: party 1 holds only 3" "$PCMOE" train "$TMP/p2.ini" --set parties.ranks_per_party=4
rm "$TMP/to1-bad/checkpoints/step_00000010/party_1.rank_1.h5"
refused "--resume without a rank's file" "party_1.rank_1.h5: cannot read checkpoint" \
    mpi 2 train "$TMP/p2.ini" --set train.batch_size=8 $CK --set run.dir="$TMP/to1-bad" --resume
refused "--simulate" "--simulate computes each party in one process" "$PCMOE" train "$TMP/p2.ini" $R2 --simulate
refused "fedavg" "several ranks per party need parties.mode = pcmoe" "$PCMOE" train "$TMP/p2.ini" $R2 --set parties.mode=fedavg
refused "eval" "pcmoe eval runs one rank per party" mpi 4 eval "$TMP/p2.ini" $R2 --checkpoint "$a/checkpoints/step_00000020"
[ -f "$TMP/to1-bad/checkpoints/step_00000010/COMPLETE" ] && ok "the refused resume left the checkpoint intact" || fail "refused resume damaged the checkpoint"

# 5. run.device = cuda, emulated, R = 2
EMU=$top_builddir/tests/pcmoe_emu
if [ -x "$EMU" ]; then
    SHORT="--set train.steps=10 --set train.eval_every=10 --set checkpoint.every=0 --set run.tf32=false"
    timeout 600 "$MPIRUN" --oversubscribe -np 4 -x OMP_NUM_THREADS=1 "$EMU" train "$TMP/p2.ini" $R2 $SHORT \
        --set run.device=cpu --set run.dir="$TMP/emu-cpu" >"$TMP/out" 2>&1 || fail "emulation build, cpu: $(grep error "$TMP/out" | head -n 3)"
    for aw in off on; do
        if timeout 600 "$MPIRUN" --oversubscribe -np 4 -x OMP_NUM_THREADS=1 "$EMU" train "$TMP/p2.ini" $R2 $SHORT \
            --set run.device=cuda --set run.cuda_aware_mpi=$aw --set run.dir="$TMP/emu-$aw" >"$TMP/out" 2>&1; then
            out=$(compare "$TMP/emu-cpu/metrics.jsonl" "$TMP/emu-$aw/metrics.jsonl" 1e-5 2>&1) \
                && ok "run.device = cuda (emulated), 2 x 2 ranks, cuda_aware_mpi = $aw: $out" \
                || fail "run.device = cuda, 2 x 2 ranks, cuda_aware_mpi = $aw: $out"
        else fail "run.device = cuda, 2 x 2 ranks, cuda_aware_mpi = $aw: $(grep error "$TMP/out" | head -n 3)"; fi
    done
else
    echo "note: $EMU not built (configure --enable-cuda-emulation): the cuda checks are not run"
fi
finish
