// backend_cpu.c: the CPU backend: host memory and the functions of layers.c, moe.c and optim.c.
#include "backend.h"

#include <stdlib.h> // free, realloc
#include <string.h> // memset, memcpy

#ifdef _OPENMP
#include <omp.h>    // omp_get_max_threads
#endif

#include "layers.h" // the dense ops
#include "privacy.h" // privacy_first_nonfinite
#include "util.h"   // callocCheck, fail

static void *cpu_alloc(size_t bytes) { return callocCheck(bytes ? bytes : 1, 1); }
static void *cpu_resize(void *p, size_t old_bytes, size_t bytes) {
    (void)old_bytes;
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) fail("out of memory (%zu bytes)", bytes);
    return q;
}
static void cpu_sync(void) {}
static void cpu_mpi_access(int open) { (void)open; }
static void cpu_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static size_t cpu_peak(void) { return 0; } // host memory: the process's peak RSS says it
static void cpu_batch(const Token *tokens, const Token *targets, int N) { (void)tokens; (void)targets; (void)N; }
static void cpu_crossentropy(float *probs, float *losses, const Token *targets, int N, int V) {
    crossentropy_forward(probs, losses, targets, N, V);
}
static void cpu_sum_squares(double *out, const float *const *arrays, const size_t *lengths, int count) {
    for (int i = 0; i < count; i++) out[i] = optim_sum_squares(arrays[i], lengths[i]);
}
static size_t cpu_att_saved(int B, int T, int H) { return (size_t)B * H * T; }
static size_t cpu_att_work(int T) {
#ifdef _OPENMP
    return attention_work_floats(T, omp_get_max_threads());
#else
    return attention_work_floats(T, 1);
#endif
}

const Backend backend_cpu = {
    .name = "cpu",
    .device = 0,
    .mpi_reads_device = 1,
    .release = free,
    .alloc_device = cpu_alloc,
    .resize = cpu_resize,
    .alloc_pinned = cpu_alloc,
    .release_pinned = free,
    .sync = cpu_sync,
    .mpi_access = cpu_mpi_access,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .peak_bytes = cpu_peak,
    .batch = cpu_batch,
    .residual_forward = residual_forward,
    .embedding_forward = embedding_forward,
    .embedding_backward = embedding_backward,
    .rmsnorm_forward = rmsnorm_forward,
    .rmsnorm_backward = rmsnorm_backward,
    .matmul_forward = matmul_forward,
    .matmul_backward = matmul_backward,
    .rope_forward = rope_forward,
    .rope_backward = rope_backward,
    .qknorm_forward = qknorm_forward,
    .qknorm_backward = qknorm_backward,
    .attention_saved_floats = cpu_att_saved,
    .attention_work_floats = cpu_att_work,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .crossentropy_forward = cpu_crossentropy,
    .crossentropy_backward = crossentropy_backward,
    .crossentropy_fused = crossentropy_fused,
    .ffn_forward = ffn_forward,
    .ffn_backward = ffn_backward,
    .ffn_forward_groups = ffn_forward_groups,
    .ffn_backward_groups = ffn_backward_groups,
    .moe_route = moe_route,
    .moe_experts_forward = moe_experts_forward,
    .moe_combine = moe_combine,
    .moe_combine_backward = moe_combine_backward,
    .moe_experts_backward = moe_experts_backward,
    .moe_route_backward = moe_route_backward,
    .first_nonfinite = privacy_first_nonfinite,
    .sum_squares = cpu_sum_squares,
    .adamw = optim_adamw,
};
