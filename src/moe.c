// moe.c: router, top-k gating, dispatch by expert, experts, combine, and their backward (CPU, fp32).
#include "moe.h"

#include <math.h>   // expf, log, INFINITY
#include <stdlib.h> // free
#include <string.h> // memset, memcpy

#include "layers.h" // matmul_forward/backward, ffn_forward/backward
#include "util.h"   // mallocCheck, callocCheck

static void *host_alloc(size_t n) { return callocCheck(n ? n : 1, 1); }
static float *alloc_f(long n, size_t *bytes, void *(*alloc)(size_t)) {
    *bytes += sizeof(float) * n;
    return (alloc ? alloc : host_alloc)(sizeof(float) * n);
}
static int *alloc_i(long n, size_t *bytes, void *(*alloc)(size_t)) {
    *bytes += sizeof(int) * n;
    return (alloc ? alloc : host_alloc)(sizeof(int) * n);
}

void moe_acts_alloc(MoeActs *a, int N, int d, int m, int k, int f, int expert_acts, int xe_in_ye, size_t *bytes,
                    void *(*alloc)(size_t)) {
    long Nk = (long)N * k;
    a->N = N; a->d = d; a->m = m; a->k = k; a->f = f;
    a->renorm = 1;
    a->probs = alloc_f((long)N * m, bytes, alloc);
    a->logits = a->probs; // (the softmax is taken in place)
    a->lse = alloc_f(N, bytes, alloc);
    a->topk = alloc_i(Nk, bytes, alloc);
    a->gates = alloc_f(Nk, bytes, alloc);
    a->gate_sum = alloc_f(N, bytes, alloc);
    a->counts = alloc_i(m, bytes, NULL);
    a->party_counts = alloc_i(m, bytes, NULL);
    a->psum = (double *)alloc_f(2L * m, bytes, NULL); // (m doubles)
    a->party_rows = 0;
    a->offsets = alloc_i(m, bytes, NULL);
    a->dev_index = alloc_i(2 * m, bytes, alloc);
    a->row_choice = alloc_i(Nk, bytes, alloc);
    a->choice_row = alloc_i(Nk, bytes, alloc);
    a->perm = alloc_i(Nk, bytes, NULL);
    a->fill = alloc_i(m, bytes, NULL);
    a->ye = alloc_f(Nk * d, bytes, alloc);
    a->xe = xe_in_ye ? a->ye : alloc_f(Nk * d, bytes, alloc);
    a->he = expert_acts ? alloc_f(Nk * f, bytes, alloc) : NULL;
    a->ue = expert_acts ? alloc_f(Nk * f, bytes, alloc) : NULL;
    a->ae = expert_acts ? alloc_f(Nk * f, bytes, alloc) : NULL;
    a->aux = a->z = 0.0;
}

void moe_acts_free(MoeActs *a, void (*release)(void *)) {
    void *bufs[] = {a->probs, a->lse, a->topk, a->gates, a->gate_sum, a->dev_index, a->row_choice, a->choice_row,
                    a->xe != a->ye ? a->xe : NULL, a->he, a->ue, a->ae, a->ye};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) (release ? release : free)(bufs[i]);
    free(a->counts);
    free(a->party_counts);
    free(a->psum);
    free(a->offsets);
    free(a->perm);
    free(a->fill);
}

void moe_scratch_alloc(MoeScratch *s, int N, int d, int m, int k, int f, int expert_acts, int with_dxe, size_t *bytes,
                       void *(*alloc)(size_t)) {
    long Nk = (long)N * k;
    s->dye = NULL; // (the layer's ye, see moe.h)
    s->dxe_owned = with_dxe;
    s->dxe = with_dxe ? alloc_f(Nk * d, bytes, alloc) : NULL;
    s->dhe = expert_acts ? alloc_f(Nk * f, bytes, alloc) : NULL;
    s->due = expert_acts ? alloc_f(Nk * f, bytes, alloc) : NULL;
    s->dae = expert_acts ? alloc_f(Nk * f, bytes, alloc) : NULL;
    s->dgates = alloc_f(Nk, bytes, alloc);
    s->dlogits = alloc_f((long)N * m, bytes, alloc);
    s->aux_grad = alloc_f(m, bytes, NULL);
}

void moe_scratch_free(MoeScratch *s, void (*release)(void *)) {
    void *bufs[] = {s->dxe_owned ? s->dxe : NULL, s->dhe, s->due, s->dae, s->dgates, s->dlogits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) (release ? release : free)(bufs[i]);
    free(s->aux_grad);
}

