#!/bin/sh
# test_cuda_train: training with run.device = cuda against run.device = cpu, on the CUDA backend built
# for the CPU (tests/pcmoe_emu: cuda/backend.cu and the kernels of cuda/ against cuda/emu/). Every
# party's training loss at each step, and the final validation loss, must agree to 1e-5
# relative:
#  1. one party (a dense and an MoE layer);
#  2. 2 parties under mpirun, parties.mode = fedavg (each rank its own model on its device, weights
#     averaged through MPI every 5 steps);
#  3. 2 pcmoe parties in one process (--simulate: the shared expert pool on the device);
#  4. checkpoints are device-independent: written on cuda at step 5, resumed on cpu (and the other way
#     round), the run ends as the single-device run does.
#  5. pcmoe over MPI, 3 parties, 20 steps, both ways rows reach MPI (staged, direct; on a GPU direct only
#     with a CUDA-aware MPI: beside one without, run.cuda_aware_mpi = on must be refused), with the same
#     audited traffic, the served experts in grouped calls (without recompute) too, and NaN rows from a
#     peer refused on both; device memory by category against the backend allocator's peak; the DP
#     defence (privacy.clip_norm, noise) on cuda gives the CPU's losses; the study's recorder on cuda
#     records the CPU's rows;
#  6. run.tf32 = true (the default; the parity runs above set false) changes the GEMMs (a little);
#  7. the emulator's counts (PCMOE_EMU_COUNTS): host waits per training step at most 1 + 1 per MoE layer,
#     and kernel launches and GEMMs within this size's budget; the fedavg baseline, whose averaging waits
#     once more, must break the wait budget (the check can fail).
. "$(dirname "$0")/lib.sh"
EMU=${CUDA_PCMOE:-$top_builddir/tests/pcmoe_emu} # (test_cuda_train_gpu.sh: the device build)
[ -x "$EMU" ] || { fail "$EMU not built (configure --enable-cuda-emulation)"; finish; }

# losses RUN_DIR: "party step loss" for every train_loss and val_loss line
losses() { sed -n 's/.*"step":\([0-9]*\),"party":\([0-9]*\).*"\(train_loss\|val_loss\)":\([-0-9.e+]*\).*/\2 \1 \3 \4/p' "$1/metrics.jsonl"; }
# worst_diff A B: the largest relative difference between the two runs' losses, line by line (their
# loss lines left in $TMP/a and $TMP/b)
worst_diff() {
    losses "$1" > "$TMP/a"
    losses "$2" > "$TMP/b"
    paste "$TMP/a" "$TMP/b" | awk '{ d = $4 - $8; if (d < 0) d = -d; r = d / ($4 < 0 ? -$4 : $4); if (r > w) w = r } END { printf "%.2e", w }'
}
# same A B NAME: the two runs' losses agree to 1e-5 relative, line by line
same() {
    worst=$(worst_diff "$1" "$2")
    if [ ! -s "$TMP/a" ] || [ "$(wc -l < "$TMP/a")" -ne "$(wc -l < "$TMP/b")" ]; then
        fail "$3: $(wc -l < "$TMP/a") and $(wc -l < "$TMP/b") loss lines"
        return
    fi
    if awk -v w="$worst" 'BEGIN { exit !(w <= 1e-5) }'; then ok "$3: $(wc -l < "$TMP/a") losses, worst relative difference $worst"
    else fail "$3: worst relative difference $worst > 1e-5"; fi
}
run1() { # run1 DIR ARGS...: one process
    d=$1
    shift
    OMP_NUM_THREADS=1 timeout 600 "$EMU" train "$@" --set run.dir="$d" --force >"$d.out" 2>&1 || { fail "run $d: $(grep 'pcmoe: error' "$d.out" || tail -n 3 "$d.out")"; return 1; }
}
runmpi() { # runmpi DIR ARGS...: NP ranks (2)
    d=$1
    shift
    timeout 600 "$MPIRUN" --oversubscribe -np "${NP:-2}" -x OMP_NUM_THREADS=1 "$EMU" train "$@" --set run.dir="$d" >"$d.out" 2>&1 || { fail "run $d: $(grep 'pcmoe: error' "$d.out" || tail -n 3 "$d.out")"; return 1; }
}
SHORT="--set train.steps=10 --set train.warmup_steps=2 --set train.eval_every=10 --set train.log_every=1 --set checkpoint.every=0 --set run.tf32=false"

