// blas.h: the CPU BLAS's choice of kernels.
#ifndef PCMOE_BLAS_H
#define PCMOE_BLAS_H

// OpenBLAS picks its kernels for the CPU when it loads. Releases that do not know a newer CPU fall back to
// their oldest x86-64 kernels (Debian 12's 0.3.21 on Sapphire Rapids Xeons: "Prescott", SSE3, 5x slower
// here than its AVX-512 ones). When that happened, the CPU has AVX-512 (or AVX2 and FMA), and the user has
// not chosen with OPENBLAS_CORETYPE, this sets OPENBLAS_CORETYPE to the kernels the CPU can run
// (SkylakeX, or Haswell) and runs the program again (execv of its own path with argv), before MPI starts.
// Otherwise, and when anything fails, it returns and the program goes on as it is.
void blas_choose_kernels(char **argv);

#endif
