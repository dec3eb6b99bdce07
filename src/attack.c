// attack.c: can the owner of an expert recover another party's text from what it received?
//
// The attacker A is a party of a finished pcmoe run. It holds its own backbone and corpus, and (as a
// party) can reach every expert, so its model is: its backbone + the whole expert pool. It recorded what
// victim V sent it (privacy.record_received): on two channels, per MoE layer,
//   rows       the hidden rows routed to its experts (expert_rows), and which of its experts each reached
//   gradients  the output-gradient rows V sent back for them (output_grads)
// The victim's true bytes for those rows come from the study's ground-truth files and are used only to
// score. The attack ladder, on each channel:
//   nn        nearest neighbour (cosine) among the (row, byte) pairs the attacker's own corpus produces
//             at the same layer through its model (its own gradient rows for the gradient channel)
//   softmax   softmax regression (256 classes, Adam) on those pairs
//   pairs-K   known pairs: softmax regression on K (row, byte) pairs of the victim itself (K = 100,
//             1000: text the victim is known to contain), scored on the victim's other rows
//   align     no pairs and no weights: the victim's rows are clustered, the clusters matched to the
//             attacker's bytes by frequency, then an orthogonal map (Procrustes) from the victim's
//             space to the attacker's is refined by iterative closest point; the attacker's softmax
//             reads the mapped rows
//   expert    (rows channel) the byte the attacker's own rows most often send to the expert a row reached
//   expert-pairs  the same from 1000 known pairs of the victim
// The gradient channel is scored on the byte after each row's (an output gradient is mostly about the
// next byte, the row's target); the rows channel on the row's own byte.
// Adaptive: with the DP defence on (privacy.clip_norm) or privacy.noise_std, the attacker's own rows and
// gradient rows are passed through the same clipping and noise before every inverter is fitted.
// Settings: --white-box gives the attacker the victim's backbone (where the attack must work); a run
// trained with privacy.same_backbone_init starts every backbone from the same weights. The run's settings
// (privacy and model keys) come from the checkpoint; CONFIG gives the corpora's paths.
// Score: byte accuracy on the victim's held-out rows (the rows after the first 1000, which the pairs
// attacks may use), overall and on rare bytes (outside the attacker's 16 most frequent), against the
// majority-byte baseline (always guessing the attacker's most frequent byte).
#include "attack.h"

#include <cblas.h>  // cblas_sgemm
#include <errno.h>  // errno
#include <math.h>   // sqrt, exp
#include <stdio.h>  // FILE, printf
#include <stdlib.h> // strtol, free
#include <string.h> // strcmp, memset

#include "ckpt.h"     // ckpt_read_weights
#include "config.h"   // Config, config_load
#include "data.h"     // Dataset
#include "json.h"     // Json: --json lines
#include "model.h"    // Model
#include "privacy.h"  // privacy_clip_noise (the adaptive attacker)
#include "rng.h"      // Rng
#include "util.h"     // mallocCheck, fail, error_set, write_file_atomic

#define FEATURE_ROWS 8192  // attacker's own (row, byte) pairs per layer
#define PAIRS_MAX 1000     // victim rows the known-pairs attacks may fit on (never scored)
#define SCORED_ROWS 4000   // victim rows scored per layer and channel
#define COMMON_BYTES 16    // "rare" bytes: all but the attacker's 16 most frequent

typedef struct {
    const char *config, *ckpt_dir, *records, *json;
    int attacker, victim, white_box;
    double victim_noise; // the victim's noise multiplier (target_epsilon runs choose it per party); < 0: the config's
} AttackArgs;

static int usage_error(const char *msg) {
    fprintf(stderr,
            "pcmoe: error: attack: %s\n(usage: pcmoe attack CONFIG --checkpoint DIR --records DIR --attacker A "
            "--victim V [--white-box] [--victim-noise S] [--json FILE])\n",
            msg);
    return 2;
}

// Reads the blocks of a record file for (layer, peer); appends up to `max` rows of `width` elements.
static int read_records(const char *path, int layer, int peer, int width, size_t elem, void *out, int max, char *err,
                        size_t len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -error_set(err, len, "%s: cannot read records (was privacy.record_received set?)", path);
    int hdr[4], n = 0;
    while (fread(hdr, sizeof hdr, 1, f) == 1) {
        if (hdr[2] < 0 || hdr[3] != width) { fclose(f); return -error_set(err, len, "%s: corrupt record block", path); }
        size_t bytes = (size_t)hdr[2] * width * elem;
        char *buf = mallocCheck(bytes ? bytes : 1);
        if (fread(buf, 1, bytes, f) != bytes) {
            free(buf);
            fclose(f);
            return -error_set(err, len, "%s: truncated record block", path);
        }
        if (hdr[0] == layer && hdr[1] == peer && n < max) {
            int take = hdr[2] < max - n ? hdr[2] : max - n;
            memcpy((char *)out + (size_t)n * width * elem, buf, (size_t)take * width * elem);
            n += take;
        }
        free(buf);
    }
    fclose(f);
    return n;
}

static void normalize_rows(float *x, int n, int d) {
    for (int i = 0; i < n; i++) {
        double s = 0.0;
        for (int j = 0; j < d; j++) s += (double)x[(size_t)i * d + j] * x[(size_t)i * d + j];
        float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
        for (int j = 0; j < d; j++) x[(size_t)i * d + j] *= inv;
    }
}

