// blas.c: the CPU BLAS's choice of kernels (see blas.h).
#define _DEFAULT_SOURCE // setenv
#include "blas.h"

#include <limits.h>  // PATH_MAX
#include <stdlib.h>  // getenv, setenv
#include <strings.h> // strcasecmp
#include <unistd.h>  // execv, readlink

#include "autoconfig.h" // HAVE_OPENBLAS_GET_CORENAME

#ifdef HAVE_OPENBLAS_GET_CORENAME
char *openblas_get_corename(void);

// The OpenBLAS kernels this CPU runs best of those its dynamic builds carry, or NULL.
static const char *cpu_kernels(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}
#endif

void blas_choose_kernels(char **argv) {
#ifdef HAVE_OPENBLAS_GET_CORENAME
    if (getenv("OPENBLAS_CORETYPE")) return; // the user's choice (and the second run's)
    const char *core = openblas_get_corename(), *want = cpu_kernels();
    if (!core || !want || strcasecmp(core, "Prescott")) return;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1); // (its own path: the process keeps its name)
    if (n <= 0 || setenv("OPENBLAS_CORETYPE", want, 1) != 0) return;
    exe[n] = '\0';
    execv(exe, argv); // (returns only when it fails: go on with the kernels loaded)
#else
    (void)argv;
#endif
}