void moe_route(MoeActs *a, const float *inp, const float *router, const int *order, Rng *shuffle) {
    int N = a->N, d = a->d, m = a->m, k = a->k;
    matmul_forward(a->logits, inp, router, N, d, m);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *lg = a->logits + (long)n * m;
        float *p = a->probs + (long)n * m;
        float maxv = -INFINITY;
        for (int e = 0; e < m; e++) if (lg[e] > maxv) maxv = lg[e];
        double sum = 0.0;
        for (int e = 0; e < m; e++) { p[e] = expf(lg[e] - maxv); sum += p[e]; }
        float inv = (float)(1.0 / sum);
        for (int e = 0; e < m; e++) p[e] *= inv;
        a->lse[n] = (float)(log(sum) + maxv);
        // top-k by repeated selection (k is small); ties go to the lower expert id
        int *top = a->topk + (long)n * k;
        float gsum = 0.0f;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < m; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++) if (top[i] == e) taken = 1;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            top[j] = best;
            gsum += p[best];
        }
        if (!a->renorm) gsum = 1.0f;
        a->gate_sum[n] = gsum;
        for (int j = 0; j < k; j++) a->gates[(long)n * k + j] = p[top[j]] / gsum;
    }
    // counting sort of the choices by expert, experts laid out in `order`
    memset(a->counts, 0, sizeof(int) * m);
    for (long c = 0; c < (long)N * k; c++) a->counts[a->topk[c]]++;
    int next = 0;
    for (int i = 0; i < m; i++) {
        int e = order ? order[i] : i;
        a->offsets[e] = next;
        next += a->counts[e];
    }
    int *fill = a->fill;
    memcpy(fill, a->offsets, sizeof(int) * m);
    for (long c = 0; c < (long)N * k; c++) a->row_choice[fill[a->topk[c]]++] = (int)c;
    if (shuffle) { // each expert's rows in a private random order (choice_row, set below, as scratch)
        moe_shuffle_permutation(a->perm, a->counts, a->offsets, m, shuffle);
        memcpy(a->choice_row, a->row_choice, sizeof(int) * (size_t)N * k);
        for (long row = 0; row < (long)N * k; row++) a->row_choice[row] = a->choice_row[a->perm[row]];
    }
    for (long row = 0; row < (long)N * k; row++) a->choice_row[a->row_choice[row]] = (int)row;
#pragma omp parallel for
    for (long row = 0; row < (long)N * k; row++)
        memcpy(a->xe + row * d, inp + (long)(a->row_choice[row] / k) * d, sizeof(float) * d);
    // auxiliary losses (serial sums: identical bits for any thread count)
    double z = 0.0;
    for (int e = 0; e < m; e++) {
        double sum = 0.0;
        for (int n = 0; n < N; n++) sum += a->probs[(long)n * m + e];
        a->psum[e] = sum;
    }
    a->aux = moe_aux_loss(a->counts, a->psum, N, m, k);
    for (int n = 0; n < N; n++) z += (double)a->lse[n] * a->lse[n];
    a->z = z / N;
}

double moe_aux_loss(const int *counts, const double *psum, int rows, int m, int k) {
    double aux = 0.0;
    for (int e = 0; e < m; e++) aux += ((double)counts[e] / ((double)rows * k)) * (psum[e] / rows);
    return aux * m;
}

void moe_aux_grad(float *out, const int *counts, int rows, int m, int k, float aux_coef) {
    for (int e = 0; e < m; e++) out[e] = (float)(aux_coef * (double)m * counts[e] / ((double)rows * k) / rows);
}

void moe_shuffle_permutation(int *perm, const int *counts, const int *offsets, int m, Rng *shuffle) {
    for (int e = 0; e < m; e++) {
        int *p = perm + offsets[e];
        for (int i = 0; i < counts[e]; i++) p[i] = offsets[e] + i;
        for (int i = counts[e] - 1; i > 0; i--) { // Fisher-Yates
            int j = (int)rng_below(shuffle, (uint64_t)i + 1);
            int t = p[i]; p[i] = p[j]; p[j] = t;
        }
    }
}