# 1. one party
for dev in cpu cuda; do run1 "$TMP/one_$dev" input/tiny.ini $SHORT --set run.device=$dev; done
same "$TMP/one_cpu" "$TMP/one_cuda" "one party, cuda vs cpu"

# 1b. one party, the Hugging Face models' features: 4 query heads of 12 over 2 key/value heads (wider than
# d_model), each QK-norm, tied embeddings, gates without renormalisation
HF="--set model.n_heads=4 --set model.n_kv_heads=2 --set model.head_dim=12 --set model.tie_embeddings=true --set model.router_renorm=false"
for qk in full head; do
    for dev in cpu cuda; do run1 "$TMP/hf_${qk}_$dev" input/tiny.ini $SHORT $HF --set model.qk_norm=$qk --set run.device=$dev; done
    same "$TMP/hf_${qk}_cpu" "$TMP/hf_${qk}_cuda" "one party, GQA + qk_norm = $qk + tied + no renorm, cuda vs cpu"
done

# 1c. the LM head and cross-entropy in chunks: 8192 logits a row, 1 MiB (32 rows) at a time
CH="--set model.vocab_size=8192 --set model.logits_chunk_mb=1"
for dev in cpu cuda; do run1 "$TMP/ch_$dev" input/tiny.ini $SHORT $CH --set run.device=$dev; done
run1 "$TMP/ch_whole" input/tiny.ini $SHORT $CH --set model.logits_chunk_mb=0 --set run.device=cuda
same "$TMP/ch_cpu" "$TMP/ch_cuda" "one party, LM head 32 rows at a time, cuda vs cpu"
same "$TMP/ch_whole" "$TMP/ch_cuda" "cuda: LM head 32 rows at a time vs all rows at once"

# 2. two parties under mpirun (fedavg)
tiny_config 2 "$TMP/p2.ini"
for dev in cpu cuda; do runmpi "$TMP/fed_$dev" "$TMP/p2.ini" $SHORT --set parties.mode=fedavg --set fedavg.every=5 --set run.device=$dev; done
same "$TMP/fed_cpu" "$TMP/fed_cuda" "2 ranks, fedavg, cuda vs cpu"

# 3. pcmoe, 2 parties in one process
for dev in cpu cuda; do run1 "$TMP/sim_$dev" "$TMP/p2.ini" $SHORT --simulate --set run.device=$dev; done
same "$TMP/sim_cpu" "$TMP/sim_cuda" "pcmoe --simulate, 2 parties, cuda vs cpu"

# 4. checkpoints across devices: step 5 written on one device, the run finished on the other
CK="--set train.steps=10 --set train.warmup_steps=2 --set train.eval_every=10 --set train.log_every=1 --set checkpoint.every=5 --set run.tf32=false"
for pair in "cuda cpu" "cpu cuda"; do
    set -- $pair
    d="$TMP/ck_$1_$2"
    runmpi "$d" "$TMP/p2.ini" $CK --set parties.mode=local --set run.device="$1" --stop-after 5 || continue
    runmpi "$d" "$TMP/p2.ini" $CK --set parties.mode=local --set run.device="$2" --resume || continue
    runmpi "$TMP/ck_ref_$1" "$TMP/p2.ini" $CK --set parties.mode=local --set run.device="$1" || continue
    same "$TMP/ck_ref_$1" "$d" "checkpoint of step 5 written on $1, resumed on $2"
done

