// cublas_emu.cpp: cuBLAS GEMMs on the CPU through CBLAS (column-major, as cuBLAS).
#include "cublas_emu.h"

#include <cblas.h>
#include <cstdint> // uint32_t
#include <cstdio>  // fprintf
#include <cstdlib> // malloc, free, getenv
#include <cstring> // memcpy
#include <vector>

struct EmuCublas {
    cudaStream_t stream;
    cublasMath_t math;
};

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    *handle = static_cast<cublasHandle_t>(std::malloc(sizeof(EmuCublas)));
    if (!*handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    (*handle)->stream = nullptr;
    (*handle)->math = CUBLAS_DEFAULT_MATH;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) { std::free(handle); return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_DEFAULT_MATH && mode != CUBLAS_PEDANTIC_MATH && mode != CUBLAS_TF32_TENSOR_OP_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    *mode = handle->math;
    return CUBLAS_STATUS_SUCCESS;
}

static int max1(int a) { return a > 1 ? a : 1; }

// fp32 -> TF32 (1 sign, 8 exponent, 10 mantissa bits), round to nearest; NaN and Inf unchanged
static float to_tf32(float x) {
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & ~0x1fffu;
    std::memcpy(&x, &u, sizeof u);
    return x;
}

// a TF32-rounded copy of the rows x cols column-major matrix M (leading dimension ld)
static const float *tf32_copy(std::vector<float> &buf, const float *M, int rows, int ld, int cols) {
    buf.resize((size_t)ld * (cols - 1) + rows); // no further: the last column ends there
    for (size_t i = 0; i < buf.size(); i++) buf[i] = to_tf32(M[i]);
    return buf.data();
}

// C = alpha op(A) op(B) + beta C, now (from the queue); the arguments were checked when it was queued
static void sgemm_run(cublasMath_t math, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                      float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (beta == 0.0f) // C is output only: overwrite, never read
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) C[(size_t)j * ldc + i] = 0.0f;
    std::vector<float> a32, b32;
    if (math == CUBLAS_TF32_TENSOR_OP_MATH && k > 0) {
        A = tf32_copy(a32, A, transa == CUBLAS_OP_N ? m : k, lda, transa == CUBLAS_OP_N ? k : m);
        B = tf32_copy(b32, B, transb == CUBLAS_OP_N ? k : n, ldb, transb == CUBLAS_OP_N ? n : k);
    }
    cblas_sgemm(CblasColMajor, transa == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                transb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

static cublasStatus_t sgemm_check(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                  int n, int k, const float *alpha, int lda, int ldb, const float *beta, int ldc) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) || (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T) ||
        m < 0 || n < 0 || k < 0 || lda < max1(transa == CUBLAS_OP_N ? m : k) ||
        ldb < max1(transb == CUBLAS_OP_N ? k : n) || ldc < max1(m) || !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

// Checked now, queued on the handle's stream (alpha and beta are read now: host pointer mode).
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc) {
    cublasStatus_t st = sgemm_check(handle, transa, transb, m, n, k, alpha, lda, ldb, beta, ldc);
    if (st != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0) return st;
    cublasMath_t math = handle->math;
    float al = *alpha, be = *beta;
    emu_enqueue(handle->stream, [=]() { sgemm_run(math, transa, transb, m, n, k, al, A, lda, B, ldb, be, C, ldc); }, 1);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float *alpha, const float *A, int lda,
                                         long long strideA, const float *B, int ldb, long long strideB,
                                         const float *beta, float *C, int ldc, long long strideC, int batch) {
    cublasStatus_t st = sgemm_check(handle, transa, transb, m, n, k, alpha, lda, ldb, beta, ldc);
    if (st == CUBLAS_STATUS_SUCCESS && batch < 0) st = CUBLAS_STATUS_INVALID_VALUE;
    if (st != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0 || batch == 0) return st;
    cublasMath_t math = handle->math;
    float al = *alpha, be = *beta;
    emu_enqueue(handle->stream, [=]() {
        for (int b = 0; b < batch; b++)
            sgemm_run(math, transa, transb, m, n, k, al, A + b * strideA, lda, B + b * strideB, ldb, be,
                      C + b * strideC, ldc);
    }, 1);
    return CUBLAS_STATUS_SUCCESS;
}

namespace {
struct GemmGroup { // one group's shape, copied at the call
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc, size;
    float alpha, beta;
};
} // namespace

