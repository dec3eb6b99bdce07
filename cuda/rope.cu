// rope.cu: rotary position embedding on the q and k blocks of qkv (rotate-half pairs (i, i + hs/2)).
#include "kernels.h"

// one thread per (row, part in {q, k}, head, i < hs/2); dir = 1 rotates by +angle, -1 by -angle
__global__ void rope_kernel(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int H, int hs,
                            float dir) {
    int half = hs / 2, d = H * hs;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x, total = (long)B * T * 2 * H * half;
    if (i >= total) return;
    int k = (int)(i % half);
    long rest = i / half;
    int h = (int)(rest % H);
    rest /= H;
    int part = (int)(rest % 2);
    long bt = rest / 2;
    int t = (int)(bt % T);
    float *x = qkv + bt * 3 * d + part * d + h * hs;
    float c = cos_t[t * half + k], s = dir * sin_t[t * half + k];
    float x1 = x[k], x2 = x[k + half];
    x[k] = x1 * c - x2 * s;
    x[k + half] = x2 * c + x1 * s;
}

static void rope_launch(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int H, int hs, float dir,
                        cudaStream_t stream) {
    long total = (long)B * T * 2 * H * (hs / 2);
    LAUNCH(rope_kernel, ceil_div(total, 256), 256, 0, stream, qkv, cos_t, sin_t, B, T, H, hs, dir);
    cudaCheck(cudaGetLastError());
}

void cu_rope_forward(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int H, int hs,
                     cudaStream_t stream) {
    rope_launch(qkv, cos_t, sin_t, B, T, H, hs, 1.0f, stream);
}

void cu_rope_backward(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int H, int hs,
                      cudaStream_t stream) {
    rope_launch(dqkv, cos_t, sin_t, B, T, H, hs, -1.0f, stream); // a rotation's transpose is its inverse
}
