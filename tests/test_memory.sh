#!/bin/sh
# test_memory: with N parties, each party's parameter and optimizer bytes are exactly its backbone plus
# the experts it owns (expert e on party e % N), as the code reports them in summary.json; every party
# holds a copy of the backbone and only its share of the experts. With 6 experts on 4 parties, parties 0
# and 1 own 2 experts, parties 2 and 3 own 1. Centralized holds everything in one process.
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
finish