// the grouped call of either name, in math mode `math`
static cublasStatus_t grouped_run(cublasHandle_t handle, cublasMath_t math, const cublasOperation_t transa_array[],
                                  const cublasOperation_t transb_array[], const int m_array[], const int n_array[],
                                  const int k_array[], const float alpha_array[], const float *const Aarray[],
                                  const int lda_array[], const float *const Barray[], const int ldb_array[],
                                  const float beta_array[], float *const Carray[], const int ldc_array[],
                                  int group_count, const int group_size[]) {
    if (group_count < 0) return CUBLAS_STATUS_INVALID_VALUE;
    std::vector<GemmGroup> groups((size_t)group_count);
    size_t problems = 0;
    for (int i = 0; i < group_count; i++) {
        GemmGroup g = {transa_array[i], transb_array[i], m_array[i], n_array[i], k_array[i], lda_array[i],
                       ldb_array[i], ldc_array[i], group_size[i], alpha_array[i], beta_array[i]};
        cublasStatus_t st = sgemm_check(handle, g.ta, g.tb, g.m, g.n, g.k, &alpha_array[i], g.lda, g.ldb,
                                        &beta_array[i], g.ldc);
        if (st != CUBLAS_STATUS_SUCCESS || g.size < 0) return CUBLAS_STATUS_INVALID_VALUE;
        groups[i] = g;
        problems += (size_t)g.size;
    }
    if (problems == 0) return CUBLAS_STATUS_SUCCESS;
    size_t bytes = sizeof(float *) * problems;
    if (!emu_is_device(Aarray, bytes) || !emu_is_device(Barray, bytes) || !emu_is_device(Carray, bytes))
        return CUBLAS_STATUS_INVALID_VALUE;
    emu_enqueue(handle->stream, [=]() {
        size_t p = 0;
        for (const GemmGroup &g : groups)
            for (int j = 0; j < g.size; j++, p++)
                if (g.m > 0 && g.n > 0)
                    sgemm_run(math, g.ta, g.tb, g.m, g.n, g.k, g.alpha, Aarray[p], g.lda, Barray[p], g.ldb, g.beta,
                              Carray[p], g.ldc);
    }, 1);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmGroupedBatched(cublasHandle_t handle, const cublasOperation_t transa_array[],
                                         const cublasOperation_t transb_array[], const int m_array[],
                                         const int n_array[], const int k_array[], const float alpha_array[],
                                         const float *const Aarray[], const int lda_array[],
                                         const float *const Barray[], const int ldb_array[],
                                         const float beta_array[], float *const Carray[], const int ldc_array[],
                                         int group_count, const int group_size[]) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    return grouped_run(handle, handle->math, transa_array, transb_array, m_array, n_array, k_array, alpha_array,
                       Aarray, lda_array, Barray, ldb_array, beta_array, Carray, ldc_array, group_count, group_size);
}

cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t handle, const cublasOperation_t transa_array[],
                                          const cublasOperation_t transb_array[], const int m_array[],
                                          const int n_array[], const int k_array[], const void *alpha_array,
                                          const void *const Aarray[], cudaDataType_t Atype, const int lda_array[],
                                          const void *const Barray[], cudaDataType_t Btype, const int ldb_array[],
                                          const void *beta_array, void *const Carray[], cudaDataType_t Ctype,
                                          const int ldc_array[], int group_count, const int group_size[],
                                          cublasComputeType_t computeType) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (Atype != CUDA_R_32F || Btype != CUDA_R_32F || Ctype != CUDA_R_32F ||
        (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_FAST_TF32))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    static const char *refuse = std::getenv("PCMOE_EMU_REFUSE_FAST_TF32");
    static bool said = false;
    if (computeType == CUBLAS_COMPUTE_32F_FAST_TF32 && refuse && *refuse == '1') {
        if (!said) std::fprintf(stderr, "cuBLAS emulation: cublasGemmGroupedBatchedEx refuses "
                                        "CUBLAS_COMPUTE_32F_FAST_TF32 (PCMOE_EMU_REFUSE_FAST_TF32=1)\n");
        said = true;
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    cublasMath_t math = computeType == CUBLAS_COMPUTE_32F_FAST_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : handle->math;
    return grouped_run(handle, math, transa_array, transb_array, m_array, n_array, k_array,
                       static_cast<const float *>(alpha_array), reinterpret_cast<const float *const *>(Aarray),
                       lda_array, reinterpret_cast<const float *const *>(Barray), ldb_array,
                       static_cast<const float *>(beta_array), reinterpret_cast<float *const *>(Carray), ldc_array,
                       group_count, group_size);
}