// Nearest neighbour by cosine: predicted byte of each of nv victim rows.
static void attack_nn(const float *F, const uint8_t *fy, int nf, const float *V, int nv, int d, uint8_t *pred) {
    float *fn = mallocCheck(sizeof(float) * nf * d), *vn = mallocCheck(sizeof(float) * nv * d);
    memcpy(fn, F, sizeof(float) * nf * d);
    memcpy(vn, V, sizeof(float) * nv * d);
    normalize_rows(fn, nf, d);
    normalize_rows(vn, nv, d);
    enum { CHUNK = 256 };
    float *sim = mallocCheck(sizeof(float) * CHUNK * nf);
    for (int v0 = 0; v0 < nv; v0 += CHUNK) {
        int n = nv - v0 < CHUNK ? nv - v0 : CHUNK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nf, d, 1.0f, vn + (size_t)v0 * d, d, fn, d, 0.0f, sim,
                    nf);
        for (int i = 0; i < n; i++) {
            int best = 0;
            for (int j = 1; j < nf; j++) if (sim[(size_t)i * nf + j] > sim[(size_t)i * nf + best]) best = j;
            pred[v0 + i] = fy[best];
        }
    }
    free(fn); free(vn); free(sim);
}

// Per-dimension mean and std of n rows (std floored).
static void moments(const float *x, int n, int d, float *mu, float *sd) {
    for (int j = 0; j < d; j++) { mu[j] = 0.0f; sd[j] = 0.0f; }
    for (int i = 0; i < n; i++) for (int j = 0; j < d; j++) mu[j] += x[(size_t)i * d + j] / n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            float z = x[(size_t)i * d + j] - mu[j];
            sd[j] += z * z / n;
        }
    for (int j = 0; j < d; j++) sd[j] = sqrtf(sd[j]) + 1e-12f;
}

// A softmax-regression inverter fitted on (F, fy): W (256, d) on rows standardized by mu, sd.
typedef struct {
    int d;
    float *mu, *sd, *W;
} Inverter;

static void inverter_fit(Inverter *inv, const float *F, const uint8_t *fy, int nf, int d) {
    enum { C = 256, ITERS = 150 };
    inv->d = d;
    inv->mu = mallocCheck(sizeof(float) * d);
    inv->sd = mallocCheck(sizeof(float) * d);
    moments(F, nf, d, inv->mu, inv->sd);
    float *x = mallocCheck(sizeof(float) * nf * d);
    for (size_t i = 0; i < (size_t)nf * d; i++) x[i] = (F[i] - inv->mu[i % d]) / inv->sd[i % d];
    float *W = callocCheck((size_t)C * d, sizeof(float)), *g = mallocCheck(sizeof(float) * C * d);
    float *m1 = callocCheck((size_t)C * d, sizeof(float)), *m2 = callocCheck((size_t)C * d, sizeof(float));
    float *logit = mallocCheck(sizeof(float) * nf * C);
    for (int it = 1; it <= ITERS; it++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nf, C, d, 1.0f, x, d, W, d, 0.0f, logit, C);
        for (int i = 0; i < nf; i++) { // softmax - onehot, / nf
            float *l = logit + (size_t)i * C, mx = l[0], s = 0.0f;
            for (int c = 1; c < C; c++) if (l[c] > mx) mx = l[c];
            for (int c = 0; c < C; c++) { l[c] = expf(l[c] - mx); s += l[c]; }
            for (int c = 0; c < C; c++) l[c] /= s * nf;
            l[fy[i]] -= 1.0f / nf;
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, d, nf, 1.0f, logit, C, x, d, 0.0f, g, d);
        float b1c = 1.0f - powf(0.9f, it), b2c = 1.0f - powf(0.999f, it);
        for (size_t k = 0; k < (size_t)C * d; k++) {
            m1[k] = 0.9f * m1[k] + 0.1f * g[k];
            m2[k] = 0.999f * m2[k] + 0.001f * g[k] * g[k];
            W[k] -= 0.05f * (m1[k] / b1c) / (sqrtf(m2[k] / b2c) + 1e-8f);
        }
    }
    inv->W = W;
    free(x); free(g); free(m1); free(m2); free(logit);
}

// std_in: the rows are already standardized (in the inverter's space).
static void inverter_apply(const Inverter *inv, const float *V, int nv, int std_in, uint8_t *pred) {
    enum { C = 256 };
    int d = inv->d;
    float *xv = mallocCheck(sizeof(float) * nv * d), *lv = mallocCheck(sizeof(float) * nv * C);
    for (size_t i = 0; i < (size_t)nv * d; i++) xv[i] = std_in ? V[i] : (V[i] - inv->mu[i % d]) / inv->sd[i % d];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nv, C, d, 1.0f, xv, d, inv->W, d, 0.0f, lv, C);
    for (int i = 0; i < nv; i++) {
        int best = 0;
        for (int c = 1; c < C; c++) if (lv[(size_t)i * C + c] > lv[(size_t)i * C + best]) best = c;
        pred[i] = (uint8_t)best;
    }
    free(xv); free(lv);
}

static void inverter_free(Inverter *inv) { free(inv->mu); free(inv->sd); free(inv->W); }

