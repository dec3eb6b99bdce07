// sgemm_peak: this machine's single-precision GEMM peak, for benchmarks/cpu_throughput.sh. Square
// products of size n (default 2048), repeated for at least a second, two ways: the BLAS on its own
// threads (openblas_set_num_threads when it has it), and layers_gemm, the way pcmoe calls it (cut across
// the OpenMP team). Prints "blas GFLOPS" and "team GFLOPS" lines; the peak is the larger.
//   usage: sgemm_peak THREADS [N]
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "autoconfig.h" // HAVE_OPENBLAS_SET_NUM_THREADS
#include "blas.h"       // blas_choose_kernels: the kernels pcmoe runs
#include "layers.h"     // layers_gemm
#include "util.h"       // mallocCheck, now_seconds

#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
void openblas_set_num_threads(int num_threads);
#endif

// GFLOP/s of C = A B (n x n) by `how` (0: one BLAS call, 1: layers_gemm), over at least a second
static double rate(int how, int n, const float *a, const float *b, float *c) {
    int reps = 0;
    double t0 = now_seconds(), t = 0.0;
    do {
        if (how == 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        else layers_gemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        reps++;
        t = now_seconds() - t0;
    } while (t < 1.0);
    return 2.0 * n * n * n * reps / t / 1e9;
}

int main(int argc, char **argv) {
    blas_choose_kernels(argv);
    if (argc < 2 || atoi(argv[1]) < 1) { fprintf(stderr, "usage: sgemm_peak THREADS [N]\n"); return 2; }
    int threads = atoi(argv[1]), n = argc > 2 ? atoi(argv[2]) : 2048;
    if (n < 16) { fprintf(stderr, "sgemm_peak: N = %d: must be >= 16\n", n); return 2; }
    float *a = mallocCheck(sizeof(float) * n * n), *b = mallocCheck(sizeof(float) * n * n), *c = mallocCheck(sizeof(float) * n * n);
    for (long i = 0; i < (long)n * n; i++) { a[i] = (float)(i % 7) * 0.1f; b[i] = (float)(i % 5) * 0.1f; }
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    openblas_set_num_threads(threads);
    rate(0, n, a, b, c); // warm-up
    printf("blas %.1f\n", rate(0, n, a, b, c));
    openblas_set_num_threads(1); // as pcmoe runs a pthreads OpenBLAS: the team cuts the product
#else
    rate(0, n, a, b, c);
    printf("blas %.1f\n", rate(0, n, a, b, c));
#endif
    printf("team %.1f\n", rate(1, n, a, b, c));
    free(a); free(b); free(c);
    return 0;
}
