// layers.c: CPU kernels of the dense transformer ops. GEMMs go through cblas_sgemm; the rest is loops
// parallelised with OpenMP over rows or (batch, head) pairs.
#include "layers.h"

#include <cblas.h>  // cblas_sgemm
#include <math.h>   // expf, sqrtf, powf
#include <stdlib.h> // malloc
#include <string.h> // memset

#include "util.h"   // mallocCheck

void residual_forward(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void embedding_forward(float *out, const uint8_t *tokens, const float *embed, int N, int d) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) memcpy(out + (long)n * d, embed + (long)tokens[n] * d, sizeof(float) * d);
}

void embedding_backward(float *dembed, const float *dout, const uint8_t *tokens, int N, int d) {
    // serial over rows: two rows with the same token add into the same embedding row
    for (int n = 0; n < N; n++) {
        float *dst = dembed + (long)tokens[n] * d;
        const float *src = dout + (long)n * d;
        for (int i = 0; i < d; i++) dst[i] += src[i];
    }
}

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int d, float eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (long)n * d;
        float *y = out + (long)n * d;
        double ss = 0.0;
        for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
        float r = 1.0f / sqrtf((float)(ss / d) + eps);
        rstd[n] = r;
        for (int i = 0; i < d; i++) y[i] = x[i] * r * w[i];
    }
}

void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                      const float *rstd, int N, int d) {
    // dx_i = r * (dy_i w_i - x_i r^2 * mean_j(dy_j w_j x_j)); dw_i += sum_n dy_i x_i r
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (long)n * d, *dy = dout + (long)n * d;
        float *dx = dinp + (long)n * d;
        float r = rstd[n];
        double dot = 0.0;
        for (int i = 0; i < d; i++) dot += (double)dy[i] * w[i] * x[i];
        float c = (float)(dot / d) * r * r;
        for (int i = 0; i < d; i++) dx[i] += r * (dy[i] * w[i] - x[i] * c);
    }
    // dw: parallel over columns so no two threads write the same element
#pragma omp parallel for
    for (int i = 0; i < d; i++) {
        double acc = 0.0;
        for (int n = 0; n < N; n++) acc += (double)dout[(long)n * d + i] * inp[(long)n * d + i] * rstd[n];
        dw[i] += (float)acc;
    }
}

void matmul_forward(float *out, const float *inp, const float *w, int N, int n_in, int n_out, double *flops) {
    if (N == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n_out, n_in, 1.0f, inp, n_in, w, n_in, 0.0f, out, n_out);
    *flops += 2.0 * N * n_in * n_out;
}

void matmul_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                     int N, int n_in, int n_out, double *flops) {
    if (N == 0) return;
    if (dinp) { // (N, n_out) @ (n_out, n_in)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, n_in, n_out, 1.0f, dout, n_out, w, n_in, 1.0f, dinp, n_in);
        *flops += 2.0 * N * n_in * n_out;
    }
    // (n_out, N) @ (N, n_in)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, n_in, N, 1.0f, dout, n_out, inp, n_in, 1.0f, dw, n_in);
    *flops += 2.0 * N * n_in * n_out;
}

void rope_tables(float *cos_t, float *sin_t, int T, int hs, float theta) {
    int half = hs / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double freq = pow((double)theta, -2.0 * i / hs);
            double a = t * freq;
            cos_t[t * half + i] = (float)cos(a);
            sin_t[t * half + i] = (float)sin(a);
        }
}

// Rotates the first two of the three q|k|v blocks of every row by +angle (dir = 1) or -angle (dir = -1).
static void rope_apply(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int H, int hs, float dir) {
    int d = H * hs, half = hs / 2;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *row = qkv + ((long)b * T + t) * 3 * d;
            const float *c = cos_t + t * half, *s = sin_t + t * half;
            for (int part = 0; part < 2; part++)
                for (int h = 0; h < H; h++) {
                    float *x = row + part * d + h * hs;
                    for (int i = 0; i < half; i++) {
                        float x1 = x[i], x2 = x[i + half], sn = dir * s[i];
                        x[i] = x1 * c[i] - x2 * sn;
                        x[i + half] = x2 * c[i] + x1 * sn;
                    }
                }
        }
}

void rope_forward(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int H, int hs) {
    rope_apply(qkv, cos_t, sin_t, B, T, H, hs, 1.0f);
}

void rope_backward(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int H, int hs) {
    rope_apply(dqkv, cos_t, sin_t, B, T, H, hs, -1.0f); // a rotation's transpose is its inverse
}

void attention_forward(float *out, float *att, const float *qkv, int B, int T, int H, int hs, double *flops) {
    int d = H * hs;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *q = qkv + ((long)b * T + t) * 3 * d + h * hs;
                float *p = att + (((long)b * H + h) * T + t) * T;
                float maxv = -INFINITY;
                for (int u = 0; u <= t; u++) {
                    const float *k = qkv + ((long)b * T + u) * 3 * d + d + h * hs;
                    float s = 0.0f;
                    for (int i = 0; i < hs; i++) s += q[i] * k[i];
                    s *= scale;
                    p[u] = s;
                    if (s > maxv) maxv = s;
                }
                float sum = 0.0f;
                for (int u = 0; u <= t; u++) { p[u] = expf(p[u] - maxv); sum += p[u]; }
                float inv = 1.0f / sum;
                for (int u = 0; u <= t; u++) p[u] *= inv;
                for (int u = t + 1; u < T; u++) p[u] = 0.0f;
                float *y = out + ((long)b * T + t) * d + h * hs;
                for (int i = 0; i < hs; i++) y[i] = 0.0f;
                for (int u = 0; u <= t; u++) {
                    const float *v = qkv + ((long)b * T + u) * 3 * d + 2 * d + h * hs;
                    for (int i = 0; i < hs; i++) y[i] += p[u] * v[i];
                }
            }
    *flops += 2.0 * 2.0 * B * H * hs * (T * (T + 1.0) / 2.0); // q.k and p.v over the causal triangle
}

