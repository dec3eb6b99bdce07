// optim.c: AdamW, learning-rate schedule, gradient clipping.
#include "optim.h"

#include <math.h>   // cos, sqrt, sqrtf, pow
#include <stdlib.h> // free

#include "backend.h" // Backend
#include "util.h"    // mallocCheck

float optim_lr(const OptimConfig *o, int step) {
    if (step < o->warmup_steps) return o->lr * (float)(step + 1) / (float)o->warmup_steps;
    int span = o->total_steps - o->warmup_steps;
    double progress = span > 0 ? (double)(step - o->warmup_steps) / span : 1.0;
    if (progress > 1.0) progress = 1.0;
    return (float)(o->min_lr + 0.5 * (o->lr - o->min_lr) * (1.0 + cos(3.14159265358979323846 * progress)));
}

double optim_sum_squares(const float *g, size_t n) {
    // fixed-size chunks summed in parallel (each in the vector lanes' order), then the partial sums in order:
    // deterministic
    enum { CHUNK = 1 << 16 };
    size_t n_chunks = (n + CHUNK - 1) / CHUNK;
    double total = 0.0;
    double partial[256];
    for (size_t base = 0; base < n_chunks; base += 256) {
        size_t cnt = n_chunks - base < 256 ? n_chunks - base : 256;
#pragma omp parallel for
        for (size_t c = 0; c < cnt; c++) {
            size_t lo = (base + c) * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (size_t i = lo; i < hi; i++) s += (double)g[i] * g[i];
            partial[c] = s;
        }
        for (size_t c = 0; c < cnt; c++) total += partial[c];
    }
    return total;
}

float optim_clip_scale(const OptimConfig *o, double grad_norm) {
    if (o->grad_clip > 0.0f && grad_norm > o->grad_clip) return (float)(o->grad_clip / grad_norm);
    return 1.0f;
}

void optim_group_norms(const Backend *be, const ParamTensor *tensors, int n_tensors, const unsigned char *group,
                       int n_groups, const float *grads, double *norms) {
    int n = n_tensors ? n_tensors : 1, count = 0;
    const float **arrays = mallocCheck(sizeof(float *) * n);
    size_t *lengths = mallocCheck(sizeof(size_t) * n);
    double *sums = mallocCheck(sizeof(double) * n);
    for (int i = 0; i < n_tensors; i++)
        if (group[i]) {
            arrays[count] = grads + tensors[i].offset;
            lengths[count++] = tensors[i].numel;
        }
    be->sum_squares(sums, arrays, lengths, count); // (one wait on a device for every group)
    for (int g = 0; g < n_groups; g++) norms[g] = 0.0;
    for (int i = 0, j = 0; i < n_tensors; i++) // each group's sum tensor after tensor, a fixed order
        if (group[i]) norms[group[i] - 1] += sums[j++];
    for (int g = 0; g < n_groups; g++) norms[g] = sqrt(norms[g]);
    free(arrays);
    free(lengths);
    free(sums);
}

void optim_adamw_scalars(const OptimConfig *o, const ParamTensor *t, int step, float lr, float *bc1, float *bc2,
                         float *decay) {
    *bc1 = 1.0f - (float)pow(o->beta1, step);
    *bc2 = 1.0f - (float)pow(o->beta2, step);
    *decay = t->decay ? lr * o->weight_decay : 0.0f;
}

void optim_adamw(const OptimConfig *o, const ParamTensor *tensors, int n_tensors, const unsigned char *active,
                 int *steps, float *params, const float *grads, float *m, float *v, float lr, float grad_scale) {
    for (int k = 0; k < n_tensors; k++) {
        if (!active[k]) continue;
        const ParamTensor *pt = &tensors[k];
        float bc1, bc2, decay;
        optim_adamw_scalars(o, pt, ++steps[k], lr, &bc1, &bc2, &decay);
        float *p = params + pt->offset, *mm = m + pt->offset, *vv = v + pt->offset;
        const float *g = grads + pt->offset;
        const float beta1 = o->beta1, beta2 = o->beta2, eps = o->eps; // (locals: the loop vectorises)
        const size_t n = pt->numel;
#pragma omp parallel for simd
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] * grad_scale;
            p[i] -= decay * p[i];
            mm[i] = beta1 * mm[i] + (1.0f - beta1) * gi;
            vv[i] = beta2 * vv[i] + (1.0f - beta2) * gi * gi;
            float mhat = mm[i] / bc1, vhat = vv[i] / bc2;
            p[i] -= lr * mhat / (sqrtf(vhat) + eps);
        }
    }
}