// Eigen-decomposition of the symmetric (n, n) matrix A (destroyed) by cyclic Jacobi: eigenvalues in w,
// eigenvectors in the columns of Q.
static void jacobi_eigen(double *A, int n, double *w, double *Q) {
    for (int i = 0; i < n * n; i++) Q[i] = (i / n == i % n);
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0.0;
        for (int p = 0; p < n; p++) for (int q = p + 1; q < n; q++) off += A[p * n + q] * A[p * n + q];
        if (off < 1e-22) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                if (fabs(A[p * n + q]) < 1e-300) continue;
                double theta = (A[q * n + q] - A[p * n + p]) / (2.0 * A[p * n + q]);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0)),
                       c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int k = 0; k < n; k++) { // A = J^T A J
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = c * akp - s * akq;
                    A[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) {
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = c * apk - s * aqk;
                    A[q * n + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < n; k++) {
                    double qkp = Q[k * n + p], qkq = Q[k * n + q];
                    Q[k * n + p] = c * qkp - s * qkq;
                    Q[k * n + q] = s * qkp + c * qkq;
                }
            }
    }
    for (int i = 0; i < n; i++) w[i] = A[i * n + i];
}

// The orthogonal R (d, d) minimising sum_i |R a_i - b_i|^2 (Procrustes): R = M (M^T M)^(-1/2), M = sum b_i a_i^T.
static void procrustes(const double *M, int d, float *R) {
    double *S = mallocCheck(sizeof(double) * d * d), *Q = mallocCheck(sizeof(double) * d * d),
           *w = mallocCheck(sizeof(double) * d);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0.0;
            for (int k = 0; k < d; k++) s += M[k * d + i] * M[k * d + j];
            S[i * d + j] = s;
        }
    jacobi_eigen(S, d, w, Q);
    double wmax = 0.0;
    for (int i = 0; i < d; i++) wmax = w[i] > wmax ? w[i] : wmax;
    for (int i = 0; i < d; i++) // S = Q diag(w^-1/2) Q^T
        for (int j = 0; j < d; j++) {
            double s = 0.0;
            for (int k = 0; k < d; k++)
                s += Q[i * d + k] * Q[j * d + k] / sqrt(w[k] > 1e-12 * wmax ? w[k] : 1e-12 * wmax + 1e-300);
            S[i * d + j] = s;
        }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0.0;
            for (int k = 0; k < d; k++) s += M[i * d + k] * S[k * d + j];
            R[i * d + j] = (float)s;
        }
    free(S); free(Q); free(w);
}

enum { ALIGN_CLUSTERS = 160, KMEANS_ITERS = 15, ICP_ITERS = 10 };

