// adamw.cu: the AdamW update of src/optim.c, one thread per parameter.
#include "kernels.h"

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, long n, float lr, float beta1, float beta2,
                             float eps, float decay, float bc1, float bc2, float grad_scale) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i] * grad_scale;
    float pi = p[i] - decay * p[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
}

void cu_adamw(float *params, const float *grads, float *m, float *v, long n, float lr, float beta1, float beta2,
              float eps, float decay, float bc1, float bc2, float grad_scale, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH(adamw_kernel, ceil_div(n, 256), 256, 0, stream, params, grads, m, v, n, lr, beta1, beta2, eps, decay, bc1,
           bc2, grad_scale);
    cudaCheck(cudaGetLastError());
}
