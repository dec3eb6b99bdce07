#!/bin/sh
# test_cuda_emu: the CUDA kernels of cuda/, compiled for the CPU against cuda/emu/, against the CPU
# kernels of src/ (tests/test_cuda_kernels.cpp: every op forward and backward, threads of each block in
# forward then reverse order, broken kernel copies that must fail, device limits, cuBLAS argument
# checks), and the emulator's barrier rule: a kernel whose threads do not all reach __syncthreads()
# must abort, not finish; the grouped GEMMs' fallback where cuBLAS refuses their TF32 compute type. Then
# the misuses a GPU punishes and a plain CPU run hides (test_cuda_kernels.cpp's misuse()): each must show
# as NaN, stop the program with the emulator's message, or be refused. Last, the
# GPU benchmark's GEMM program (benchmarks/gpu_gemm.cu) at small sizes: every way it calls cuBLAS against a
# host product in double, and its check must fail on one spoiled element.
. "$(dirname "$0")/lib.sh"
emu="$top_builddir/tests/test_cuda_kernels_emu"
[ -x "$emu" ] || { fail "$emu not built (configure --enable-cuda-emulation)"; finish; }
"$emu" >"$TMP/out" 2>&1
rc=$?
grep -E '^(ok|FAIL|note)' "$TMP/out"
[ "$rc" -eq 0 ] && grep -q '^PASS' "$TMP/out" && ok "kernel parity (emulated)" || fail "kernel parity: exit $rc: $(tail -n 5 "$TMP/out")"
# a cuBLAS that refuses CUBLAS_COMPUTE_32F_FAST_TF32 for grouped GEMMs: the grouped FFNs fall back to
# cublasSgemmGroupedBatched with the math mode, and every check (TF32 included) still passes
PCMOE_EMU_REFUSE_FAST_TF32=1 "$emu" >"$TMP/refuse" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && grep -q '^PASS' "$TMP/refuse" && grep -q 'refuses CUBLAS_COMPUTE_32F_FAST_TF32' "$TMP/refuse" &&
    grep -q '^ok: grouped FFN forward in TF32' "$TMP/refuse"; then
    ok "FAST_TF32 refused by cuBLAS: the grouped GEMMs fall back to the math mode, still TF32, every check passes"
else fail "FAST_TF32 refused by cuBLAS: exit $rc: $(grep -E 'FAIL|error' "$TMP/refuse" | head -n 3)"; fi
"$emu" divergent >"$TMP/div" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && grep -q "__syncthreads() reached by only some threads" "$TMP/div"; then ok "a divergent __syncthreads() aborts the emulation (exit $rc)"
else fail "divergent __syncthreads(): exit $rc: $(cat "$TMP/div")"; fi

# misuse KIND EXPECT WHAT: the misuse's output (or the emulator's message) matches the extended regex EXPECT
misuse() {
    "$emu" misuse "$1" >"$TMP/$1" 2>&1
    rc=$?
    if grep -Eq "$2" "$TMP/$1"; then ok "$3 (exit $rc)"
    else fail "$3: exit $rc: $(head -n 3 "$TMP/$1")"; fi
}
misuse shared-zero "sum -?nan" "__shared__ assumed to start at zero reads NaN"
misuse pinned-early "before the wait -?nan, after it 7" "a pinned copy read before its wait reads NaN"
misuse event-early "after the event -?nan" "an event recorded before the work does not wait for it"
misuse host-device "the host touched device memory .*cudaMalloc memory is for the device only" \
    "host access to cudaMalloc memory stops the program"
misuse managed-early "after a wait 7.*" "managed memory reads fine after a wait"
misuse managed-early "the host touched managed memory .* a synchronisation is missing" \
    "host access to managed memory before a wait stops the program"
misuse mpi-direct "after a wait MPI reads 7" "device memory handed to MPI after a wait is read"
misuse mpi-direct "device memory handed to MPI with device work still queued: a synchronisation is missing" \
    "device memory handed to MPI with work queued stops the program"
misuse grouped-host "host arrays: status 7; device arrays: C\[0\] = 4" \
    "a grouped GEMM's pointer arrays in host memory are refused (in device memory: C = 4)"

gemm="$top_builddir/benchmarks/gpu_gemm_emu"
"$gemm" --check >"$TMP/gemm" 2>&1
rc=$?
n=$(grep -c ' TFLOP/s  error ' "$TMP/gemm")
if [ "$rc" -eq 0 ] && [ "$n" -eq 9 ] && grep -q '^gpu_gemm: every product checked' "$TMP/gemm"; then
    ok "gpu_gemm --check: $n ways of cuBLAS within tolerance ($(grep '^reference vs host' "$TMP/gemm"))"
else fail "gpu_gemm --check: exit $rc, $n ways measured: $(cat "$TMP/gemm")"; fi
# the emulation rounds to TF32 where cuBLAS may: each *_tf32 way differs from the exact product by more than
# fp32's rounding (the compute type of cublasGemmGroupedBatchedEx reached the emulator), each *_fp32 way not
wrong=$(awk '$3 == "TFLOP/s" && (($1 ~ /_tf32$/ && $5 < 1e-5) || ($1 ~ /_fp32$/ && $5 > 1e-6)) { print $1 }' "$TMP/gemm")
[ -z "$wrong" ] && ok "gpu_gemm --check: the TF32 ways round (error about 3e-4), the fp32 ways do not" \
    || fail "gpu_gemm --check: precision not as asked for: $wrong"
"$gemm" --check bad >"$TMP/gemm-bad" 2>&1
rc=$?
if [ "$rc" -eq 1 ] && grep -q '^reference vs host: .* FAIL' "$TMP/gemm-bad"; then
    ok "gpu_gemm --check bad: a spoiled element fails the check (exit 1)"
else fail "gpu_gemm --check bad: exit $rc: $(cat "$TMP/gemm-bad")"; fi
finish
