// cublas_emu.h: the cuBLAS calls pcmoe makes, on the CPU through CBLAS, with cuBLAS's column-major
// meaning and its documented argument checks (cuBLAS library guide, cublas<t>gemm): m, n, k >= 0;
// lda >= max(1, m) when transa is N, else >= max(1, k); ldb >= max(1, k) when transb is N, else
// >= max(1, n); ldc >= max(1, m). When beta == 0, C is not read (it may hold NaN). With
// CUBLAS_TF32_TENSOR_OP_MATH, A and B are rounded to TF32 (10 mantissa bits, round to nearest) before
// the fp32 product, as tensor cores read them: a result that changes with the mode is seen here too.
#ifndef PCMOE_CUBLAS_EMU_H
#define PCMOE_CUBLAS_EMU_H

#include "cuda_emu.h" // cudaStream_t

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_PEDANTIC_MATH = 2, CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;
typedef enum { CUDA_R_32F = 0 } cudaDataType_t; // (the one type emulated)
typedef enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 } cublasComputeType_t;
typedef struct EmuCublas *cublasHandle_t;

cublasStatus_t cublasCreate(cublasHandle_t *handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode);
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc);
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float *alpha, const float *A, int lda,
                                         long long strideA, const float *B, int ldb, long long strideB,
                                         const float *beta, float *C, int ldc, long long strideC, int batch);
// Group i: group_size[i] problems with its own transa, m, n, k, alpha, lda, ldb, beta, ldc (host arrays of
// group_count, read now); the problems' matrices from Aarray, Barray, Carray, DEVICE arrays of pointers (one per
// problem, groups one after the other), read when the work runs: a host array is refused (INVALID_VALUE).
cublasStatus_t cublasSgemmGroupedBatched(cublasHandle_t handle, const cublasOperation_t transa_array[],
                                         const cublasOperation_t transb_array[], const int m_array[],
                                         const int n_array[], const int k_array[], const float alpha_array[],
                                         const float *const Aarray[], const int lda_array[],
                                         const float *const Barray[], const int ldb_array[],
                                         const float beta_array[], float *const Carray[], const int ldc_array[],
                                         int group_count, const int group_size[]);
// The same with the types named: fp32 only (A, B and C CUDA_R_32F, else NOT_SUPPORTED); CUBLAS_COMPUTE_32F follows
// the handle's math mode as cublasSgemmGroupedBatched does, CUBLAS_COMPUTE_32F_FAST_TF32 rounds to TF32 whatever it.
// PCMOE_EMU_REFUSE_FAST_TF32=1 makes it refuse CUBLAS_COMPUTE_32F_FAST_TF32 (NOT_SUPPORTED, and a note on stderr
// the first time), as a cuBLAS without that kernel would: tests reach the callers' fallback that way.
cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t handle, const cublasOperation_t transa_array[],
                                          const cublasOperation_t transb_array[], const int m_array[],
                                          const int n_array[], const int k_array[], const void *alpha_array,
                                          const void *const Aarray[], cudaDataType_t Atype, const int lda_array[],
                                          const void *const Barray[], cudaDataType_t Btype, const int ldb_array[],
                                          const void *beta_array, void *const Carray[], cudaDataType_t Ctype,
                                          const int ldc_array[], int group_count, const int group_size[],
                                          cublasComputeType_t computeType);

#endif
