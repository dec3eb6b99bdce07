// swiglu.cu: the SwiGLU gate a = silu(h) * u, elementwise, and the SwiGLU FFN built on it (the dense
// layers' FFN and every expert): the composition of src/layers.c's ffn_forward / ffn_backward. Many
// experts' FFNs at once go through cuBLAS grouped GEMMs: one call per product for all of them.
#include "kernels.h"

#include <vector>

__device__ __forceinline__ float swiglu_value(float h, float u) {
    float sig = 1.0f / (1.0f + expf(-h));
    return h * sig * u;
}
// (dh, du) from da
__device__ __forceinline__ void swiglu_grads(float *dh, float *du, float da, float h, float u) {
    float sig = 1.0f / (1.0f + expf(-h));
    *du = da * h * sig;
    *dh = da * u * sig * (1.0f + h * (1.0f - sig));
}

__global__ void swiglu_forward_kernel(float *a, const float *h, const float *u, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = swiglu_value(h[i], u[i]);
}

__global__ void swiglu_backward_kernel(float *dh, float *du, const float *da, const float *h, const float *u, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) swiglu_grads(&dh[i], &du[i], da[i], h[i], u[i]);
}

void cu_swiglu_forward(float *a, const float *h, const float *u, long n, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH(swiglu_forward_kernel, ceil_div(n, 256), 256, 0, stream, a, h, u, n);
    cudaCheck(cudaGetLastError());
}

void cu_swiglu_backward(float *dh, float *du, const float *da, const float *h, const float *u, long n,
                        cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH(swiglu_backward_kernel, ceil_div(n, 256), 256, 0, stream, dh, du, da, h, u, n);
    cudaCheck(cudaGetLastError());
}

// The products, in cuBLAS's column-major terms (a row-major (r, c) matrix is column-major (c, r)):
//   h^T (f, N) = Wg (f, d) x^T,  y^T (d, N) = Wd a^T;  da^T (f, N) = Wd^T dy^T,  dWd^T (f, d) += a^T dy,
//   dx^T (d, N) = Wg^T dh^T + Wu^T du^T,  dWg^T (d, f) += x^T dh (dWu the same with du).
void cu_ffn_forward(cublasHandle_t blas, float *y, float *h, float *u, float *a, const float *x, const float *wg,
                    const float *wu, const float *wd, int N, int d, int f, cudaStream_t stream) {
    cu_matmul_forward(blas, h, x, wg, N, d, f);
    cu_matmul_forward(blas, u, x, wu, N, d, f);
    cu_swiglu_forward(a, h, u, (long)N * f, stream);
    cu_matmul_forward(blas, y, a, wd, N, f, d);
}

void cu_ffn_backward(cublasHandle_t blas, float *dx, float *dwg, float *dwu, float *dwd, float *dh, float *du,
                     float *da, const float *dy, const float *x, const float *h, const float *u, const float *a,
                     const float *wg, const float *wu, const float *wd, int N, int d, int f, cudaStream_t stream) {
    const float one = 1.0f, zero = 0.0f;
    // (dWd first: da may be a)
    cublasCheck(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, f, d, N, &one, a, f, dy, d, &one, dwd, f));
    cublasCheck(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, f, N, d, &one, wd, f, dy, d, &zero, da, f));
    cu_swiglu_backward(dh, du, da, h, u, (long)N * f, stream);
    // (dy is no longer read: dx may be dy)
    cublasCheck(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, N, f, &one, wg, d, dh, f, &zero, dx, d));
    cublasCheck(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, N, f, &one, wu, d, du, f, &one, dx, d));
    cublasCheck(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, d, f, N, &one, x, d, dh, f, &one, dwg, d));
    cublasCheck(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, d, f, N, &one, x, d, du, f, &one, dwu, d));
}

// ---------------------------------------------------------------------------------- many FFNs at once
// The device table: sections of n pointers each (one per group), in this order, so that the pairs a call
// reads as one array of 2 n (gate and up together) are adjacent; then the n groups' row counts.
enum {
    FFN_WG, FFN_WU, FFN_X, FFN_X2, FFN_H, FFN_U, FFN_DH, FFN_DU, FFN_DWG, FFN_DWU,
    FFN_WD, FFN_A, FFN_Y, FFN_DY, FFN_DA, FFN_DX, FFN_DWD, FFN_SECTIONS
};