// Sorts the indices idx (n) by count[idx], largest first; equal counts keep their order (insertion sort:
// n is at most 256 here).
static void sort_by_count(int *idx, int n, const int *count) {
    for (int i = 1; i < n; i++) {
        int v = idx[i], j = i;
        while (j > 0 && count[idx[j - 1]] < count[v]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = v;
    }
}

// The attacker's byte means bm (256, d), in its inverter's standardized space, for the bytes it has at
// least 3 rows of, and those bytes by frequency, most frequent first, in rank. Returns how many.
static int align_byte_means(const Inverter *inv, const float *F, const uint8_t *fy, int nf, int d, double *bm,
                            int *rank) {
    int cnt[256] = {0}, nb = 0;
    for (int i = 0; i < nf; i++) {
        cnt[fy[i]]++;
        for (int j = 0; j < d; j++) bm[fy[i] * d + j] += (F[(size_t)i * d + j] - inv->mu[j]) / inv->sd[j];
    }
    for (int b = 0; b < 256; b++)
        if (cnt[b] >= 3) {
            for (int j = 0; j < d; j++) bm[b * d + j] /= cnt[b];
            rank[nb++] = b;
        }
    sort_by_count(rank, nb, cnt);
    return nb;
}

// k-means of the victim's standardized rows x (nv, d) into kc clusters, seeded by evenly spaced rows:
// centres cen (kc, d) and sizes size (kc).
static void align_kmeans(const float *x, int nv, int d, int kc, double *cen, int *size) {
    int *asg = mallocCheck(sizeof(int) * nv);
    for (int c = 0; c < kc; c++) for (int j = 0; j < d; j++) cen[c * d + j] = x[(size_t)(c * (nv / kc)) * d + j];
    for (int it = 0; it < KMEANS_ITERS; it++) {
        for (int i = 0; i < nv; i++) {
            double best = INFINITY;
            for (int c = 0; c < kc; c++) {
                double s = 0.0;
                for (int j = 0; j < d; j++) { double z = x[(size_t)i * d + j] - cen[c * d + j]; s += z * z; }
                if (s < best) { best = s; asg[i] = c; }
            }
        }
        memset(cen, 0, sizeof(double) * kc * d);
        memset(size, 0, sizeof(int) * kc);
        for (int i = 0; i < nv; i++) {
            size[asg[i]]++;
            for (int j = 0; j < d; j++) cen[asg[i] * d + j] += x[(size_t)i * d + j];
        }
        for (int c = 0; c < kc; c++) if (size[c]) for (int j = 0; j < d; j++) cen[c * d + j] /= size[c];
    }
    free(asg);
}

// The orthogonal map best_R (d, d) from the victim's cluster centres cen (kc, d) to the attacker's byte means
// bm, by iterative closest point (each mapped centre matched to the nearest byte mean; the map refitted on
// the matches by Procrustes, weighted by cluster size) from two starts: the identity (backbones from one
// initialisation share a space), and clusters by size matched to bytes by frequency. The better fit wins.
static void align_map(const double *bm, const int *byte_rank, int nb, const double *cen, const int *size, int kc, int d,
                      float *best_R) {
    int order[ALIGN_CLUSTERS], match[ALIGN_CLUSTERS];
    for (int c = 0; c < kc; c++) order[c] = c;
    sort_by_count(order, kc, size);
    float *R = mallocCheck(sizeof(float) * d * d);
    double *M = mallocCheck(sizeof(double) * d * d), *mc = mallocCheck(sizeof(double) * d), best_fit = INFINITY;
    for (int start = 0; start < 2 && nb; start++) {
        for (int i = 0; i < d * d; i++) R[i] = (i / d == i % d);
        if (start == 1) for (int i = 0; i < kc; i++) match[order[i]] = byte_rank[i < nb ? i : nb - 1];
        double fit = 0.0;
        for (int it = 0; it <= ICP_ITERS; it++) {
            if (it > 0 || start == 1) { // the map from the matches
                memset(M, 0, sizeof(double) * d * d);
                for (int c = 0; c < kc; c++)
                    for (int i = 0; i < d; i++)
                        for (int j = 0; j < d; j++) M[i * d + j] += size[c] * bm[match[c] * d + i] * cen[c * d + j];
                double fro = 0.0; // a little of the identity, so that directions no match constrains keep a full rank
                for (int i = 0; i < d * d; i++) fro += M[i] * M[i];
                for (int i = 0; i < d; i++) M[i * d + i] += 1e-3 * sqrt(fro) + 1e-12;
                procrustes(M, d, R);
            }
            fit = 0.0;
            for (int c = 0; c < kc; c++) { // the matches from the map: each mapped centroid to its nearest byte mean
                for (int i = 0; i < d; i++) {
                    double t = 0.0;
                    for (int j = 0; j < d; j++) t += R[i * d + j] * cen[c * d + j];
                    mc[i] = t;
                }
                double best = INFINITY;
                for (int k = 0; k < nb; k++) {
                    double t = 0.0;
                    for (int j = 0; j < d; j++) { double z = mc[j] - bm[byte_rank[k] * d + j]; t += z * z; }
                    if (t < best) { best = t; match[c] = byte_rank[k]; }
                }
                fit += size[c] * best;
            }
        }
        if (fit < best_fit) { best_fit = fit; memcpy(best_R, R, sizeof(float) * d * d); }
    }
    free(R); free(M); free(mc);
}

// No pairs, no weights: both sides standardized; the victim's rows in ALIGN_CLUSTERS k-means clusters; an
// orthogonal map from the victim's space to the attacker's (align_map). inv: the attacker's inverter,
// applied to the mapped rows.
static void attack_align(const Inverter *inv, const float *F, const uint8_t *fy, int nf, const float *V, int nv, int d,
                         uint8_t *pred) {
    float *x = mallocCheck(sizeof(float) * nv * d), *mu = mallocCheck(sizeof(float) * d),
          *sd = mallocCheck(sizeof(float) * d);
    moments(V, nv, d, mu, sd);
    for (size_t i = 0; i < (size_t)nv * d; i++) x[i] = (V[i] - mu[i % d]) / sd[i % d];
    double *bm = callocCheck((size_t)256 * d, sizeof(double));
    int byte_rank[256], nb = align_byte_means(inv, F, fy, nf, d, bm, byte_rank);
    int kc = nv < ALIGN_CLUSTERS ? nv : ALIGN_CLUSTERS, size[ALIGN_CLUSTERS];
    double *cen = mallocCheck(sizeof(double) * ALIGN_CLUSTERS * d);
    align_kmeans(x, nv, d, kc, cen, size);
    float *best_R = mallocCheck(sizeof(float) * d * d);
    align_map(bm, byte_rank, nb, cen, size, kc, d, best_R);
    float *y = mallocCheck(sizeof(float) * nv * d); // the mapped rows, in the inverter's standardized space
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nv, d, d, 1.0f, x, d, best_R, d, 0.0f, y, d);
    if (nb) inverter_apply(inv, y, nv, 1, pred);
    else memset(pred, 0, (size_t)nv);
    free(x); free(mu); free(sd); free(bm); free(cen); free(best_R); free(y);
}

// The attacker's own rows at every MoE layer, through its model: the rows it would send (ln2) with their
// bytes and the experts each went to, and the output-gradient rows of its own batches.
typedef struct {
    int n;          // pairs per layer
    float *rows;    // (L, n, d)
    uint8_t *bytes; // (n) the input byte of row i (the same at every layer)
    int *expert;    // (L, n, k) the experts row i's choices reached
    float *grads;   // (L, n, d) output-gradient rows, one per (token, choice), the first n
    uint8_t *gbytes; // (L, n) their target bytes (the byte after the row's: what an output gradient is about)
} OwnPairs;

