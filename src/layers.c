// layers.c: CPU kernels of the dense transformer ops. GEMMs go through cblas_sgemm (layers_gemm splits
// them across the OpenMP team); the rest is loops parallelised with OpenMP over rows or (batch, head)
// pairs.
#include "layers.h"

#include <cblas.h>  // cblas_sgemm
#include <math.h>   // expf, sqrtf, powf
#include <stdint.h> // int32_t
#include <string.h> // memset, memcpy
#ifdef _OPENMP
#include <omp.h>    // omp_get_max_threads, omp_in_parallel
#endif

#include "autoconfig.h" // HAVE_OPENBLAS_GET_NUM_THREADS
#include "util.h"       // fail

#ifdef HAVE_OPENBLAS_GET_NUM_THREADS
int openblas_get_num_threads(void);
#endif

// How many blocks layers_gemm cuts an (M, N, K) product into: the OpenMP team's size when the BLAS runs
// one thread (a pthreads OpenBLAS is held to one, see run.blas_threads) and the product is worth it;
// else 1 (the BLAS's own threads, or already inside a parallel region).
static int gemm_blocks(int M, int N, int K) {
#ifdef _OPENMP
    if (omp_in_parallel()) return 1;
#ifdef HAVE_OPENBLAS_GET_NUM_THREADS
    if (openblas_get_num_threads() > 1) return 1;
#endif
    int team = omp_get_max_threads();
    if (team < 2 || (double)M * N * K < 32768.0 * 16) return 1; // below ~1 MFLOP the fork costs more
    return team;
#else
    (void)M; (void)N; (void)K;
    return 1;
#endif
}

void layers_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc) {
    if (M == 0 || N == 0) return;
    CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    int blocks = gemm_blocks(M, N, K);
    if (blocks <= 1) {
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    // cut the longer side of C into `blocks` pieces (multiples of 16 rows or columns, the last one shorter)
    int by_rows = M >= N, len = by_rows ? M : N;
    int piece = ((len + blocks - 1) / blocks + 15) / 16 * 16;
#pragma omp parallel for num_threads(blocks) schedule(static, 1)
    for (int p = 0; p < blocks; p++) {
        int i0 = p * piece, n = len - i0 < piece ? len - i0 : piece;
        if (n <= 0) continue;
        if (by_rows) // rows i0.. of op(A) and of C
            cblas_sgemm(CblasRowMajor, ta, tb, n, N, K, alpha, A + (trans_a ? (long)i0 : (long)i0 * lda), lda, B, ldb,
                        beta, C + (long)i0 * ldc, ldc);
        else // columns i0.. of op(B) and of C
            cblas_sgemm(CblasRowMajor, ta, tb, M, n, K, alpha, A, lda, B + (trans_b ? (long)i0 * ldb : (long)i0), ldb,
                        beta, C + i0, ldc);
    }
}

void residual_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for simd
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void embedding_forward(float *out, const Token *tokens, const float *embed, int N, int d) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) memcpy(out + (long)n * d, embed + (long)tokens[n] * d, sizeof(float) * d);
}

void embedding_backward(float *dembed, const float *dout, const Token *tokens, int N, int d) {
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
    // dw: parallel over blocks of 64 columns, so no two threads write the same element; within a block the
    // rows are read in order and contiguously (each column's sum runs over n in order, as a plain loop would)
#pragma omp parallel for
    for (int i0 = 0; i0 < d; i0 += 64) {
        int w_ = d - i0 < 64 ? d - i0 : 64;
        double acc[64] = {0};
        for (int n = 0; n < N; n++) {
            const float *dy = dout + (long)n * d + i0, *x = inp + (long)n * d + i0;
            double r = rstd[n];
            for (int i = 0; i < w_; i++) acc[i] += (double)dy[i] * x[i] * r;
        }
        for (int i = 0; i < w_; i++) dw[i0 + i] += (float)acc[i];
    }
}

void matmul_forward(float *out, const float *inp, const float *w, int N, int n_in, int n_out) {
    if (N == 0) return;
    layers_gemm(0, 1, N, n_out, n_in, 1.0f, inp, n_in, w, n_in, 0.0f, out, n_out);
}