size_t cu_ffn_table_bytes(int n) { return sizeof(float *) * FFN_SECTIONS * n + sizeof(int) * n; }

// host: the table of groups g (n) into t.host, then queued to t.dev
static void ffn_table_send(CuTable t, const FfnGroup *g, int n, cudaStream_t stream) {
    float **p = static_cast<float **>(t.host);
    for (int i = 0; i < n; i++) {
        float *v[FFN_SECTIONS] = {
            const_cast<float *>(g[i].wg), const_cast<float *>(g[i].wu), const_cast<float *>(g[i].x),
            const_cast<float *>(g[i].x),  g[i].h,   g[i].u,   g[i].dh,  g[i].du,  g[i].dwg, g[i].dwu,
            const_cast<float *>(g[i].wd), g[i].a,   g[i].y,   const_cast<float *>(g[i].dy), g[i].da, g[i].dx,
            g[i].dwd};
        for (int s = 0; s < FFN_SECTIONS; s++) p[(long)s * n + i] = v[s];
    }
    int *rows = reinterpret_cast<int *>(p + (long)FFN_SECTIONS * n);
    for (int i = 0; i < n; i++) rows[i] = g[i].rows;
    cudaCheck(cudaMemcpyAsync(t.dev, t.host, cu_ffn_table_bytes(n), cudaMemcpyHostToDevice, stream));
}

// the device table's section s (n pointers; a pair of sections from s on is one array of 2 n)
static float *const *section(CuTable t, int s, int n) { return static_cast<float *const *>(t.dev) + (long)s * n; }

// One grouped call over copies * n problems (copies 1 or 2: gate and up side by side), problem c n + i with
// group i's rows as the n dimension (rows_in_k = 0) or as the k dimension (1), the other two fixed (m, other).
// The row counts go in host arrays, the matrices in the device table's sections A, B, C. Through
// cublasGemmGroupedBatchedEx with the handle's compute type; where that cuBLAS refuses the type, the same call
// through cublasSgemmGroupedBatched (the math mode then decides).
static void grouped(cublasHandle_t blas, cublasOperation_t ta, cublasOperation_t tb, int m, int other, int rows_in_k,
                    const FfnGroup *g, int n, int copies, CuTable t, int A, int lda, int B, int ldb, float beta,
                    int C, int ldc) {
    int count = copies * n;
    std::vector<cublasOperation_t> tas(count, ta), tbs(count, tb);
    std::vector<int> ms(count, m), ns(count), ks(count), ldas(count, lda), ldbs(count, ldb), ldcs(count, ldc);
    std::vector<int> sizes(count, 1);
    std::vector<float> alphas(count, 1.0f), betas(count, beta);
    for (int i = 0; i < count; i++) {
        ns[i] = rows_in_k ? other : g[i % n].rows;
        ks[i] = rows_in_k ? g[i % n].rows : other;
    }
    const float *const *a = section(t, A, n), *const *b = section(t, B, n);
    float *const *c = section(t, C, n);
    cublasStatus_t rc = cublasGemmGroupedBatchedEx(
        blas, tas.data(), tbs.data(), ms.data(), ns.data(), ks.data(), alphas.data(),
        reinterpret_cast<const void *const *>(a), CUDA_R_32F, ldas.data(), reinterpret_cast<const void *const *>(b),
        CUDA_R_32F, ldbs.data(), betas.data(), reinterpret_cast<void *const *>(c), CUDA_R_32F, ldcs.data(), count,
        sizes.data(), cublas_compute_type(blas));
    if (rc == CUBLAS_STATUS_NOT_SUPPORTED)
        rc = cublasSgemmGroupedBatched(blas, tas.data(), tbs.data(), ms.data(), ns.data(), ks.data(), alphas.data(), a,
                                       ldas.data(), b, ldbs.data(), betas.data(), c, ldcs.data(), count, sizes.data());
    cublas_check(rc, "cublasGemmGroupedBatchedEx (or cublasSgemmGroupedBatched)", __FILE__, __LINE__);
}

static int most_rows(const FfnGroup *g, int n) {
    int most = 0;
    for (int i = 0; i < n; i++) most = g[i].rows > most ? g[i].rows : most;
    return most;
}