# 5. pcmoe over MPI, 3 parties (one owns fewer experts), 20 steps: rows cross through page-locked host
#    buffers (run.cuda_aware_mpi = off) and as device buffers handed to MPI (on). The audit counts the
#    same expert traffic, message by message and peer by peer, as on the CPU.
tiny_config 3 "$TMP/p3.ini"
LONG="--set train.steps=20 --set train.warmup_steps=5 --set train.eval_every=20 --set train.log_every=1 --set checkpoint.every=0 --set run.tf32=false"
NP=3 runmpi "$TMP/x_cpu" "$TMP/p3.ini" $LONG --set run.device=cpu --audit "$TMP/audit_cpu.json"
# 5a. run.cuda_aware_mpi = on beside an MPI that reports no CUDA support (Open MPI built without it, as the GPU
#     kit's): refused on every rank, exit 2 and one line, before a device buffer reaches MPI (which would crash).
#     In the emulation the device plays a GPU's for this (PCMOE_EMU_MPI_HOST_ONLY=1: device memory handed to
#     MPI stops the program); on a GPU the answer decides whether the direct path below can run at all.
AWS="off on"
if [ -z "${CUDA_PCMOE:-}" ] && ompi_info --parsable --all 2>/dev/null | grep -q 'mpi_built_with_cuda_support:value:true'; then
    echo "note: this Open MPI is CUDA-aware: the refusal of cuda_aware_mpi = on beside one that is not is not checked"
else
    host_only=""
    [ -z "${CUDA_PCMOE:-}" ] && host_only="-x PCMOE_EMU_MPI_HOST_ONLY=1"
    # shellcheck disable=SC2086
    timeout 300 "$MPIRUN" --oversubscribe -np 3 -x OMP_NUM_THREADS=1 $host_only "$EMU" train "$TMP/p3.ini" $SHORT \
        --set train.steps=2 --set train.warmup_steps=0 --set run.device=cuda --set run.cuda_aware_mpi=on \
        --set run.dir="$TMP/probe_on" >"$TMP/probe_on.out" 2>&1
    rc=$?
    said=$(grep -c 'run.cuda_aware_mpi = on hands device buffers to MPI, but this MPI reports no CUDA support' "$TMP/probe_on.out")
    if [ "$rc" -eq 2 ] && [ "$said" -eq 1 ]; then
        ok "cuda_aware_mpi = on beside an MPI without CUDA support: refused (exit 2, one line)"
        [ -n "${CUDA_PCMOE:-}" ] && AWS=off && echo "note: the direct path (cuda_aware_mpi = on) needs a CUDA-aware MPI: not run here"
    elif [ "$rc" -eq 0 ] && [ -n "${CUDA_PCMOE:-}" ]; then
        ok "cuda_aware_mpi = on: this MPI takes device buffers (it says so, or cannot say): the direct path runs"
    else fail "cuda_aware_mpi = on beside an MPI without CUDA support: exit $rc, $said refusals: $(grep -m2 'error\|emulation' "$TMP/probe_on.out")"; fi