void matmul_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                     int N, int n_in, int n_out) {
    if (N == 0) return;
    if (dinp)
        layers_gemm(0, 0, N, n_in, n_out, 1.0f, dout, n_out, w, n_in, 1.0f, dinp, n_in); // (N, n_out) @ (n_out, n_in)
    // (n_out, N) @ (N, n_in)
    layers_gemm(1, 0, n_out, n_in, N, 1.0f, dout, n_out, inp, n_in, 1.0f, dw, n_in);
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

// Rotates the Hq query heads and Hkv key heads at the start of every row of qkv (stride (Hq + 2 Hkv) hs)
// by +angle (dir = 1) or -angle (dir = -1).
static void rope_apply(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs,
                       float dir) {
    int width = (Hq + 2 * Hkv) * hs, half = hs / 2;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *row = qkv + ((long)b * T + t) * width;
            const float *c = cos_t + t * half, *s = sin_t + t * half;
            for (int h = 0; h < Hq + Hkv; h++) { // (the key heads follow the query heads)
                float *x = row + h * hs;
                for (int i = 0; i < half; i++) {
                    float x1 = x[i], x2 = x[i + half], sn = dir * s[i];
                    x[i] = x1 * c[i] - x2 * sn;
                    x[i + half] = x2 * c[i] + x1 * sn;
                }
            }
        }
}

void rope_forward(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs) {
    rope_apply(qkv, cos_t, sin_t, B, T, Hq, Hkv, hs, 1.0f);
}

void rope_backward(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs) {
    rope_apply(dqkv, cos_t, sin_t, B, T, Hq, Hkv, hs, -1.0f); // a rotation's transpose is its inverse
}

// The groups QK-norm normalises in one row: the query part then the key part, each one group (per_head =
// 0: weights over q_dim and kv_dim) or one per head (per_head = 1: every head with the same (hs) weights).
// Group g of a row starts at column qk_group_col and has qk_group_len columns and weights *w.
static int qk_groups(int Hq, int Hkv, int per_head) { return per_head ? Hq + Hkv : 2; }
static int qk_group_len(int g, int Hq, int Hkv, int hs, int per_head) {
    return per_head ? hs : (g == 0 ? Hq : Hkv) * hs;
}
static int qk_group_col(int g, int Hq, int hs, int per_head) { return per_head ? g * hs : (g == 0 ? 0 : Hq * hs); }
static int qk_group_is_q(int g, int Hq, int per_head) { return per_head ? g < Hq : g == 0; }

void qknorm_forward(float *qkv, float *raw, float *rstd, const float *wq, const float *wk, int N, int Hq, int Hkv,
                    int hs, int per_head, float eps) {
    int width = (Hq + 2 * Hkv) * hs, qk = (Hq + Hkv) * hs, G = qk_groups(Hq, Hkv, per_head);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *row = qkv + (long)n * width, *x = raw + (long)n * qk;
        memcpy(x, row, sizeof(float) * qk);
        for (int g = 0; g < G; g++) {
            int len = qk_group_len(g, Hq, Hkv, hs, per_head), col = qk_group_col(g, Hq, hs, per_head);
            const float *w = qk_group_is_q(g, Hq, per_head) ? wq : wk;
            double ss = 0.0;
            for (int i = 0; i < len; i++) ss += (double)x[col + i] * x[col + i];
            float r = 1.0f / sqrtf((float)(ss / len) + eps);
            rstd[(long)n * G + g] = r;
            for (int i = 0; i < len; i++) row[col + i] = x[col + i] * r * w[i];
        }
    }
}

// dw (len) += sum over rows n and the groups g of `is_q` of dy x r, column by column
static void qknorm_dw(float *dw, int len, int is_q, const float *dqkv, const float *raw, const float *rstd, int N,
                      int Hq, int Hkv, int hs, int per_head) {
    int width = (Hq + 2 * Hkv) * hs, qk = (Hq + Hkv) * hs, G = qk_groups(Hq, Hkv, per_head);
#pragma omp parallel for
    for (int i = 0; i < len; i++) {
        double acc = 0.0;
        for (int n = 0; n < N; n++)
            for (int g = 0; g < G; g++) {
                if (qk_group_is_q(g, Hq, per_head) != is_q) continue;
                int col = qk_group_col(g, Hq, hs, per_head) + i;
                acc += (double)dqkv[(long)n * width + col] * raw[(long)n * qk + col] * rstd[(long)n * G + g];
            }
        dw[i] += (float)acc;
    }
}

