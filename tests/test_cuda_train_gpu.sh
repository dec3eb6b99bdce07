#!/bin/sh
# test_cuda_train_gpu: on a machine with a GPU, tests/test_cuda_train.sh's comparisons (cuda against cpu
# every step, one party, fedavg, --simulate, pcmoe over MPI staged and direct with the same audited
# traffic, device memory, checkpoints across devices, TF32) with the real pcmoe on the device instead of
# the emulated backend. Without a CUDA build or a device it skips (exit 77) with a message.
. "$(dirname "$0")/lib.sh"
"$PCMOE" train "$top_srcdir/input/tiny.ini" --set run.device=cuda --set train.steps=1 --set train.warmup_steps=0 \
    --set train.eval_every=0 --set checkpoint.every=0 --set run.dir="$TMP/probe" >"$TMP/probe.out" 2>&1 ||
    { echo "SKIP: $PCMOE cannot train on cuda here: $(grep '^pcmoe: error' "$TMP/probe.out" || tail -n 1 "$TMP/probe.out")"; exit 77; }
CUDA_PCMOE="$PCMOE" exec sh "$(dirname "$0")/test_cuda_train.sh"
