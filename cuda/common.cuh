// common.cuh: what every kernel file includes. With nvcc: the CUDA runtime and cuBLAS. With a host
// C++ compiler (the emulation build): cuda/emu/, which runs the same kernels on the CPU. The two macros
// below are the only difference a kernel file sees; both exist so that nvcc and g++ read one source.
#ifndef PCMOE_CUDA_COMMON_CUH
#define PCMOE_CUDA_COMMON_CUH

#include <cmath>   // fmaxf, sqrtf, expf, INFINITY
#include <cstddef> // size_t
#include <cstdint> // uint8_t

#include "../src/token.h" // Token

#ifdef __CUDACC__
#include <cublas_v2.h>
#include <cuda_runtime.h>
// LAUNCH(kernel, grid, block, dynamic shared bytes, stream, kernel arguments...)
#define LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
// DYNAMIC_SMEM(type, name): name points at the launch's dynamic shared memory
#define DYNAMIC_SMEM(type, name)                                                                                       \
    extern __shared__ __align__(16) unsigned char dynamic_smem_[];                                                     \
    type *name = reinterpret_cast<type *>(dynamic_smem_)
#else
#include "emu/cublas_emu.h"
#include "emu/cuda_emu.h"
#define LAUNCH(kernel, grid, block, smem, stream, ...)                                                                 \
    emu_launch((grid), (block), (smem), (stream), emu_bind(kernel, __VA_ARGS__))
#define DYNAMIC_SMEM(type, name) type *name = static_cast<type *>(emu_dynamic_smem())
#endif

// The program's single fatal path (src/util.c): prints "pcmoe: error: ..." and ends the job.
extern "C" void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

// Every CUDA runtime and cuBLAS call, and every launch (cudaGetLastError after it), goes through these.
inline void cuda_check(cudaError_t rc, const char *call, const char *file, int line) {
    if (rc != cudaSuccess) fail("CUDA call %s failed: %s (%s:%d)", call, cudaGetErrorString(rc), file, line);
}
inline void cublas_check(cublasStatus_t rc, const char *call, const char *file, int line) {
    if (rc != CUBLAS_STATUS_SUCCESS) fail("cuBLAS call %s failed: status %d (%s:%d)", call, (int)rc, file, line);
}
#define cudaCheck(call) cuda_check((call), #call, __FILE__, __LINE__)
#define cublasCheck(call) cublas_check((call), #call, __FILE__, __LINE__)

// The compute type the handle's math mode stands for: TF32 where run.tf32 set CUBLAS_TF32_TENSOR_OP_MATH, else
// exact fp32 (the grouped GEMMs name it: whether cublasSgemmGroupedBatched follows the math mode is not
// documented where we looked, docs/cuda.md).
inline cublasComputeType_t cublas_compute_type(cublasHandle_t h) {
    cublasMath_t mode;
    cublasCheck(cublasGetMathMode(h, &mode));
    return mode == CUBLAS_TF32_TENSOR_OP_MATH ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

inline int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }

// Reductions over a warp and over a block, with Op one of the two below.
struct SumOp {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// op over the warp's 32 values; every lane gets the result.
template <typename Op> __device__ __forceinline__ float warp_reduce(float v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// op over the block's values (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// scratch: 32 floats of shared memory; identity: op's neutral value. Ends with a barrier, so scratch can
// be reused right after.
template <typename Op> __device__ __forceinline__ float block_reduce(float v, float *scratch, float identity, Op op) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_reduce(v, op);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = warp_reduce(lane < n_warps ? scratch[lane] : identity, op);
    __syncthreads();
    return r;
}
__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, SumOp()); }

// The second stage of a column sum over chunks of rows: thread c, out[c] += partial[y, c] over the chunks y in
// order (partial (chunks, n)). A template, so that each file that launches it has its own copy.
template <typename T> __global__ void column_chunks_sum_kernel(T *out, const T *partial, int chunks, int n) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    T s = 0;
    for (int y = 0; y < chunks; y++) s += partial[(long)y * n + c];
    out[c] += s;
}
__device__ __forceinline__ float block_sum(float v, float *scratch) { return block_reduce(v, scratch, 0.0f, SumOp()); }
__device__ __forceinline__ float block_max(float v, float *scratch) {
    return block_reduce(v, scratch, -INFINITY, MaxOp());
}

#endif