fi
for aw in $AWS; do
    NP=3 runmpi "$TMP/x_$aw" "$TMP/p3.ini" $LONG --set run.device=cuda --set run.cuda_aware_mpi=$aw --audit "$TMP/audit_$aw.json" || continue
    same "$TMP/x_cpu" "$TMP/x_$aw" "pcmoe over MPI, 3 parties, 20 steps, cuda (cuda_aware_mpi = $aw) vs cpu"
    grep -q "rows cross parties $([ $aw = on ] && echo 'as device buffers' || echo 'through page-locked')" "$TMP/x_$aw.out" \
        && ok "cuda_aware_mpi = $aw: $(grep 'rows cross' "$TMP/x_$aw.out")" || fail "cuda_aware_mpi = $aw: no or wrong note on the exchange path"
    # every expert message kind: the same bytes, rank by rank and peer by peer
    if out=$("$PYTHON" - "$TMP/audit_cpu.json" "$TMP/audit_$aw.json" <<'PY'
import json, sys
kinds = ["routing_counts", "expert_rows", "expert_outputs", "output_grads", "input_grads"]
a, b = (json.load(open(f)) for f in sys.argv[1:3])
total = 0
for ra, rb in zip(a["ranks"], b["ranks"]):
    for way in ("sent", "recv"):
        for k in kinds:
            if ra[way][k] != rb[way][k]:
                sys.exit("rank %d %s %s: cpu %s, cuda %s" % (ra["rank"], way, k, ra[way][k], rb[way][k]))
            total += ra[way][k]["total"]
if len(a["ranks"]) != 3 or total == 0:
    sys.exit("%d ranks, %d bytes audited" % (len(a["ranks"]), total))
print("%d expert bytes sent and received, identical" % total)
PY
    ); then ok "audit, cuda_aware_mpi = $aw vs cpu: $out"; else fail "audit, cuda_aware_mpi = $aw vs cpu: $out"; fi
    # the served experts in grouped calls (model.recompute_experts = false; the default recomputes them pass by
    # pass): the same losses
    NP=3 runmpi "$TMP/xg_$aw" "$TMP/p3.ini" $LONG --set run.device=cuda --set run.cuda_aware_mpi=$aw \
        --set model.recompute_experts=false &&
        same "$TMP/x_cpu" "$TMP/xg_$aw" "pcmoe over MPI, grouped served experts (cuda_aware_mpi = $aw) vs cpu"
    # privacy.check_finite on this path (staged: the host scans the page-locked rows; direct: the device scans
    # its own): the last party's NaN rows stop every rank, named
    d="$TMP/nan_$aw"
    if timeout 300 "$MPIRUN" --oversubscribe -np 3 -x OMP_NUM_THREADS=1 "$EMU" train "$TMP/p3.ini" $SHORT \
        --set run.device=cuda --set run.cuda_aware_mpi=$aw --inject-fault nan --set run.dir="$d" >"$d.out" 2>&1; then
        fail "cuda_aware_mpi = $aw: party 2's NaN rows were accepted"
    elif grep -q "party 2 sent a non-finite value (nan) in expert_rows" "$d.out"; then
        ok "cuda_aware_mpi = $aw: $(grep -m1 -o 'party 2 sent a non-finite value.*' "$d.out")"
    else fail "cuda_aware_mpi = $aw, NaN rows: $(grep -m1 'error' "$d.out" || tail -n 2 "$d.out")"; fi
done
# device memory from the backend's allocator: its peak holds the model's categories, and beyond them
# only the backend's own scratch (attention, the batch's bytes), under 1 MiB at this size
mem_run="$TMP/x_on"
[ "$AWS" = off ] && mem_run="$TMP/x_off"
if out=$("$PYTHON" - "$mem_run/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["device"] == "cuda", s["device"]
for p in s["parties"]:
    cats = sum(p["mem_" + k] for k in ("params", "grads", "optim", "acts", "buffers"))
    extra = p["device_peak"] - cats
    if not 0 <= extra < 2**20:
        sys.exit("party %d: device_peak %d, categories %d" % (p["party"], p["device_peak"], cats))
    print("party %d: device_peak %d = categories %d + %d" % (p["party"], p["device_peak"], cats, extra))
PY
); then ok "device memory: $(echo $out)"; else fail "device memory: $out"; fi

# 5b. the DP defence on cuda (clipping and noise drawn on the host; the clipping's backward reads the layer's
#     inputs, device memory, through a copy): the CPU's losses
DP="--set privacy.clip_norm=1 --set privacy.grad_clip_norm=0.1 --set privacy.noise_multiplier=0.5"
for dev in cpu cuda; do runmpi "$TMP/dp_$dev" "$TMP/p2.ini" $SHORT $DP --set run.device=$dev; done
same "$TMP/dp_cpu" "$TMP/dp_cuda" "pcmoe over MPI with the DP defence, 2 parties, cuda vs cpu"

