#!/bin/sh
# test_cuda_sanitizer: on a machine with a GPU, the device kernel tests (tests/test_cuda_kernels_gpu)
# under compute-sanitizer: memcheck (out-of-bounds and misaligned accesses, leaks), racecheck
# (shared-memory hazards), synccheck (barriers misused) and initcheck (device memory read before it is
# written), each with --error-exitcode so any report fails the test. Without a GPU, the
# device build or compute-sanitizer it skips (exit 77) with a message.
. "$(dirname "$0")/lib.sh"
gpu_test="$top_builddir/tests/test_cuda_kernels_gpu"
[ -x "$gpu_test" ] || { echo "SKIP: not built with CUDA (configure found no nvcc/cuBLAS)"; exit 77; }
"$gpu_test" >"$TMP/probe" 2>&1
[ $? -eq 77 ] && { echo "SKIP: no CUDA device here: $(head -n 1 "$TMP/probe")"; exit 77; }
cs=$(command -v compute-sanitizer || true)
for d in ${CUDA_HOME:-} /usr/local/cuda; do
    [ -z "$cs" ] && [ -n "$d" ] && [ -x "$d/compute-sanitizer/compute-sanitizer" ] && cs="$d/compute-sanitizer/compute-sanitizer"
done
[ -n "$cs" ] || { echo "SKIP: a GPU is present but compute-sanitizer is not installed"; exit 77; }
for tool in memcheck racecheck synccheck initcheck; do
    leak=""
    [ "$tool" = memcheck ] && leak="--leak-check full"
    # shellcheck disable=SC2086
    if "$cs" --tool "$tool" --error-exitcode 1 $leak "$gpu_test" >"$TMP/$tool.out" 2>&1; then
        ok "compute-sanitizer --tool $tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$TMP/$tool.out" | head -n 1)"
    else
        fail "compute-sanitizer --tool $tool: $(grep -E 'ERROR|Invalid|Race|Uninitialized|Barrier|FAIL' "$TMP/$tool.out" | head -n 10)"
        echo "--- the first 80 lines of its report (the kernel, the access, the thread and the call stack):"
        head -n 80 "$TMP/$tool.out"
    fi
done
finish
