// rope.cu: rotary position embedding on the query and key heads of qkv (rotate-half pairs (i, i + hs/2)).
#include "kernels.h"

// one thread per (row, head among the Hq query then Hkv key heads, i < hs/2); dir = 1 rotates by +angle,
// -1 by -angle
__global__ void rope_kernel(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs,
                            float dir) {
    int half = hs / 2, heads = Hq + Hkv, width = (Hq + 2 * Hkv) * hs;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x, total = (long)B * T * heads * half;
    if (i >= total) return;
    int k = (int)(i % half);
    long rest = i / half;
    int h = (int)(rest % heads);
    long bt = rest / heads;
    int t = (int)(bt % T);
    float *x = qkv + bt * width + h * hs;
    float c = cos_t[t * half + k], s = dir * sin_t[t * half + k];
    float x1 = x[k], x2 = x[k + half];
    x[k] = x1 * c - x2 * s;
    x[k + half] = x2 * c + x1 * s;
}

static void rope_launch(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs,
                        float dir, cudaStream_t stream) {
    long total = (long)B * T * (Hq + Hkv) * (hs / 2);
    LAUNCH(rope_kernel, ceil_div(total, 256), 256, 0, stream, qkv, cos_t, sin_t, B, T, Hq, Hkv, hs, dir);
    cudaCheck(cudaGetLastError());
}

void cu_rope_forward(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs,
                     cudaStream_t stream) {
    rope_launch(qkv, cos_t, sin_t, B, T, Hq, Hkv, hs, 1.0f, stream);
}

void cu_rope_backward(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs,
                      cudaStream_t stream) {
    rope_launch(dqkv, cos_t, sin_t, B, T, Hq, Hkv, hs, -1.0f, stream); // a rotation's transpose is its inverse
}
