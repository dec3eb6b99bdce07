// optim.h: AdamW with decoupled weight decay, the warmup + cosine learning-rate schedule, and global
// gradient-norm clipping.
#ifndef PCMOE_OPTIM_H
#define PCMOE_OPTIM_H

#include <stddef.h> // size_t

#include "model.h"  // ParamTensor

typedef struct {
    float lr, min_lr;     // peak and final learning rate
    int warmup_steps;     // linear warmup from 0
    int total_steps;      // cosine decay ends here
    float beta1, beta2, eps, weight_decay;
    float grad_clip;      // 0 = off
} OptimConfig;

// Learning rate of (0-based) step: lr * (step+1)/warmup during warmup, then cosine from lr to min_lr.
float optim_lr(const OptimConfig *o, int step);
// Sum of squares of n gradients (double, fixed order: the same bits for any thread count).
double optim_sum_squares(const float *g, size_t n);
// Scales grads so that their global norm is at most grad_clip; returns the scale applied (1 = none).
float optim_clip_scale(const OptimConfig *o, double grad_norm);
struct Backend; // backend.h
// be: the device the buffers live on (its sum_squares does the work).
// norms[g] = the gradient norm of group g < n_groups: the tensors with group[i] == g + 1 (0: in none), summed
// tensor after tensor. One sum_squares call, so a device waits once for all of them.
void optim_group_norms(const struct Backend *be, const ParamTensor *tensors, int n_tensors, const unsigned char *group,
                       int n_groups, const float *grads, double *norms);

// One AdamW step over the tensors with active[i] set, gradients multiplied by grad_scale first:
// p -= lr*wd*p (matrices only), then the Adam update with bias correction by the tensor's own step count
// steps[i] (incremented here). Inactive tensors (experts that received no tokens) are left untouched:
// no decay, no moment update, no step counted, as PyTorch does for a parameter without a gradient.
void optim_adamw(const OptimConfig *o, const ParamTensor *tensors, int n_tensors, const unsigned char *active,
                 int *steps, float *params, const float *grads, float *m, float *v, float lr, float grad_scale);
// The per-tensor scalars of that update at the tensor's step t (1-based): the bias corrections
// bc1 = 1 - beta1^t, bc2 = 1 - beta2^t, and the decay lr * weight_decay (0 for tensors without decay).
// Every backend's AdamW derives them here.
void optim_adamw_scalars(const OptimConfig *o, const ParamTensor *t, int step, float lr, float *bc1, float *bc2,
                         float *decay);

#endif