void qknorm_backward(float *dqkv, float *dwq, float *dwk, const float *raw, const float *wq, const float *wk,
                     const float *rstd, int N, int Hq, int Hkv, int hs, int per_head) {
    int width = (Hq + 2 * Hkv) * hs, qk = (Hq + Hkv) * hs, G = qk_groups(Hq, Hkv, per_head);
    qknorm_dw(dwq, per_head ? hs : Hq * hs, 1, dqkv, raw, rstd, N, Hq, Hkv, hs, per_head);
    qknorm_dw(dwk, per_head ? hs : Hkv * hs, 0, dqkv, raw, rstd, N, Hq, Hkv, hs, per_head);
    // dx_i = r (dy_i w_i - x_i r^2 mean_j(dy_j w_j x_j)), over each group, in place of dy
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *dy = dqkv + (long)n * width;
        const float *x = raw + (long)n * qk;
        for (int g = 0; g < G; g++) {
            int len = qk_group_len(g, Hq, Hkv, hs, per_head), col = qk_group_col(g, Hq, hs, per_head);
            const float *w = qk_group_is_q(g, Hq, per_head) ? wq : wk;
            float r = rstd[(long)n * G + g];
            double dot = 0.0;
            for (int i = 0; i < len; i++) dot += (double)dy[col + i] * w[i] * x[col + i];
            float c = (float)(dot / len) * r * r;
            for (int i = 0; i < len; i++) dy[col + i] = r * (dy[col + i] * w[i] - x[col + i] * c);
        }
    }
}

// e^x for the softmaxes and SiLU, in a form the compiler vectorises (libm's expf is a call per element):
// Cephes' expf, x = n ln2 + r with |r| <= ln2/2, e^r by a degree-7 polynomial: within 2 ulp of e^x for x
// in [-87.3, 88.7]. The exponent n is clamped to [-126, 127] (as integers, which vectorise with plain SSE2):
// below the range the result is ~1e-38 instead of 0 or a denormal, above it stays finite. Meant for finite
// arguments (here: differences of finite scores, <= 0, and activations); NaN gives NaN, and so does +-inf.
static inline float exp_poly(float x) {
    float n = (x * 1.44269504089f + 12582912.0f) - 12582912.0f; // round(x / ln2): 1.5 * 2^23 drops the fraction
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;          // x - n ln2, ln2 in two parts
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = (int32_t)n;
    e = e < -126 ? -126 : e;
    e = e > 127 ? 127 : e;
    int32_t bits = (e + 127) << 23; // 2^e
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// Attention, flash-style on the CPU: for each (batch, head) pair, blocks of ATT_QB query rows against the
// keys up to the block's last row (causal), the products as BLAS GEMMs on the strided q|k|v columns. Only
// each row's log-sum-exp is kept; the backward recomputes a block's probabilities from it. A thread's
// work slot holds two (ATT_QB, T) blocks: scores / probabilities, and their gradient.
#define ATT_QB 64

static size_t attention_slot_floats(int T) { return 2 * (size_t)ATT_QB * T; }

size_t attention_work_floats(int T, int threads) {
    return attention_slot_floats(T) * (size_t)(threads > 0 ? threads : 1);
}

// The threads that may run: as many as the work has slots (and OpenMP allows).
static int attention_team(size_t work_floats, int T) {
    int slots = (int)(work_floats / attention_slot_floats(T));
    if (slots < 1)
        fail("internal: attention work of %zu floats, at least %zu needed", work_floats, attention_slot_floats(T));
#ifdef _OPENMP
    int team = omp_get_max_threads();
    return slots < team ? slots : team;
#else
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void attention_forward(float *out, float *lse, float *work, size_t work_floats, const float *qkv, int B, int T, int Hq,
                       int Hkv, int hs) {
    int width = (Hq + 2 * Hkv) * hs, qd = Hq * hs, kvd = Hkv * hs, group = Hq / Hkv,
        team = attention_team(work_floats, T);
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) num_threads(team) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            float *S = work + attention_slot_floats(T) * thread_id(); // (nq, nk) scores, then probabilities
            const float *rows = qkv + (long)b * T * width, *Q = rows + h * hs, *K = rows + qd + (h / group) * hs,
                        *V = K + kvd;
            float *L = lse + ((long)b * Hq + h) * T;
            for (int t0 = 0; t0 < T; t0 += ATT_QB) {
                int nq = T - t0 < ATT_QB ? T - t0 : ATT_QB, nk = t0 + nq; // rows t0.., keys 0..nk-1
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, scale, Q + (long)t0 * width, width, K,
                            width, 0.0f, S, nk);
                for (int i = 0; i < nq; i++) {
                    int t = t0 + i;
                    float *p = S + (long)i * nk, maxv = -INFINITY, sum = 0.0f;
                    for (int u = 0; u <= t; u++) maxv = p[u] > maxv ? p[u] : maxv;
#pragma omp simd
                    for (int u = 0; u <= t; u++) p[u] = exp_poly(p[u] - maxv);
                    for (int u = 0; u <= t; u++) sum += p[u];
                    float inv = 1.0f / sum;
                    for (int u = 0; u <= t; u++) p[u] *= inv;
                    for (int u = t + 1; u < nk; u++) p[u] = 0.0f;
                    L[t] = maxv + logf(sum);
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hs, nk, 1.0f, S, nk, V, width, 0.0f,
                            out + ((long)b * T + t0) * qd + h * hs, qd);
            }
        }
}