void moe_experts_forward(MoeActs *a, ExpertSet w) {
    int d = a->d, f = a->f;
    for (int e = 0; e < a->m; e++) {
        long r0 = a->offsets[e];
        int n = a->counts[e];
        if (!w.gate[e] || n == 0) continue;
        ffn_forward(a->ye + r0 * d, a->he + r0 * f, a->ue + r0 * f, a->ae + r0 * f, a->xe + r0 * d,
                    w.gate[e], w.up[e], w.down[e], n, d, f);
    }
}

void moe_combine(float *out, const MoeActs *a) {
    int d = a->d, k = a->k;
#pragma omp parallel for
    for (int n = 0; n < a->N; n++) {
        float *o = out + (long)n * d;
        for (int i = 0; i < d; i++) o[i] = 0.0f;
        for (int j = 0; j < k; j++) {
            float g = a->gates[(long)n * k + j];
            const float *y = a->ye + (long)a->choice_row[(long)n * k + j] * d;
            for (int i = 0; i < d; i++) o[i] += g * y[i];
        }
    }
}

void moe_combine_backward(MoeScratch *s, const float *dout, const MoeActs *a) {
    int d = a->d, k = a->k;
#pragma omp parallel for
    for (int n = 0; n < a->N; n++) {
        const float *dy = dout + (long)n * d;
        for (int j = 0; j < k; j++) {
            long c = (long)n * k + j;
            long row = a->choice_row[c];
            const float *y = a->ye + row * d;
            float *dye = s->dye + row * d;
            float g = a->gates[c], dot = 0.0f;
            for (int i = 0; i < d; i++) { dot += dy[i] * y[i]; dye[i] = g * dy[i]; }
            s->dgates[c] = dot;
        }
    }
}

void moe_experts_backward(MoeScratch *s, const MoeActs *a, ExpertSet w, ExpertSet dw) {
    int d = a->d, f = a->f;
    for (int e = 0; e < a->m; e++) {
        long r0 = a->offsets[e];
        int n = a->counts[e];
        if (!w.gate[e] || n == 0) continue;
        ffn_backward(s->dxe + r0 * d, dw.gate[e], dw.up[e], dw.down[e], s->dhe + r0 * f, s->due + r0 * f,
                     s->dae + r0 * f, s->dye + r0 * d, a->xe + r0 * d, a->he + r0 * f, a->ue + r0 * f,
                     a->ae + r0 * f, w.gate[e], w.up[e], w.down[e], n, d, f);
    }
}

void moe_route_backward(float *dinp, float *drouter, MoeScratch *s, const MoeActs *a, const float *inp,
                        const float *router, float aux_coef, float z_coef) {
    int N = a->N, d = a->d, m = a->m, k = a->k;
    // d aux / d probs[n, e] = m * frac_e / N, with frac_e = counts_e / (N k) held constant (Switch)
    float *aux_grad = s->aux_grad;
    if (a->party_rows) moe_aux_grad(aux_grad, a->party_counts, a->party_rows, m, k, aux_coef);
    else moe_aux_grad(aux_grad, a->counts, N, m, k, aux_coef);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        // unpack: every choice of token n sends its input gradient back to the token's row
        float *dx = dinp + (long)n * d;
        for (int j = 0; j < k; j++) {
            const float *src = s->dxe + (long)a->choice_row[(long)n * k + j] * d;
            for (int i = 0; i < d; i++) dx[i] += src[i];
        }
        // gates g_j = p_j / S over the chosen set: dp_j = (dg_j - sum_i dg_i g_i) / S (without renorm: S = 1 and
        // no sum)
        const float *p = a->probs + (long)n * m;
        const float *g = a->gates + (long)n * k, *dg = s->dgates + (long)n * k;
        const int *top = a->topk + (long)n * k;
        float *dl = s->dlogits + (long)n * m;
        for (int e = 0; e < m; e++) dl[e] = aux_grad[e]; // dl holds d loss / d probs for now
        float dot = 0.0f;
        for (int j = 0; j < k && a->renorm; j++) dot += dg[j] * g[j];
        for (int j = 0; j < k; j++) dl[top[j]] += (dg[j] - dot) / a->gate_sum[n];
        // softmax backward, then the z-loss term d(lse^2)/d logits = 2 lse p
        float pdot = 0.0f;
        for (int e = 0; e < m; e++) pdot += p[e] * dl[e];
        float zc = z_coef * 2.0f * a->lse[n] / N;
        for (int e = 0; e < m; e++) dl[e] = p[e] * (dl[e] - pdot) + zc * p[e];
    }
    matmul_backward(dinp, drouter, s->dlogits, inp, router, N, d, m);
}