void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att,
                        int B, int T, int H, int hs, double *flops) {
    int d = H * hs;
    float scale = 1.0f / sqrtf((float)hs);
    // One (b, h) pair per iteration: it writes only head h's columns of batch b's rows.
#pragma omp parallel
    {
        float *dp = mallocCheck(sizeof(float) * T); // d loss / d prob for one query row
#pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++) {
                    const float *p = att + (((long)b * H + h) * T + t) * T;
                    const float *dy = dout + ((long)b * T + t) * d + h * hs;
                    const float *q = qkv + ((long)b * T + t) * 3 * d + h * hs;
                    float *dq = dqkv + ((long)b * T + t) * 3 * d + h * hs;
                    float dot = 0.0f; // sum_u p_u dp_u
                    for (int u = 0; u <= t; u++) {
                        const float *v = qkv + ((long)b * T + u) * 3 * d + 2 * d + h * hs;
                        float *dv = dqkv + ((long)b * T + u) * 3 * d + 2 * d + h * hs;
                        float s = 0.0f;
                        for (int i = 0; i < hs; i++) { s += dy[i] * v[i]; dv[i] += p[u] * dy[i]; }
                        dp[u] = s;
                        dot += p[u] * s;
                    }
                    for (int u = 0; u <= t; u++) {
                        float ds = p[u] * (dp[u] - dot) * scale; // through softmax and the 1/sqrt(hs) scale
                        const float *k = qkv + ((long)b * T + u) * 3 * d + d + h * hs;
                        float *dk = dqkv + ((long)b * T + u) * 3 * d + d + h * hs;
                        for (int i = 0; i < hs; i++) { dq[i] += ds * k[i]; dk[i] += ds * q[i]; }
                    }
                }
        free(dp);
    }
    *flops += 4.0 * 2.0 * B * H * hs * (T * (T + 1.0) / 2.0); // dv, dp, dq, dk
}

void swiglu_forward(float *a, const float *h, const float *u, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        float sig = 1.0f / (1.0f + expf(-h[i]));
        a[i] = h[i] * sig * u[i];
    }
}

void swiglu_backward(float *dh, float *du, const float *da, const float *h, const float *u, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        float sig = 1.0f / (1.0f + expf(-h[i]));
        float silu = h[i] * sig;
        du[i] = da[i] * silu;
        dh[i] = da[i] * u[i] * sig * (1.0f + h[i] * (1.0f - sig));
    }
}

double crossentropy_forward(float *probs, float *losses, const uint8_t *targets, int N, int V) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *p = probs + (long)n * V;
        float logit_t = p[targets[n]];
        float maxv = p[0];
        for (int i = 1; i < V; i++) if (p[i] > maxv) maxv = p[i];
        double sum = 0.0;
        for (int i = 0; i < V; i++) { p[i] = expf(p[i] - maxv); sum += p[i]; }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < V; i++) p[i] *= inv;
        losses[n] = (float)(log(sum) + maxv - logit_t); // logsumexp - logit: no log(0) when p underflows
    }
    double total = 0.0; // serial sum: the same bits for any thread count
    for (int n = 0; n < N; n++) total += losses[n];
    return total / N;
}

void crossentropy_backward(float *dlogits, const float *probs, const uint8_t *targets, int N, int V, float scale) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *p = probs + (long)n * V;
        float *g = dlogits + (long)n * V;
        for (int i = 0; i < V; i++) g[i] = p[i] * scale;
        g[targets[n]] -= scale;
    }
}

void ffn_forward(float *y, float *h, float *u, float *a, const float *x,
                 const float *wg, const float *wu, const float *wd, int N, int d, int f, double *flops) {
    matmul_forward(h, x, wg, N, d, f, flops);
    matmul_forward(u, x, wu, N, d, f, flops);
    swiglu_forward(a, h, u, (long)N * f);
    matmul_forward(y, a, wd, N, f, d, flops);
}

void ffn_backward(float *dx, float *dwg, float *dwu, float *dwd, float *dh, float *du, float *da,
                  const float *dy, const float *x, const float *h, const float *u, const float *a,
                  const float *wg, const float *wu, const float *wd, int N, int d, int f, double *flops) {
    memset(da, 0, sizeof(float) * N * f);
    matmul_backward(da, dwd, dy, a, wd, N, f, d, flops);
    swiglu_backward(dh, du, da, h, u, (long)N * f);
    matmul_backward(dx, dwg, dh, x, wg, N, d, f, flops);
    matmul_backward(dx, dwu, du, x, wu, N, d, f, flops);
}