# 5c. the study's recorder on cuda (privacy.record_received: it reads the rows and their truth through host
#     copies of device memory): the truth and the experts reached are the CPU's byte for byte, the rows
#     received the CPU's within 1e-5 of each block's largest, and staged and direct record the same bytes
ways="cpu staged direct"
[ "$AWS" = off ] && ways="cpu staged"
for w in $ways; do
    dev=cuda aw=off
    [ "$w" = cpu ] && dev=cpu
    [ "$w" = direct ] && aw=on
    runmpi "$TMP/rec_$w" "$TMP/p2.ini" $SHORT --set run.device=$dev --set run.cuda_aware_mpi=$aw \
        --set privacy.record_received="$TMP/rec_$w/record"
done
rec_same=1
for p in 0 1; do
    for f in truth truth_grads received_experts; do
        cmp -s "$TMP/rec_cpu/record/${f}_party_$p.bin" "$TMP/rec_staged/record/${f}_party_$p.bin" || rec_same=0
    done
    for f in truth truth_grads received_experts received received_grads; do
        [ "$AWS" = off ] && break
        cmp -s "$TMP/rec_staged/record/${f}_party_$p.bin" "$TMP/rec_direct/record/${f}_party_$p.bin" || rec_same=0
    done
done
if [ $rec_same = 1 ]; then ok "recorder on cuda: truth and experts as on cpu$([ "$AWS" = off ] || echo ', staged and direct records identical')"
else fail "recorder on cuda: the records differ (cmp $TMP/rec_*/record/*.bin)"; fi
if out=$("$PYTHON" - "$TMP/rec_cpu/record" "$TMP/rec_staged/record" <<'PY'
import struct, sys
def blocks(path):  # (header, floats) of every block: header (layer, peer, rows, width), then rows x width floats
    b, at, out = open(path, "rb").read(), 0, []
    while at < len(b):
        h = struct.unpack_from("4i", b, at); n = h[2] * h[3]; at += 16
        out.append((h, struct.unpack_from("%df" % n, b, at))); at += 4 * n
    return out
worst, rows = 0.0, 0
for f in ("received_party_0", "received_party_1", "received_grads_party_0", "received_grads_party_1"):
    a, c = blocks("%s/%s.bin" % (sys.argv[1], f)), blocks("%s/%s.bin" % (sys.argv[2], f))
    assert [h for h, _ in a] == [h for h, _ in c], f + ": the blocks differ"
    for (h, x), (_, y) in zip(a, c):  # relative to the block's largest element (gradient rows are tiny)
        rows += h[2]
        scale = max(abs(u) for u in x) or 1.0
        worst = max([worst] + [abs(u - v) / scale for u, v in zip(x, y)])
assert rows > 0 and worst <= 1e-5, "%d rows, worst %.2e" % (rows, worst)
print("%d rows received, worst relative difference %.2e" % (rows, worst))
PY
); then ok "recorder on cuda vs cpu: $out"; else fail "recorder on cuda vs cpu: $out"; fi

# 6. run.tf32 = true reaches cuBLAS (the emulation rounds GEMM inputs to TF32): losses move, a little. (On a
#    GPU, TF32 only lets cuBLAS use tensor cores, which it may not at this size: unmoved losses are a note there.)
run1 "$TMP/tf32" input/tiny.ini $SHORT --set run.device=cuda --set run.tf32=true
worst=$(worst_diff "$TMP/one_cuda" "$TMP/tf32")
if awk -v w="$worst" 'BEGIN { exit !(w > 1e-6 && w < 1e-3) }'; then ok "run.tf32 = true: losses differ from fp32 by at most $worst relative (> 1e-6, < 1e-3)"
elif [ -n "${CUDA_PCMOE:-}" ] && awk -v w="$worst" 'BEGIN { exit !(w < 1e-3) }'; then
    ok "run.tf32 = true: losses within $worst relative of fp32 (< 1e-3)"
    echo "note: run.tf32 = true moved the losses by at most $worst: cuBLAS may keep exact kernels at this size"