static void own_pairs(OwnPairs *o, Model *m, Dataset *ds, const ModelConfig *mc, int B, int T) {
    int L = mc->n_layers, d = mc->d, N = B * T, k = mc->top_k;
    o->n = (FEATURE_ROWS / N) * N;
    if (o->n == 0) o->n = N;
    o->rows = mallocCheck(sizeof(float) * (size_t)L * o->n * d);
    o->grads = mallocCheck(sizeof(float) * (size_t)L * o->n * d);
    o->bytes = mallocCheck((size_t)o->n);
    o->gbytes = mallocCheck((size_t)L * o->n);
    o->expert = mallocCheck(sizeof(int) * (size_t)L * o->n * k);
    Token *tok = mallocCheck(sizeof(Token) * N), *tgt = mallocCheck(sizeof(Token) * N);
    for (int b = 0; b * N < o->n; b++) {
        data_train_batch(ds, tok, tgt, B, T);
        model_zero_grad(m);
        model_forward(m, tok, tgt);
        for (int l = 0; l < L; l++) {
            if (!model_layer_is_moe(mc, l)) continue;
            memcpy(o->rows + ((size_t)l * o->n + (size_t)b * N) * d, m->acts[l].ln2, sizeof(float) * N * d);
            memcpy(o->expert + ((size_t)l * o->n + (size_t)b * N) * k, m->acts[l].moe.topk, sizeof(int) * N * k);
        }
        for (int i = 0; i < N; i++) o->bytes[(size_t)b * N + i] = (uint8_t)tok[i]; // (byte-level tokens)
        model_backward(m, tok, tgt); // each MoE layer's ye now holds its output gradients (packed rows)
        for (int l = 0; l < L; l++) {
            if (!model_layer_is_moe(mc, l)) continue;
            const MoeActs *a = &m->acts[l].moe;
            for (int i = 0; i < N; i++) { // every k-th of the N*k packed rows (all experts' rows alike)
                size_t r = (size_t)i * k;
                memcpy(o->grads + ((size_t)l * o->n + (size_t)b * N + i) * d, a->ye + r * d, sizeof(float) * d);
                o->gbytes[(size_t)l * o->n + (size_t)b * N + i] = (uint8_t)tgt[a->row_choice[r] / k];
            }
        }
    }
    free(tok);
    free(tgt);
}

static void own_pairs_free(OwnPairs *o) {
    free(o->rows);
    free(o->grads);
    free(o->bytes);
    free(o->gbytes);
    free(o->expert);
}

// The victim's rows of one channel at one layer: the first up to PAIRS_MAX (the pairs attacks' pool),
// then up to SCORED_ROWS scored ones.
typedef struct {
    int n, n_pairs;  // rows read, and how many of them are the pairs pool
    float *x;        // (n, d)
    uint8_t *y;      // (n) true bytes
    int *expert;     // (n) the expert each reached (rows channel), or NULL
} VictimRows;

static int victim_rows(VictimRows *v, const char *dir, int attacker, int victim, int layer, int d, int grads, char *err,
                       size_t len) {
    char rows[4200], truth[4200], experts[4200];
    int max = PAIRS_MAX + SCORED_ROWS;
    snprintf(rows, sizeof rows, "%s/%s_%d.bin", dir, grads ? "received_grads_party" : "received_party", attacker);
    snprintf(truth, sizeof truth, "%s/%s_%d.bin", dir, grads ? "truth_grads_party" : "truth_party", victim);
    snprintf(experts, sizeof experts, "%s/received_experts_party_%d.bin", dir, attacker);
    v->x = mallocCheck(sizeof(float) * (size_t)max * d);
    v->y = mallocCheck((size_t)max);
    v->expert = grads ? NULL : mallocCheck(sizeof(int) * (size_t)max);
    int n = read_records(rows, layer, victim, d, sizeof(float), v->x, max, err, len);
    int nt = n < 0 ? 0 : read_records(truth, layer, attacker, 1, 1, v->y, max, err, len);
    int ne = n < 0 || nt < 0 || grads ? n
                                      : read_records(experts, layer, victim, 1, sizeof(int), v->expert, max, err, len);
    if (n < 0 || nt < 0 || ne < 0) return 2;
    if (n != nt || n != ne)
        return error_set(err, len, "%s: layer %d: %d recorded rows but %d true bytes and %d expert ids", rows, layer, n,
                         nt, ne);
    v->n = n;
    v->n_pairs = n > 2 * PAIRS_MAX ? PAIRS_MAX : n / 2;
    return 0;
}

static void victim_rows_free(VictimRows *v) { free(v->x); free(v->y); free(v->expert); }

// ---------------------------------------------------------------------------------------------------
// The ladder: a table of attacks. Each sees one channel of one MoE layer; it may fit something (on the
// attacker's own pairs, or on known pairs of the victim), then predicts the byte of every scored row.

enum { CHANNEL_ROWS = 1, CHANNEL_GRADS = 2 };

// What every attack of one (layer, channel) sees.
typedef struct {
    int channel;            // CHANNEL_ROWS or CHANNEL_GRADS
    int layer, d, k, m;     // the layer, d_model, top_k, n_experts
    const float *F;         // (nf, d) the attacker's own rows (or gradient rows) at this layer
    const uint8_t *fy;      // (nf) their bytes
    int nf;
    const OwnPairs *own;    // all of the attacker's own pairs (the experts its rows reached)
    const VictimRows *v;    // the victim's rows: the pairs pool, then the scored ones
    const float *VS;        // (ns, d) the scored rows
    int ns;
    const Inverter *inv;    // the attacker's softmax on its own pairs (softmax, align)
    int major;              // the attacker's most frequent byte
} AttackInput;