// block (x, i): group i's elements x, x + gridDim.x * blockDim.x, .. of its (rows, f) h, u -> a
__global__ void swiglu_groups_forward_kernel(float *const *table, int n, int f) {
    int i = blockIdx.y;
    const int *rows = reinterpret_cast<const int *>(table + (long)FFN_SECTIONS * n);
    const float *h = table[FFN_H * n + i], *u = table[FFN_U * n + i];
    float *a = table[FFN_A * n + i];
    for (long j = (long)blockIdx.x * blockDim.x + threadIdx.x; j < (long)rows[i] * f; j += (long)gridDim.x * blockDim.x)
        a[j] = swiglu_value(h[j], u[j]);
}
__global__ void swiglu_groups_backward_kernel(float *const *table, int n, int f) {
    int i = blockIdx.y;
    const int *rows = reinterpret_cast<const int *>(table + (long)FFN_SECTIONS * n);
    const float *h = table[FFN_H * n + i], *u = table[FFN_U * n + i], *da = table[FFN_DA * n + i];
    float *dh = table[FFN_DH * n + i], *du = table[FFN_DU * n + i];
    for (long j = (long)blockIdx.x * blockDim.x + threadIdx.x; j < (long)rows[i] * f; j += (long)gridDim.x * blockDim.x)
        swiglu_grads(&dh[j], &du[j], da[j], h[j], u[j]);
}

static dim3 groups_grid(const FfnGroup *g, int n, int f) {
    long most = (long)most_rows(g, n) * f;
    int x = ceil_div(most, 256);
    return dim3(x < 1024 ? x : 1024, n);
}

void cu_ffn_groups_forward(cublasHandle_t blas, const FfnGroup *g, int n, CuTable t, int d, int f,
                           cudaStream_t stream) {
    if (n == 0) return;
    if (n > 65535) fail("CUDA grouped FFN: %d groups, at most 65535", n);
    ffn_table_send(t, g, n, stream);
    // h and u together: [h | u]^T = [Wg | Wu] x^T
    grouped(blas, CUBLAS_OP_T, CUBLAS_OP_N, f, d, 0, g, n, 2, t, FFN_WG, d, FFN_X, d, 0.0f, FFN_H, f);
    LAUNCH(swiglu_groups_forward_kernel, groups_grid(g, n, f), 256, 0, stream, section(t, 0, n), n, f);
    cudaCheck(cudaGetLastError());
    grouped(blas, CUBLAS_OP_T, CUBLAS_OP_N, d, f, 0, g, n, 1, t, FFN_WD, f, FFN_A, f, 0.0f, FFN_Y, d);
}

void cu_ffn_groups_backward(cublasHandle_t blas, const FfnGroup *g, int n, CuTable t, int d, int f,
                            cudaStream_t stream) {
    if (n == 0) return;
    if (n > 65535) fail("CUDA grouped FFN: %d groups, at most 65535", n);
    ffn_table_send(t, g, n, stream);
    // (dWd first: da may be a)
    grouped(blas, CUBLAS_OP_N, CUBLAS_OP_T, f, d, 1, g, n, 1, t, FFN_A, f, FFN_DY, d, 1.0f, FFN_DWD, f);
    grouped(blas, CUBLAS_OP_N, CUBLAS_OP_N, f, d, 0, g, n, 1, t, FFN_WD, f, FFN_DY, d, 0.0f, FFN_DA, f);
    LAUNCH(swiglu_groups_backward_kernel, groups_grid(g, n, f), 256, 0, stream, section(t, 0, n), n, f);
    cudaCheck(cudaGetLastError());
    // (dy is no longer read: dx may be dy)
    grouped(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, f, 0, g, n, 1, t, FFN_WG, d, FFN_DH, f, 0.0f, FFN_DX, d);
    grouped(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, f, 0, g, n, 1, t, FFN_WU, d, FFN_DU, f, 1.0f, FFN_DX, d);
    // dWg and dWu together: [dWg | dWu]^T += x^T [dh | du]
    grouped(blas, CUBLAS_OP_N, CUBLAS_OP_T, d, f, 1, g, n, 2, t, FFN_X, d, FFN_DH, f, 1.0f, FFN_DWG, d);
}