else fail "run.tf32 = true: worst relative difference $worst from fp32 (want > 1e-6 and < 1e-3)"; fi

# 7. budgets per training step, from the emulator's totals of two run lengths (so start-up, validation and
# the last step's wrap-up cancel out). per_step DIR NP STEPS1 STEPS2 ARGS...: "syncs launches gemms" of one
# step (the largest over the ranks) into DIR.step.
per_step() {
    ps_dir=$1 ps_np=$2 ps_s1=$3 ps_s2=$4 # (runmpi sets d)
    shift 4
    for ps_s in "$ps_s1" "$ps_s2"; do
        rm -f "$ps_dir.$ps_s.counts"
        PCMOE_EMU_COUNTS="$ps_dir.$ps_s.counts" NP=$ps_np runmpi "$ps_dir.$ps_s" "$@" --set train.steps="$ps_s" \
            --set train.warmup_steps=1 --set train.eval_every=1000 --set checkpoint.every=0 --set train.log_every=1 ||
            return 1
    done
    awk -v n=$((ps_s2 - ps_s1)) 'FNR == 1 { f++ } { for (i = 3; i < NF; i += 2) v[f, $i] = ($(i + 1) > v[f, $i] ? $(i + 1) : v[f, $i]) }
        END { printf "%d %d %d\n", (v[2, "syncs"] - v[1, "syncs"]) / n, (v[2, "launches"] - v[1, "launches"]) / n,
              (v[2, "gemms"] - v[1, "gemms"]) / n }' "$ps_dir.$ps_s1.counts" "$ps_dir.$ps_s2.counts" >"$ps_dir.step" ||
        { fail "$ps_dir: no emulator counts ($(cat "$ps_dir.$ps_s1.counts" 2>&1 | head -n 1))"; return 1; }
}
# budget WHAT MOE_LAYERS LAUNCHES "syncs launches gemms": fails past 1 + MOE_LAYERS waits or LAUNCHES launches
budget() {
    set -- "$1" "$2" "$3" $4
    if [ "$4" -le $((1 + $2)) ] && [ "$5" -le "$3" ]; then ok "$1: $4 waits (budget $((1 + $2))), $5 launches (budget $3), $6 GEMMs a step"
    else fail "$1: $4 waits (budget $((1 + $2))), $5 launches (budget $3), $6 GEMMs a step"; fi
}
if [ -n "${CUDA_PCMOE:-}" ]; then
    echo "note: budgets skipped: the emulator counts them, and this run is on a device"
else
    per_step "$TMP/b1" 1 4 6 input/tiny.ini --set run.device=cuda && budget "1 party, 1 MoE layer of 2" 1 180 "$(cat "$TMP/b1.step")"
    per_step "$TMP/b2" 1 4 6 input/tiny.ini --set run.device=cuda --set model.moe_every=1 &&
        budget "1 party, 2 MoE layers of 2" 2 230 "$(cat "$TMP/b2.step")"
    per_step "$TMP/bc" 1 4 6 "$TMP/p2.ini" --set run.device=cuda --set parties.mode=centralized &&
        budget "centralized, 2 parties on 1 rank, 2 MoE layers of 2" 2 230 "$(cat "$TMP/bc.step")"
    # the planted extra wait: fedavg averaging every step waits for the weights before MPI reads them
    if per_step "$TMP/bf" 2 4 6 "$TMP/p2.ini" --set run.device=cuda --set parties.mode=fedavg --set fedavg.every=1; then
        set -- $(cat "$TMP/bf.step")
        [ "$1" -gt 2 ] && ok "the wait budget catches fedavg's extra wait per step ($1 waits > 2)" \
            || fail "fedavg every step: $1 waits a step, the budget check would not have caught its extra wait"
    fi
fi
finish