// What an attack fitted.
typedef struct {
    Inverter inv;           // pairs-K: a softmax on K known pairs of the victim
    int *table;             // expert attacks: (m, 256) how often each byte went to each expert
} AttackFit;

typedef struct {
    const char *name;
    int channels;           // CHANNEL_ROWS | CHANNEL_GRADS: where it applies
    int pairs;              // known victim pairs it fits on (it runs only when the pool holds them)
    void (*fit)(AttackFit *f, const AttackInput *x, int pairs); // NULL: nothing to fit
    void (*predict)(const AttackFit *f, const AttackInput *x, uint8_t *pred);
    void (*release)(AttackFit *f);                               // NULL: nothing to free
} Attack;

static void predict_nn(const AttackFit *f, const AttackInput *x, uint8_t *pred) {
    (void)f;
    attack_nn(x->F, x->fy, x->nf, x->VS, x->ns, x->d, pred);
}

static void predict_softmax(const AttackFit *f, const AttackInput *x, uint8_t *pred) {
    (void)f;
    inverter_apply(x->inv, x->VS, x->ns, 0, pred);
}

static void fit_pairs(AttackFit *f, const AttackInput *x, int pairs) {
    inverter_fit(&f->inv, x->v->x, x->v->y, pairs, x->d);
}
static void predict_pairs(const AttackFit *f, const AttackInput *x, uint8_t *pred) {
    inverter_apply(&f->inv, x->VS, x->ns, 0, pred);
}
static void release_pairs(AttackFit *f) { inverter_free(&f->inv); }

static void predict_align(const AttackFit *f, const AttackInput *x, uint8_t *pred) {
    (void)f;
    attack_align(x->inv, x->F, x->fy, x->nf, x->VS, x->ns, x->d, pred);
}

// expert: the byte the attacker's own rows most often send to each expert
static void fit_expert_own(AttackFit *f, const AttackInput *x, int pairs) {
    (void)pairs;
    f->table = callocCheck((size_t)x->m * 256, sizeof(int));
    for (int i = 0; i < x->nf; i++)
        for (int j = 0; j < x->k; j++)
            f->table[x->own->expert[((size_t)x->layer * x->nf + i) * x->k + j] * 256 + x->own->bytes[i]]++;
}

// expert-pairs: the same from known pairs of the victim
static void fit_expert_pairs(AttackFit *f, const AttackInput *x, int pairs) {
    f->table = callocCheck((size_t)x->m * 256, sizeof(int));
    for (int i = 0; i < pairs; i++)
        if (x->v->expert[i] >= 0 && x->v->expert[i] < x->m) f->table[x->v->expert[i] * 256 + x->v->y[i]]++;
}

static void predict_expert(const AttackFit *f, const AttackInput *x, uint8_t *pred) {
    for (int i = 0; i < x->ns; i++) {
        int e = x->v->expert[x->v->n_pairs + i], best = x->major;
        if (e >= 0 && e < x->m)
            for (int b = 0; b < 256; b++)
                if (f->table[e * 256 + b] > f->table[e * 256 + best]) best = b;
        pred[i] = (uint8_t)best;
    }
}

static void release_expert(AttackFit *f) { free(f->table); }

static const Attack ATTACKS[] = {
    {"nn", CHANNEL_ROWS | CHANNEL_GRADS, 0, NULL, predict_nn, NULL},
    {"softmax", CHANNEL_ROWS | CHANNEL_GRADS, 0, NULL, predict_softmax, NULL},
    {"pairs-100", CHANNEL_ROWS | CHANNEL_GRADS, 100, fit_pairs, predict_pairs, release_pairs},
    {"pairs-1000", CHANNEL_ROWS | CHANNEL_GRADS, 1000, fit_pairs, predict_pairs, release_pairs},
    {"align", CHANNEL_ROWS | CHANNEL_GRADS, 0, NULL, predict_align, NULL},
    {"expert", CHANNEL_ROWS, 0, fit_expert_own, predict_expert, release_expert},
    {"expert-pairs", CHANNEL_ROWS, 1000, fit_expert_pairs, predict_expert, release_expert},
};
#define N_ATTACKS ((int)(sizeof ATTACKS / sizeof ATTACKS[0]))

// ---------------------------------------------------------------------------------------------------
// The study: the attacker's model and own pairs, the victim's recorded rows, the ladder, the scores.

typedef struct {
    AttackArgs a;
    Config *c;              // the run's settings (from its checkpoint), CONFIG's corpus paths
    ModelConfig mc;
    Model m;                // the attacker's backbone (the victim's when white-box) and every expert
    Dataset ds;             // the attacker's corpus
    OwnPairs own;
    int major;              // the attacker's most frequent byte (the baseline's guess)
    int common[256];        // 1 for the attacker's COMMON_BYTES most frequent bytes
    const char *setting, *defence;
    Json js;                // the --json lines, written whole at the end
} Study;

