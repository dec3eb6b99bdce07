// attack.c: can the owner of an expert recover another party's text from the rows it received?
//
// The attacker A is a party of a finished pcmoe run. It holds its own backbone and corpus, and (as a
// party) can reach every expert, so its model is: its backbone + the whole expert pool. It recorded the
// rows victim V sent it (privacy.record_received); the victim's true bytes for those rows come from the
// study's ground-truth file and are used only to score the attack.
//   nn       nearest neighbour (cosine) of each victim row among the rows the attacker's own corpus
//            produces at the same MoE layer through its model; predicts that row's byte
//   softmax  softmax regression (256 classes, Adam) trained on the attacker's own (row, byte) pairs
// Controls: --white-box gives the attacker the victim's backbone (where the attack must work), and a
// run trained with privacy.same_backbone_init = true starts every backbone from the same weights.
// Score: byte-recovery accuracy against the majority-byte baseline (always guessing the attacker's
// most common byte).
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
#include "model.h"    // Model
#include "util.h"     // mallocCheck, fail, error_set, write_file_atomic

#define FEATURE_ROWS 8192  // attacker's own (row, byte) pairs per layer
#define VICTIM_ROWS 4000   // victim rows scored per layer

typedef struct {
    const char *config, *ckpt_dir, *records, *json;
    int attacker, victim, white_box;
} AttackArgs;

static int usage_error(const char *msg) {
    fprintf(stderr, "pcmoe: error: attack: %s\n(usage: pcmoe attack CONFIG --checkpoint DIR --records DIR --attacker A --victim V [--white-box] [--json FILE])\n", msg);
    return 2;
}

// Reads the blocks of a record file for (layer, peer); appends up to `max` rows of `width` elements.
static int read_records(const char *path, int layer, int peer, int width, size_t elem, void *out, int max, char *err, size_t len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -error_set(err, len, "%s: cannot read records (was privacy.record_received set?)", path);
    int hdr[4], n = 0;
    while (fread(hdr, sizeof hdr, 1, f) == 1) {
        if (hdr[2] < 0 || hdr[3] != width) { fclose(f); return -error_set(err, len, "%s: corrupt record block", path); }
        size_t bytes = (size_t)hdr[2] * width * elem;
        char *buf = mallocCheck(bytes ? bytes : 1);
        if (fread(buf, 1, bytes, f) != bytes) { free(buf); fclose(f); return -error_set(err, len, "%s: truncated record block", path); }
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
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nf, d, 1.0f, vn + (size_t)v0 * d, d, fn, d, 0.0f, sim, nf);
        for (int i = 0; i < n; i++) {
            int best = 0;
            for (int j = 1; j < nf; j++) if (sim[(size_t)i * nf + j] > sim[(size_t)i * nf + best]) best = j;
            pred[v0 + i] = fy[best];
        }
    }
    free(fn); free(vn); free(sim);
}

// Softmax regression on standardized rows, full-batch Adam.
static void attack_softmax(const float *F, const uint8_t *fy, int nf, const float *V, int nv, int d, uint8_t *pred) {
    enum { C = 256, ITERS = 150 };
    float *mu = callocCheck(d, sizeof(float)), *sd = callocCheck(d, sizeof(float));
    for (int i = 0; i < nf; i++) for (int j = 0; j < d; j++) mu[j] += F[(size_t)i * d + j] / nf;
    for (int i = 0; i < nf; i++) for (int j = 0; j < d; j++) { float z = F[(size_t)i * d + j] - mu[j]; sd[j] += z * z / nf; }
    for (int j = 0; j < d; j++) sd[j] = sqrtf(sd[j]) + 1e-6f;
    float *x = mallocCheck(sizeof(float) * nf * d), *xv = mallocCheck(sizeof(float) * nv * d);
    for (size_t i = 0; i < (size_t)nf * d; i++) x[i] = (F[i] - mu[i % d]) / sd[i % d];
    for (size_t i = 0; i < (size_t)nv * d; i++) xv[i] = (V[i] - mu[i % d]) / sd[i % d];
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
    float *lv = mallocCheck(sizeof(float) * nv * C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nv, C, d, 1.0f, xv, d, W, d, 0.0f, lv, C);
    for (int i = 0; i < nv; i++) {
        int best = 0;
        for (int c = 1; c < C; c++) if (lv[(size_t)i * C + c] > lv[(size_t)i * C + best]) best = c;
        pred[i] = (uint8_t)best;
    }
    free(mu); free(sd); free(x); free(xv); free(W); free(g); free(m1); free(m2); free(logit); free(lv);
}

