#!/bin/sh
# test_memory: with N parties, each party's parameter and optimizer bytes are exactly its backbone plus
# the experts it owns (expert e on party e % N), as the code reports them in summary.json; every party
# holds a copy of the backbone and only its share of the experts. With 6 experts on 4 parties, parties 0
# and 1 own 2 experts, parties 2 and 3 own 1. Centralized holds everything in one process.
# pcmoe plan, which allocates nothing, predicts the same runs: parameters, gradients, AdamW and activation
# bytes exactly, the exchange's measured peak between half its balanced-routing figure and its worst case.
# Its Mixtral-8x7B plan counts the published 46,702,792,704 parameters without touching their memory, and
# model.logits_chunk_mb bounds the logits' buffer.
. "$(dirname "$0")/lib.sh"

tiny_config 4 "$TMP/p4.ini"
mpi 4 train "$TMP/p4.ini" --set train.steps=2 --set train.warmup_steps=0 --set run.dir="$TMP/pc" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "pcmoe run failed"; finish; }
mpi 1 train "$TMP/p4.ini" --set train.steps=2 --set train.warmup_steps=0 --set parties.mode=centralized --set run.dir="$TMP/ce" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "centralized run failed"; finish; }
"$PYTHON" - "$TMP/pc/summary.json" "$TMP/ce/summary.json" <<'PY' && ok "per-party parameter and optimizer bytes = backbone + own experts" || fail "memory accounting"
import json, sys
V, d, L, H, dff, m, f, P = 256, 32, 2, 2, 64, 6, 32, 4       # tiny_config: every layer MoE
backbone = 2 * V * d + d + L * (2 * d + 3 * d * d + d * d + m * d)
expert = 3 * d * f
def tensors(own):
    return 3 + L * (4 + 1 + 3 * own)                          # embed, final_norm, lm_head; per layer 4 + router + 3 per expert
bad = 0
for s in json.load(open(sys.argv[1]))["parties"]:
    q = s["party"]
    own = len([e for e in range(m) if e % P == q])
    params = backbone + own * L * expert
    want = {"mem_params": 4 * params, "mem_grads": 4 * params, "mem_optim": 8 * params + 4 * tensors(own)}
    got = {k: s[k] for k in want}
    print(f"party {q}: owns {own} experts/layer; params {got['mem_params']} bytes (backbone {4 * backbone} + experts {4 * own * L * expert}); exchange buffers {s['mem_buffers']} bytes")
    if got != want:
        print(f"  want {want}, got {got}")
        bad = 1
    if s["mem_buffers"] <= 0:
        print("  no exchange buffers reported"); bad = 1
c = json.load(open(sys.argv[2]))["parties"][0]
full = backbone + m * L * expert
print(f"centralized: params {c['mem_params']} bytes (want {4 * full})")
bad |= c["mem_params"] != 4 * full
sys.exit(bad)
PY

# pcmoe plan against the two runs above (same thread count: the CPU attention keeps a scratch slot per thread)
OMP_NUM_THREADS=1 "$PCMOE" plan "$TMP/p4.ini" --json "$TMP/plan_pc.json" >"$TMP/plan.out" 2>&1 || fail "plan: $(cat "$TMP/plan.out")"
OMP_NUM_THREADS=1 "$PCMOE" plan "$TMP/p4.ini" --set parties.mode=centralized --json "$TMP/plan_ce.json" >"$TMP/plan.out" 2>&1 \
    || fail "plan centralized: $(cat "$TMP/plan.out")"
"$PYTHON" - "$TMP/pc/summary.json" "$TMP/plan_pc.json" "$TMP/ce/summary.json" "$TMP/plan_ce.json" <<'PY' \
    && ok "pcmoe plan = the runs' allocations (4 parties and centralized)" || fail "pcmoe plan disagrees with the runs"
import json, sys
bad = 0
for run, plan in ((sys.argv[1], sys.argv[2]), (sys.argv[3], sys.argv[4])):
    parties = json.load(open(run))["parties"]
    procs = json.load(open(plan))["processes"]
    for s, p in zip(parties, procs):
        exact = all(s["mem_" + k] == p[k] for k in ("params", "grads", "optim", "acts"))
        buf = s["mem_buffers"]
        fits = p["buffers"] == 0 or (0.5 * p["buffers"] <= buf <= p["buffers_worst"])
        print(f"{p['what']}: run params/grads/optim/acts {[s['mem_' + k] for k in ('params', 'grads', 'optim', 'acts')]} "
              f"plan {[p[k] for k in ('params', 'grads', 'optim', 'acts')]}; exchange buffers run {buf} plan balanced "
              f"{p['buffers']} worst {p['buffers_worst']}")
        bad |= not exact or not fits
    bad |= len(procs) != (1 if "centralized" in procs[0]["what"] else len(parties)) # (centralized: one process)
sys.exit(bad)
PY

# Mixtral-8x7B's shapes, 8 parties: 46,702,792,704 parameters in the whole model, the plan's process small
/usr/bin/time -f "%M" -o "$TMP/rss" "$PCMOE" plan input/plan/mixtral-8x7b.ini --set parties.count=8 --json "$TMP/mix.json" \
    >"$TMP/plan.out" 2>&1 || fail "plan mixtral: $(cat "$TMP/plan.out")"
whole=$(grep -o '"whole":{[^}]*}' "$TMP/mix.json")
params=$(json_num "$whole" params)
rss_kb=$(cat "$TMP/rss" 2>/dev/null || echo 0)
if [ "${params:-0}" = 186811170816 ] && [ "$rss_kb" -gt 0 ] && [ "$rss_kb" -lt 102400 ]; then
    ok "plan mixtral-8x7b: whole model $params parameter bytes (4 x 46702792704), plan's peak RSS $((rss_kb / 1024)) MiB"
else fail "plan mixtral-8x7b: whole model $params parameter bytes (want 186811170816), peak RSS $rss_kb KiB"; fi

# model.logits_chunk_mb: 512 rows of 8192 logits are 16 MiB whole, 1 MiB (32 rows) in chunks
for mb in 0 1; do
    OMP_NUM_THREADS=1 "$PCMOE" plan "$TMP/p4.ini" --set model.vocab_size=8192 --set model.logits_chunk_mb=$mb \
        --set train.batch_size=16 --json "$TMP/ch$mb.json" >"$TMP/plan.out" 2>&1 || fail "plan logits_chunk_mb=$mb"
done
a0=$(json_num "$(cat "$TMP/ch0.json")" acts); a1=$(json_num "$(cat "$TMP/ch1.json")" acts)
if [ "$((a0 - a1))" = $(((512 - 32) * 8192 * 4)) ]; then ok "logits in 1 MiB chunks: activations $((a0 - a1)) bytes smaller"
else fail "logits in chunks: activations $a0 - $a1 bytes, want $(((512 - 32) * 8192 * 4)) less"; fi

# bad command lines
"$PCMOE" plan >"$TMP/e1" 2>&1; r1=$?
"$PCMOE" plan "$TMP/p4.ini" --bogus >"$TMP/e2" 2>&1; r2=$?
"$PCMOE" plan "$TMP/p4.ini" --set model.top_k=99 >"$TMP/e3" 2>&1; r3=$?
if [ $r1 = 2 ] && [ $r2 = 2 ] && [ $r3 = 2 ] && [ "$(cat "$TMP/e1" "$TMP/e2" "$TMP/e3" | wc -l)" = 3 ]; then
    ok "plan refuses a missing config, an unknown option and a bad key, one line each"
else fail "plan's errors: $(cat "$TMP/e1" "$TMP/e2" "$TMP/e3")"; fi
finish
