#!/bin/sh
# Checkpoint checksum cost (docs/checkpoints.md, "Checksums"): at the demo shape (input/demo.ini), the
# medium shape (d_model 256, 4 MoE layers of 8 experts, expert_ff 512) and a wide one whose tensors span
# several 1 MiB chunks (d_model 512, 2 MoE layers of 4 experts, expert_ff 2048: 4 MiB each), one party file holding the whole
# model and its AdamW moments is written (ckpt_save: BLAKE2b-256 of every dataset, write, fsync, rename),
# loaded (ckpt_load: every dataset read and verified) and verified whole once more (ckpt_verify, what
# `pcmoe info` adds), REPEATS times each (median); beside them, BLAKE2b alone over the same bytes on one
# thread: the work the checksums add to a write and to a read, and its share of each.
# usage: benchmarks/checkpoint.sh [REPEATS]   (default 5; writes runs/checkpoint/, BENCH_OUT=DIR: DIR/checkpoint/)
set -eu
. "$(dirname "$0")/common.sh"
repeats=${1:-5}
out=${BENCH_OUT:-runs}/checkpoint
mkdir -p "$out"
cost=${CKPT_COST:-benchmarks/ckpt_cost} # (the build tree's, CKPT_COST=PATH in a VPATH build)
[ -x "$cost" ] || { echo "$cost: not built: run make" >&2; exit 2; }
bench_config "$out/medium.ini" 1 256 4 4 128 8 512 16 10
bench_config "$out/wide.ini" 1 512 2 4 128 4 2048 16 10
cp input/demo.ini "$out/demo.ini"
printf '%-8s %9s %9s %9s %9s %9s %11s %10s %10s\n' shape MB write_s read_s verify_s blake2b_s "hash GB/s" "of write" "of read"
for shape in demo medium wide; do
    line=$("$cost" "$out/$shape.ini" "$out" "$repeats") || { echo "benchmark: failed: $cost $out/$shape.ini" >&2; exit 1; }
    echo "$line" | awk -v s="$shape" '{ printf "%-8s %9.1f %9.4f %9.4f %9.4f %9.4f %11.2f %9.0f%% %9.0f%%\n",
        s, $1 / 1e6, $2, $3, $4, $5, $1 / $5 / 1e9, 100 * $5 / $2, 100 * $5 / $3 }'
    rm -f "$out/party_0.h5"
done
echo "(of write, of read: one thread's BLAKE2b time as a share of the whole write, the whole verified load; the"
echo " file is read back from the page cache, so the read share is an upper bound for a read from disk. pcmoe"
echo " hashes a dataset's 1 MiB chunks in parallel: past 100% where the tensors span several chunks)"