// The command line. Returns -1 to go on, or the exit status.
static int attack_args(AttackArgs *a, int argc, char **argv) {
    *a = (AttackArgs){.attacker = -1, .victim = -1, .victim_noise = -1.0};
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--white-box")) { a->white_box = 1; continue; }
        if (o[0] != '-') {
            if (a->config) return usage_error("one CONFIG only");
            a->config = o;
            continue;
        }
        if (i + 1 >= argc) return usage_error("an option lacks its value");
        const char *v = argv[++i];
        char *end;
        if (!strcmp(o, "--checkpoint")) a->ckpt_dir = v;
        else if (!strcmp(o, "--records")) a->records = v;
        else if (!strcmp(o, "--json")) a->json = v;
        else if (!strcmp(o, "--attacker")) a->attacker = (int)strtol(v, NULL, 10);
        else if (!strcmp(o, "--victim")) a->victim = (int)strtol(v, NULL, 10);
        else if (!strcmp(o, "--victim-noise")) {
            a->victim_noise = strtod(v, &end);
            if (*end || !(a->victim_noise >= 0)) return usage_error("--victim-noise: not a number >= 0");
        } else return usage_error("unknown option");
    }
    if (!a->config || !a->ckpt_dir || !a->records || a->attacker < 0 || a->victim < 0)
        return usage_error("CONFIG, --checkpoint, --records, --attacker and --victim are required");
    return -1;
}

// The run's own settings (privacy keys, model) from the checkpoint; the corpora's paths from CONFIG.
// Returns -1 to go on, or the exit status.
static int attack_config(Study *st) {
    const AttackArgs *a = &st->a;
    char err[2048] = "", path[CONFIG_PATH_LEN + 64], why[1024] = "";
    st->c = mallocCheck(sizeof(Config));
    if (config_load(st->c, a->config, NULL, 0, err, sizeof err)) {
        fprintf(stderr, "pcmoe: error: %s\n", err);
        return 2;
    }
    size_t text_len = 1 << 16;
    char *text = mallocCheck(text_len);
    CkptMeta meta;
    Config *run = mallocCheck(sizeof(Config));
    ckpt_party_file(path, sizeof path, a->ckpt_dir, a->attacker);
    int bad = ckpt_peek(path, text, text_len, &meta, err, sizeof err) || config_load_text(run, text, why, sizeof why);
    if (!bad && meta.version < 2)
        fprintf(stderr, "pcmoe: warning: %s: written before checkpoints carried checksums (format %d): read "
                "unverified\n", a->ckpt_dir, meta.version);
    if (!bad) {
        memcpy(run->data_path, st->c->data_path, sizeof st->c->data_path);
        *st->c = *run;
    }
    free(text);
    free(run);
    if (bad) { fprintf(stderr, "pcmoe: error: %s\n", err[0] ? err : why); return 2; }
    const Config *c = st->c;
    if (c->mode != MODE_PCMOE || c->n_parties < 2) return usage_error("needs a pcmoe config of at least 2 parties");
    if (c->tokenizer[0] || c->vocab_size != 256)
        return usage_error("the study is of byte-level models (model.vocab_size = 256, no model.tokenizer): its "
                           "attacks recover bytes");
    if (a->attacker >= c->n_parties || a->victim >= c->n_parties || a->attacker == a->victim)
        return usage_error("--attacker and --victim must be two different parties");
    if (c->target_epsilon > 0 && a->victim_noise < 0)
        return usage_error("the run chose each party's noise for privacy.target_epsilon: give the victim's with "
                           "--victim-noise (its summary.json)");
    return -1;
}

// The attacker's model and own pairs, its byte statistics, and (adaptive) its pairs through the run's
// defence. Returns -1 to go on, or the exit status.
static int attack_setup(Study *st) {
    const Config *c = st->c;
    const AttackArgs *a = &st->a;
    char err[2048];
    st->mc = model_config_from(c);
    model_create(&st->m, &st->mc, NULL, 1, c->batch_size, c->seq_len);
    if (ckpt_read_weights(&st->m, a->ckpt_dir, a->white_box ? a->victim : a->attacker, 0, c->n_parties,
                          c->ranks_per_party, err, sizeof err) ||
        data_load(&st->ds, c->data_path[a->attacker], c->val_fraction, c->seq_len, 12345, NULL, -1, err, sizeof err)) {
        fprintf(stderr, "pcmoe: error: %s\n", err);
        return 2;
    }
    own_pairs(&st->own, &st->m, &st->ds, &st->mc, c->batch_size, c->seq_len);
    int nf = st->own.n, counts[256] = {0}, L = c->n_layers, d = c->d_model;
    for (int i = 0; i < nf; i++) counts[st->own.bytes[i]]++;
    for (int b = 1; b < 256; b++) if (counts[b] > counts[st->major]) st->major = b;
    for (int r = 0; r < COMMON_BYTES; r++) { // the attacker's most frequent bytes
        int best = -1;
        for (int b = 0; b < 256; b++)
            if (!st->common[b] && counts[b] && (best < 0 || counts[b] > counts[best])) best = b;
        if (best >= 0) st->common[best] = 1;
    }
    // the adaptive attacker: its own pairs pass through the victim's defence
    double noise = a->victim_noise >= 0 ? a->victim_noise : c->noise_multiplier;
    Rng rng;
    rng_seed(&rng, 0xA77AC4ULL);
    if (c->clip_norm > 0) {
        privacy_clip_noise(st->own.rows, L * nf, d, c->clip_norm, (float)noise, &rng);
        privacy_clip_noise(st->own.grads, L * nf, d, c->grad_clip_norm, (float)noise, &rng);
    } else if (c->noise_std > 0) {
        for (size_t i = 0; i < (size_t)L * nf * d; i++) st->own.rows[i] += c->noise_std * rng_normal(&rng);
    }
    st->setting = a->white_box ? "white-box" : (c->same_backbone_init ? "same-init" : "black-box");
    st->defence = c->clip_norm > 0 ? "dp" : c->noise_std > 0 ? "noise" : "none";
    return -1;
}