// The backward of query head h of batch b: dQ (its columns) +=, and the gradients of its key and value
// head, dK and dV, +=. P and dS: (ATT_QB, T) scratch each.
static void attention_head_backward(float *dqkv, float *P, float *dS, const float *dout, const float *qkv,
                                    const float *lse, const float *out, int b, int h, int T, int Hq, int Hkv, int hs) {
    int width = (Hq + 2 * Hkv) * hs, qd = Hq * hs, kvd = Hkv * hs, group = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)hs);
    long row0 = (long)b * T;
    const float *Q = qkv + row0 * width + h * hs, *K = qkv + row0 * width + qd + (h / group) * hs, *V = K + kvd;
    float *dQ = dqkv + row0 * width + h * hs, *dK = dqkv + row0 * width + qd + (h / group) * hs, *dV = dK + kvd;
    const float *dY = dout + row0 * qd + h * hs, *Y = out + row0 * qd + h * hs;
    const float *L = lse + ((long)b * Hq + h) * T;
    for (int t0 = 0; t0 < T; t0 += ATT_QB) {
        int nq = T - t0 < ATT_QB ? T - t0 : ATT_QB, nk = t0 + nq;
        // the block's probabilities again, from the scores and the kept log-sum-exp
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, scale, Q + (long)t0 * width, width, K, width,
                    0.0f, P, nk);
        for (int i = 0; i < nq; i++) {
            int t = t0 + i;
            float *p = P + (long)i * nk;
            float lt = L[t];
#pragma omp simd
            for (int u = 0; u <= t; u++) p[u] = exp_poly(p[u] - lt);
            for (int u = t + 1; u < nk; u++) p[u] = 0.0f;
        }
        // dV (nk, hs) += P^T dY;  dP (nq, nk) = dY V^T
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hs, nq, 1.0f, P, nk, dY + (long)t0 * qd, qd, 1.0f, dV,
                    width);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, 1.0f, dY + (long)t0 * qd, qd, V, width, 0.0f,
                    dS, nk);
        // through the softmax and the scale: dS = P (dP - sum_u P dP) / sqrt(hs), where
        // sum_u P_u dP_u = dy . sum_u P_u v_u = dy . y
        for (int i = 0; i < nq; i++) {
            int t = t0 + i;
            const float *dy = dY + (long)t * qd, *y = Y + (long)t * qd, *p = P + (long)i * nk;
            float *ds = dS + (long)i * nk, dot = 0.0f;
            for (int j = 0; j < hs; j++) dot += dy[j] * y[j];
            for (int u = 0; u <= t; u++) ds[u] = p[u] * (ds[u] - dot) * scale;
            for (int u = t + 1; u < nk; u++) ds[u] = 0.0f;
        }
        // dQ (nq, hs) += dS K;  dK (nk, hs) += dS^T Q
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hs, nk, 1.0f, dS, nk, K, width, 1.0f,
                    dQ + (long)t0 * width, width);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hs, nq, 1.0f, dS, nk, Q + (long)t0 * width, width,
                    1.0f, dK, width);
    }
}

void attention_backward(float *dqkv, float *work, size_t work_floats, const float *dout, const float *qkv,
                        const float *lse, const float *out, int B, int T, int Hq, int Hkv, int hs) {
    int team = attention_team(work_floats, T), group = Hq / Hkv;
    // One (b, key head) pair per iteration: it writes only the columns of that key head and of its group of
    // query heads in batch b's rows (the group's heads in order, each adding into the shared dK, dV).
#pragma omp parallel for collapse(2) num_threads(team) schedule(static)
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < Hkv; kh++) {
            float *P = work + attention_slot_floats(T) * thread_id(), *dS = P + (size_t)ATT_QB * T; // (nq, nk) each
            for (int h = kh * group; h < (kh + 1) * group; h++)
                attention_head_backward(dqkv, P, dS, dout, qkv, lse, out, b, h, T, Hq, Hkv, hs);
        }
}

void swiglu_forward(float *a, const float *h, const float *u, long n) {
#pragma omp parallel for simd
    for (long i = 0; i < n; i++) {
        float sig = 1.0f / (1.0f + exp_poly(-h[i]));
        a[i] = h[i] * sig * u[i];
    }
}

