#!/bin/sh
# test_cuda_train: training with run.device = cuda against run.device = cpu, on the CUDA backend built
# for the CPU (tests/pcmoe_emu: cuda/backend.cu and the kernels of cuda/ against cuda/emu/). Every
# party's training loss at each of 10 steps, and the final validation loss, must agree to 1e-5
# relative:
#  1. one party (a dense and an MoE layer);
#  2. 2 parties under mpirun, parties.mode = fedavg (each rank its own model on its device, weights
#     averaged through MPI every 5 steps);
#  3. 2 pcmoe parties in one process (--simulate: the shared expert pool on the device);
#  4. checkpoints are device-independent: written on cuda at step 5, resumed on cpu (and the other way
#     round), the run ends as the single-device run does.
# And pcmoe over MPI with run.device = cuda, not built yet, is refused with one error line.
. "$(dirname "$0")/lib.sh"
EMU="$top_builddir/tests/pcmoe_emu"
[ -x "$EMU" ] || { fail "$EMU not built (configure --enable-cuda-emulation)"; finish; }

# losses RUN_DIR: "party step loss" for every train_loss and val_loss line
losses() { sed -n 's/.*"step":\([0-9]*\),"party":\([0-9]*\).*"\(train_loss\|val_loss\)":\([-0-9.e+]*\).*/\2 \1 \3 \4/p' "$1/metrics.jsonl"; }
# same A B NAME: the two runs' losses agree to 1e-5 relative, line by line
same() {
    losses "$1" > "$TMP/a"
    losses "$2" > "$TMP/b"
    if [ ! -s "$TMP/a" ] || [ "$(wc -l < "$TMP/a")" -ne "$(wc -l < "$TMP/b")" ]; then
        fail "$3: $(wc -l < "$TMP/a") and $(wc -l < "$TMP/b") loss lines"
        return
    fi
    worst=$(paste "$TMP/a" "$TMP/b" | awk '{ d = $4 - $8; if (d < 0) d = -d; r = d / ($4 < 0 ? -$4 : $4); if (r > w) w = r } END { printf "%.2e", w }')
    if awk -v w="$worst" 'BEGIN { exit !(w <= 1e-5) }'; then ok "$3: $(wc -l < "$TMP/a") losses, worst relative difference $worst"
    else fail "$3: worst relative difference $worst > 1e-5"; fi
}
run1() { # run1 DIR ARGS...: one process
    d=$1
    shift
    OMP_NUM_THREADS=1 timeout 600 "$EMU" train "$@" --set run.dir="$d" --force >"$d.out" 2>&1 || { fail "run $d: $(grep 'pcmoe: error' "$d.out" || tail -n 3 "$d.out")"; return 1; }
}
runmpi() { # runmpi DIR ARGS...: 2 ranks
    d=$1
    shift
    timeout 600 "$MPIRUN" --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$EMU" train "$@" --set run.dir="$d" >"$d.out" 2>&1 || { fail "run $d: $(grep 'pcmoe: error' "$d.out" || tail -n 3 "$d.out")"; return 1; }
}
SHORT="--set train.steps=10 --set train.warmup_steps=2 --set train.eval_every=10 --set train.log_every=1 --set checkpoint.every=0"

# 1. one party
for dev in cpu cuda; do run1 "$TMP/one_$dev" input/tiny.ini $SHORT --set run.device=$dev; done
same "$TMP/one_cpu" "$TMP/one_cuda" "one party, cuda vs cpu"

# 2. two parties under mpirun (fedavg)
tiny_config 2 "$TMP/p2.ini"
for dev in cpu cuda; do runmpi "$TMP/fed_$dev" "$TMP/p2.ini" $SHORT --set parties.mode=fedavg --set fedavg.every=5 --set run.device=$dev; done
same "$TMP/fed_cpu" "$TMP/fed_cuda" "2 ranks, fedavg, cuda vs cpu"

# 3. pcmoe, 2 parties in one process
for dev in cpu cuda; do run1 "$TMP/sim_$dev" "$TMP/p2.ini" $SHORT --simulate --set run.device=$dev; done
same "$TMP/sim_cpu" "$TMP/sim_cuda" "pcmoe --simulate, 2 parties, cuda vs cpu"

# 4. checkpoints across devices: step 5 written on one device, the run finished on the other
CK="--set train.steps=10 --set train.warmup_steps=2 --set train.eval_every=10 --set train.log_every=1 --set checkpoint.every=5"
for pair in "cuda cpu" "cpu cuda"; do
    set -- $pair
    d="$TMP/ck_$1_$2"
    runmpi "$d" "$TMP/p2.ini" $CK --set parties.mode=local --set run.device="$1" --stop-after 5 || continue
    runmpi "$d" "$TMP/p2.ini" $CK --set parties.mode=local --set run.device="$2" --resume || continue
    runmpi "$TMP/ck_ref_$1" "$TMP/p2.ini" $CK --set parties.mode=local --set run.device="$1" || continue
    same "$TMP/ck_ref_$1" "$d" "checkpoint of step 5 written on $1, resumed on $2"
done

# pcmoe over MPI on cuda: refused on every rank, one line
"$MPIRUN" --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$EMU" train "$TMP/p2.ini" --set run.device=cuda --set run.dir="$TMP/refused" >"$TMP/refused.out" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && [ "$(grep -c '^pcmoe: error' "$TMP/refused.out")" -eq 1 ] && grep -q "pcmoe over MPI .* not built yet" "$TMP/refused.out"; then
    ok "pcmoe over MPI with run.device = cuda is refused: $(grep '^pcmoe: error' "$TMP/refused.out")"
else
    fail "pcmoe over MPI with run.device = cuda: exit $rc: $(head -n 5 "$TMP/refused.out")"
fi
finish