int attack_main(int argc, char **argv) {
    AttackArgs a = {.attacker = -1, .victim = -1};
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--white-box")) { a.white_box = 1; continue; }
        if (o[0] != '-') { if (a.config) return usage_error("one CONFIG only"); a.config = o; continue; }
        if (i + 1 >= argc) return usage_error("an option lacks its value");
        const char *v = argv[++i];
        if (!strcmp(o, "--checkpoint")) a.ckpt_dir = v;
        else if (!strcmp(o, "--records")) a.records = v;
        else if (!strcmp(o, "--json")) a.json = v;
        else if (!strcmp(o, "--attacker")) a.attacker = (int)strtol(v, NULL, 10);
        else if (!strcmp(o, "--victim")) a.victim = (int)strtol(v, NULL, 10);
        else return usage_error("unknown option");
    }
    if (!a.config || !a.ckpt_dir || !a.records || a.attacker < 0 || a.victim < 0) return usage_error("CONFIG, --checkpoint, --records, --attacker and --victim are required");
    Config *c = mallocCheck(sizeof(Config));
    char err[2048];
    if (config_load(c, a.config, NULL, 0, err, sizeof err)) { fprintf(stderr, "pcmoe: error: %s\n", err); return 2; }
    if (c->mode != MODE_PCMOE || c->n_parties < 2) return usage_error("needs a pcmoe config of at least 2 parties");
    if (a.attacker >= c->n_parties || a.victim >= c->n_parties || a.attacker == a.victim) return usage_error("--attacker and --victim must be two different parties");

    // the attacker's model: a backbone (its own; the victim's when white-box) and every expert
    ModelConfig mc = model_config_from(c);
    int B = c->batch_size, T = c->seq_len, d = c->d_model, N = B * T;
    Model m;
    model_create(&m, &mc, NULL, 1, B, T);
    if (ckpt_read_weights(&m, a.ckpt_dir, a.white_box ? a.victim : a.attacker, 0, c->n_parties, err, sizeof err)) {
        fprintf(stderr, "pcmoe: error: %s\n", err);
        return 2;
    }
    Dataset ds;
    if (data_load(&ds, c->data_path[a.attacker], c->val_fraction, T, 12345, err, sizeof err)) { fprintf(stderr, "pcmoe: error: %s\n", err); return 2; }

    // the attacker's own (row, byte) pairs at every MoE layer
    int L = c->n_layers, nf = (FEATURE_ROWS / N) * N;
    if (nf == 0) nf = N;
    float *feat = mallocCheck(sizeof(float) * (size_t)L * nf * d);
    uint8_t *fy = mallocCheck((size_t)nf), *tok = mallocCheck(N), *tgt = mallocCheck(N);
    for (int b = 0; b * N < nf; b++) {
        data_train_batch(&ds, tok, tgt, B, T);
        model_forward(&m, tok, tgt);
        memcpy(fy + (size_t)b * N, tok, N);
        for (int l = 0; l < L; l++)
            if (model_layer_is_moe(&mc, l)) memcpy(feat + ((size_t)l * nf + (size_t)b * N) * d, m.acts[l].ln2, sizeof(float) * N * d);
    }
    int counts[256] = {0}, major = 0;
    for (int i = 0; i < nf; i++) counts[fy[i]]++;
    for (int b = 1; b < 256; b++) if (counts[b] > counts[major]) major = b;

    char rows_path[4200], truth_path[4200];
    snprintf(rows_path, sizeof rows_path, "%s/received_party_%d.bin", a.records, a.attacker);
    snprintf(truth_path, sizeof truth_path, "%s/truth_party_%d.bin", a.records, a.victim);
    float *vr = mallocCheck(sizeof(float) * VICTIM_ROWS * d);
    uint8_t *vt = mallocCheck(VICTIM_ROWS), *pred = mallocCheck(VICTIM_ROWS);
    char *js_text = NULL; // the --json lines, written whole at the end
    size_t js_size = 0;
    FILE *js = a.json ? open_memstream(&js_text, &js_size) : NULL;
    if (a.json && !js) fail("open_memstream: %s", strerror(errno));
    const char *setting = a.white_box ? "white-box" : (c->same_backbone_init ? "same-init" : "black-box");
    printf("| setting | attack | layer | victim rows | accuracy | majority-byte baseline | lift |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    int rc = 0;
    for (int l = 0; l < L && !rc; l++) {
        if (!model_layer_is_moe(&mc, l)) continue;
        int nv = read_records(rows_path, l, a.victim, d, sizeof(float), vr, VICTIM_ROWS, err, sizeof err);
        int nt = nv < 0 ? 0 : read_records(truth_path, l, a.attacker, 1, 1, vt, VICTIM_ROWS, err, sizeof err);
        if (nv < 0 || nt < 0) { fprintf(stderr, "pcmoe: error: %s\n", err); rc = 2; break; }
        if (nv != nt) { fprintf(stderr, "pcmoe: error: layer %d: %d recorded rows but %d true bytes\n", l, nv, nt); rc = 2; break; }
        if (nv == 0) continue;
        int base = 0;
        for (int i = 0; i < nv; i++) base += vt[i] == major;
        for (int k = 0; k < 2; k++) {
            const char *name = k ? "softmax" : "nn";
            if (k) attack_softmax(feat + (size_t)l * nf * d, fy, nf, vr, nv, d, pred);
            else attack_nn(feat + (size_t)l * nf * d, fy, nf, vr, nv, d, pred);
            int hit = 0;
            for (int i = 0; i < nv; i++) hit += pred[i] == vt[i];
            double acc = (double)hit / nv, bl = (double)base / nv;
            printf("| %s | %s | %d | %d | %.3f | %.3f | %+.3f |\n", setting, name, l, nv, acc, bl, acc - bl);
            if (js) fprintf(js, "{\"setting\":\"%s\",\"attack\":\"%s\",\"layer\":%d,\"rows\":%d,\"accuracy\":%.6f,\"baseline\":%.6f}\n", setting, name, l, nv, acc, bl);
        }
    }
    if (js) {
        fclose(js);
        if (!rc && write_file_atomic(a.json, js_text, js_size, err, sizeof err)) { fprintf(stderr, "pcmoe: error: --json %s\n", err); rc = 1; }
        free(js_text);
    }
    free(feat); free(fy); free(tok); free(tgt); free(vr); free(vt); free(pred); free(c);
    data_free(&ds);
    model_free(&m);
    return rc;
}
