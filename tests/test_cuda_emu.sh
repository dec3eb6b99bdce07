#!/bin/sh
# test_cuda_emu: the CUDA kernels of cuda/, compiled for the CPU against cuda/emu/, against the CPU
# kernels of src/ (tests/test_cuda_kernels.cpp: every op forward and backward, threads of each block in
# forward then reverse order, broken kernel copies that must fail, device limits, cuBLAS argument
# checks), and the emulator's barrier rule: a kernel whose threads do not all reach __syncthreads()
# must abort, not finish.
. "$(dirname "$0")/lib.sh"
emu="$top_builddir/tests/test_cuda_kernels_emu"
[ -x "$emu" ] || { fail "$emu not built (configure --enable-cuda-emulation)"; finish; }
"$emu" >"$TMP/out" 2>&1
rc=$?
grep -E '^(ok|FAIL|note)' "$TMP/out"
[ "$rc" -eq 0 ] && grep -q '^PASS' "$TMP/out" && ok "kernel parity (emulated)" || fail "kernel parity: exit $rc: $(tail -n 5 "$TMP/out")"
"$emu" divergent >"$TMP/div" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && grep -q "__syncthreads() reached by only some threads" "$TMP/div"; then ok "a divergent __syncthreads() aborts the emulation (exit $rc)"
else fail "divergent __syncthreads(): exit $rc: $(cat "$TMP/div")"; fi
finish
