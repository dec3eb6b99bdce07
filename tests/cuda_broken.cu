// cuda_broken.cu: deliberately broken copies of cuda/rmsnorm.cu's forward kernel. tests/test_cuda_kernels
// requires the parity check to FAIL on each, which shows the harness catches such bugs:
//   nosync:    the block reduction lacks the __syncthreads() between writing the per-warp sums and
//              reading them (a race on a GPU; in the emulation a wrong sum in one thread order);
//   offbyone:  the sum of squares stops one element short of the row.
#include "../cuda/common.cuh"

__device__ float block_sum_nosync(float v, float *scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    float s = lane < n_warps ? scratch[lane] : 0.0f; // BUG: no barrier before reading the other warps' sums
    s = warp_sum(s);
    __syncthreads();
    return s;
}

__global__ void rmsnorm_forward_nosync(float *out, float *rstd, const float *inp, const float *w, int d, float eps) {
    __shared__ float scratch[32];
    const float *x = inp + (long)blockIdx.x * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) ss += x[c] * x[c];
    ss = block_sum_nosync(ss, scratch);
    float r = 1.0f / sqrtf(ss / d + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    float *o = out + (long)blockIdx.x * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) o[c] = x[c] * r * w[c];
}

__global__ void rmsnorm_forward_offbyone(float *out, float *rstd, const float *inp, const float *w, int d, float eps) {
    __shared__ float scratch[32];
    const float *x = inp + (long)blockIdx.x * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d - 1; c += blockDim.x) ss += x[c] * x[c]; // BUG: c < d - 1
    ss = block_sum(ss, scratch);
    float r = 1.0f / sqrtf(ss / d + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    float *o = out + (long)blockIdx.x * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) o[c] = x[c] * r * w[c];
}

// kind: 0 nosync, 1 offbyone
void broken_rmsnorm_forward(int kind, float *out, float *rstd, const float *inp, const float *w, int N, int d, float eps) {
    if (kind == 0) LAUNCH(rmsnorm_forward_nosync, N, 128, 0, (cudaStream_t)0, out, rstd, inp, w, d, eps);
    else LAUNCH(rmsnorm_forward_offbyone, N, 128, 0, (cudaStream_t)0, out, rstd, inp, w, d, eps);
    cudaCheck(cudaGetLastError());
}

// A kernel in which thread 0 returns before the block's barrier: the emulation must abort.
__global__ void divergent_barrier_kernel(float *x) {
    if (threadIdx.x == 0) return;
    x[threadIdx.x] = 1.0f;
    __syncthreads();
}

void broken_divergent_barrier(float *x) {
    LAUNCH(divergent_barrier_kernel, 1, 64, 0, (cudaStream_t)0, x);
    cudaCheck(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------------
// Misuses that the emulation must expose (tests/test_cuda_emu.sh runs them through test_cuda_kernels_emu's
// "misuse" modes); an emulator without the check gives the right answer by luck.

// A block sum that assumes __shared__ starts at zero: its accumulator is never set (a GPU gives garbage).
__global__ void shared_assumed_zero_kernel(float *out, const float *x, int n) {
    __shared__ float acc;
    for (int i = threadIdx.x; i < n; i += blockDim.x) atomicAdd(&acc, x[i]); // BUG: acc was never set to 0
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

void broken_shared_assumed_zero(float *out, const float *x, int n) {
    LAUNCH(shared_assumed_zero_kernel, 1, 64, 0, (cudaStream_t)0, out, x, n);
    cudaCheck(cudaGetLastError());
}

// out[0, n) = v
__global__ void fill_kernel(float *out, float v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = v;
}

void misuse_fill(float *out, float v, int n, cudaStream_t stream) {
    LAUNCH(fill_kernel, ceil_div(n, 64), 64, 0, stream, out, v, n);
    cudaCheck(cudaGetLastError());
}