// One attack's score on the scored rows: a table row on stdout, and a --json line.
static void attack_score(Study *st, const AttackInput *x, const char *name, const uint8_t *pred) {
    const uint8_t *ty = x->v->y + x->v->n_pairs;
    int ns = x->ns, hit = 0, base = 0, rare = 0, rare_hit = 0;
    for (int i = 0; i < ns; i++) {
        hit += pred[i] == ty[i];
        base += ty[i] == st->major;
        if (!st->common[ty[i]]) { rare++; rare_hit += pred[i] == ty[i]; }
    }
    double acc = (double)hit / ns, bl = (double)base / ns, racc = rare ? (double)rare_hit / rare : 0.0;
    const char *channel = x->channel == CHANNEL_GRADS ? "gradients" : "rows";
    printf("| %s | %s | %s | %d | %d | %.3f | %.3f | %.3f | %+.3f |\n", st->setting, channel, name, x->layer, ns, acc,
           racc, bl, acc - bl);
    if (!st->a.json) return;
    Json *j = &st->js;
    json_open_object(j);
    json_member_string(j, "setting", st->setting);
    json_member_string(j, "defence", st->defence);
    json_member_string(j, "channel", channel);
    json_member_string(j, "attack", name);
    json_member_int(j, "layer", x->layer);
    json_member_int(j, "rows", ns);
    json_member_fixed(j, "accuracy", acc, 6);
    json_member_int(j, "rare_rows", rare);
    json_member_fixed(j, "rare_accuracy", racc, 6);
    json_member_fixed(j, "baseline", bl, 6);
    json_close_object(j);
    json_end_line(j);
}

// Every attack of the table that applies, on one channel of one MoE layer. Returns 0, or 2 when the
// victim's records cannot be read.
static int attack_channel(Study *st, int layer, int channel, uint8_t *pred) {
    const Config *c = st->c;
    int d = c->d_model, nf = st->own.n, grads = channel == CHANNEL_GRADS;
    char err[2048];
    VictimRows v = {0};
    if (victim_rows(&v, st->a.records, st->a.attacker, st->a.victim, layer, d, grads, err, sizeof err)) {
        fprintf(stderr, "pcmoe: error: %s\n", err);
        victim_rows_free(&v);
        return 2;
    }
    AttackInput x = {.channel = channel, .layer = layer, .d = d, .k = st->mc.top_k, .m = st->mc.n_experts,
                     .F = (grads ? st->own.grads : st->own.rows) + (size_t)layer * nf * d,
                     .fy = grads ? st->own.gbytes + (size_t)layer * nf : st->own.bytes, .nf = nf, .own = &st->own,
                     .v = &v, .VS = v.x + (size_t)v.n_pairs * d, .ns = v.n - v.n_pairs, .major = st->major};
    if (x.ns > 0) { // scored: the rows after the pairs pool
        Inverter inv;
        inverter_fit(&inv, x.F, x.fy, nf, d);
        x.inv = &inv;
        for (int i = 0; i < N_ATTACKS; i++) {
            const Attack *at = &ATTACKS[i];
            if (!(at->channels & channel) || v.n_pairs < at->pairs) continue;
            AttackFit f = {0};
            if (at->fit) at->fit(&f, &x, at->pairs);
            at->predict(&f, &x, pred);
            if (at->release) at->release(&f);
            attack_score(st, &x, at->name, pred);
        }
        inverter_free(&inv);
    }
    victim_rows_free(&v);
    return 0;
}

static void attack_free(Study *st) {
    if (st->own.rows) own_pairs_free(&st->own);
    if (st->m.tensors) model_free(&st->m);
    data_free(&st->ds);
    json_free(&st->js);
    free(st->c);
}

int attack_main(int argc, char **argv) {
    Study st;
    memset(&st, 0, sizeof st);
    int rc = attack_args(&st.a, argc, argv);
    if (rc < 0) rc = attack_config(&st);
    if (rc < 0) rc = attack_setup(&st);
    if (rc >= 0) { attack_free(&st); return rc; }
    printf("| setting | channel | attack | layer | scored rows | accuracy | on rare bytes | majority-byte baseline | "
           "lift |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    uint8_t *pred = mallocCheck(PAIRS_MAX + SCORED_ROWS);
    rc = 0;
    for (int l = 0; l < st.c->n_layers && !rc; l++) {
        if (!model_layer_is_moe(&st.mc, l)) continue;
        rc = attack_channel(&st, l, CHANNEL_ROWS, pred);
        if (!rc) rc = attack_channel(&st, l, CHANNEL_GRADS, pred);
    }
    char err[2048];
    if (st.a.json && !rc && json_write(&st.js, st.a.json, err, sizeof err)) {
        fprintf(stderr, "pcmoe: error: --json %s\n", err);
        rc = 1;
    }
    free(pred);
    attack_free(&st);
    return rc;
}
