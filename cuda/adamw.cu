// adamw.cu: the AdamW update of src/optim.c. The step's update of many tensors is one launch: a table of the
// tensors (offset, length, bias corrections, decay) and a table of blocks (a tensor and its first element),
// both built on the host, who has the step counts; each block updates ADAMW_CHUNK elements of one tensor.
#include "kernels.h"

static const int ADAMW_THREADS = 256, ADAMW_CHUNK = 8 * ADAMW_THREADS;

// element i: the formula of src/optim.c
__device__ __forceinline__ void adamw_element(float *p, const float *g, float *m, float *v, long i, float lr,
                                              float beta1, float beta2, float eps, float decay, float bc1, float bc2,
                                              float grad_scale) {
    float gi = g[i] * grad_scale;
    float pi = p[i] - decay * p[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
}

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, long n, float lr, float beta1, float beta2,
                             float eps, float decay, float bc1, float bc2, float grad_scale) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) adamw_element(p, g, m, v, i, lr, beta1, beta2, eps, decay, bc1, bc2, grad_scale);
}

// block b: elements [start, start + ADAMW_CHUNK) of its tensor
__global__ void adamw_tensors_kernel(float *p, const float *g, float *m, float *v, const CuAdamwTensor *tensors,
                                     const CuAdamwBlock *blocks, float lr, float beta1, float beta2, float eps,
                                     float grad_scale) {
    CuAdamwBlock b = blocks[blockIdx.x];
    CuAdamwTensor t = tensors[b.tensor];
    long end = b.start + ADAMW_CHUNK < t.numel ? b.start + ADAMW_CHUNK : t.numel;
    for (long i = b.start + threadIdx.x; i < end; i += blockDim.x)
        adamw_element(p, g, m, v, t.offset + i, lr, beta1, beta2, eps, t.decay, t.bc1, t.bc2, grad_scale);
}

void cu_adamw(float *params, const float *grads, float *m, float *v, long n, float lr, float beta1, float beta2,
              float eps, float decay, float bc1, float bc2, float grad_scale, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH(adamw_kernel, ceil_div(n, ADAMW_THREADS), ADAMW_THREADS, 0, stream, params, grads, m, v, n, lr, beta1, beta2,
           eps, decay, bc1, bc2, grad_scale);
    cudaCheck(cudaGetLastError());
}

int cu_adamw_plan(const CuAdamwTensor *tensors, int n_tensors, CuAdamwBlock *blocks) {
    int nb = 0;
    for (int t = 0; t < n_tensors; t++)
        for (long s = 0; s < tensors[t].numel; s += ADAMW_CHUNK) {
            if (blocks) blocks[nb] = CuAdamwBlock{t, s};
            nb++;
        }
    return nb;
}

void cu_adamw_tensors(float *params, const float *grads, float *m, float *v, const CuAdamwTensor *tensors,
                      const CuAdamwBlock *blocks, int n_blocks, float lr, float beta1, float beta2, float eps,
                      float grad_scale, cudaStream_t stream) {
    if (n_blocks == 0) return;
    LAUNCH(adamw_tensors_kernel, n_blocks, ADAMW_THREADS, 0, stream, params, grads, m, v, tensors, blocks, lr, beta1,
           beta2, eps, grad_scale);
    cudaCheck(cudaGetLastError());
}