void swiglu_backward(float *dh, float *du, const float *da, const float *h, const float *u, long n) {
#pragma omp parallel for simd
    for (long i = 0; i < n; i++) {
        float hi = h[i], ui = u[i], dai = da[i]; // (read first: dh, du, da may be h, u, a)
        float sig = 1.0f / (1.0f + exp_poly(-hi));
        float silu = hi * sig;
        du[i] = dai * silu;
        dh[i] = dai * ui * sig * (1.0f + hi * (1.0f - sig));
    }
}

// One row: p (V) logits in, softmax out; returns the row's loss, logsumexp - logit of the target (no log(0)
// when p underflows).
static float crossentropy_row(float *p, int V, Token target) {
    float logit_t = p[target];
    float maxv = p[0];
    for (int i = 1; i < V; i++) if (p[i] > maxv) maxv = p[i];
    double sum = 0.0;
#pragma omp simd
    for (int i = 0; i < V; i++) p[i] = exp_poly(p[i] - maxv);
    for (int i = 0; i < V; i++) sum += p[i];
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < V; i++) p[i] *= inv;
    return (float)(log(sum) + maxv - logit_t);
}

double crossentropy_forward(float *probs, float *losses, const Token *targets, int N, int V) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) losses[n] = crossentropy_row(probs + (long)n * V, V, targets[n]);
    double total = 0.0; // serial sum: the same bits for any thread count
    for (int n = 0; n < N; n++) total += losses[n];
    return total / N;
}

void crossentropy_backward(float *dlogits, const float *probs, const Token *targets, int N, int V, float scale) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *p = probs + (long)n * V;
        float *g = dlogits + (long)n * V;
        for (int i = 0; i < V; i++) g[i] = p[i] * scale;
        g[targets[n]] -= scale;
    }
}

void crossentropy_fused(float *logits_inout, float *losses, const Token *targets, int N, int V, float scale) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *p = logits_inout + (long)n * V;
        losses[n] = crossentropy_row(p, V, targets[n]);
        for (int i = 0; i < V; i++) p[i] *= scale;
        p[targets[n]] -= scale;
    }
}

void ffn_forward(float *y, float *h, float *u, float *a, const float *x,
                 const float *wg, const float *wu, const float *wd, int N, int d, int f) {
    matmul_forward(h, x, wg, N, d, f);
    matmul_forward(u, x, wu, N, d, f);
    swiglu_forward(a, h, u, (long)N * f);
    matmul_forward(y, a, wd, N, f, d);
}

void ffn_backward(float *dx, float *dwg, float *dwu, float *dwd, float *dh, float *du, float *da,
                  const float *dy, const float *x, const float *h, const float *u, const float *a,
                  const float *wg, const float *wu, const float *wd, int N, int d, int f) {
    if (N == 0) return;
    // dwd (d, f) += dy^T a; da (N, f) = dy wd (overwritten, after a is read: da may be a). dy is not read after
    // this, so dx may be dy.
    layers_gemm(1, 0, d, f, N, 1.0f, dy, d, a, f, 1.0f, dwd, f);
    layers_gemm(0, 0, N, f, d, 1.0f, dy, d, wd, f, 0.0f, da, f);
    swiglu_backward(dh, du, da, h, u, (long)N * f);
    // dx (N, d) = dh wg + du wu (overwritten); dwg, dwu (f, d) += dh^T x, du^T x
    layers_gemm(0, 0, N, d, f, 1.0f, dh, f, wg, d, 0.0f, dx, d);
    layers_gemm(0, 0, N, d, f, 1.0f, du, f, wu, d, 1.0f, dx, d);
    layers_gemm(1, 0, f, d, N, 1.0f, dh, f, x, d, 1.0f, dwg, d);
    layers_gemm(1, 0, f, d, N, 1.0f, du, f, x, d, 1.0f, dwu, d);
}

void ffn_forward_groups(const FfnGroup *g, int n, int d, int f) {
    for (int i = 0; i < n; i++)
        ffn_forward(g[i].y, g[i].h, g[i].u, g[i].a, g[i].x, g[i].wg, g[i].wu, g[i].wd, g[i].rows, d, f);
}

void ffn_backward_groups(const FfnGroup *g, int n, int d, int f) {
    for (int i = 0; i < n; i++)
        ffn_backward(g[i].dx, g[i].dwg, g[i].dwu, g[i].dwd, g[i].dh, g[i].du, g[i].da, g[i].dy, g[i].x, g[i].h,
                     g[i].u, g[i].a, g[i].wg, g[i].wu, g[i].wd, g[i].rows, d, f);
}
