// train.c: one party's training run, read top to bottom in train_run().
#include "train.h"

#include <math.h>   // sqrt, isfinite
#include <stdlib.h> // free

#ifdef _OPENMP
#include <omp.h>    // omp_set_num_threads
#endif

#include "autoconfig.h" // HAVE_OPENBLAS_SET_NUM_THREADS
#include "metrics.h"    // Metrics, StepStats
#include "optim.h"      // OptimConfig, optim_*
#include "util.h"       // fail, fail_usage, now_seconds, mallocCheck

#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
void openblas_set_num_threads(int num_threads);
#endif
#ifdef HAVE_OPENBLAS_GET_PARALLEL
int openblas_get_parallel(void); // 0 sequential, 1 pthreads, 2 OpenMP
#endif

// OpenMP threads for the non-GEMM kernels; BLAS threads for the GEMMs. A pthreads OpenBLAS keeps its own
// spinning pool that competes with OpenMP's for the same cores (measured 3x slower on 2 cores), so by
// default it gets one thread; an OpenMP OpenBLAS shares OpenMP's pool and follows run.threads.
static void threads_setup(const Config *c) {
#ifdef _OPENMP
    if (c->threads > 0) omp_set_num_threads(c->threads);
#endif
    int blas = c->blas_threads;
#ifdef HAVE_OPENBLAS_GET_PARALLEL
    if (blas == 0 && openblas_get_parallel() == 1) blas = 1;
#endif
    if (blas == 0) blas = c->threads;
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    if (blas > 0) openblas_set_num_threads(blas);
#else
    (void)blas;
#endif
}

static OptimConfig optim_config_from(const Config *c) {
    OptimConfig o = {
        .lr = c->lr, .min_lr = c->min_lr, .warmup_steps = c->warmup_steps, .total_steps = c->steps,
        .beta1 = c->beta1, .beta2 = c->beta2, .eps = c->adam_eps, .weight_decay = c->weight_decay,
        .grad_clip = c->grad_clip,
    };
    return o;
}

double train_evaluate(Model *m, const Dataset *ds, int n_batches, uint8_t *tokens, uint8_t *targets) {
    double total = 0.0;
    for (int i = 0; i < n_batches; i++) {
        data_val_batch(ds, tokens, targets, m->B, m->T, i, n_batches);
        model_forward(m, tokens, targets);
        total += m->ce;
    }
    return total / n_batches;
}

double train_step(Model *m, const OptimConfig *oc, const uint8_t *tokens, const uint8_t *targets, int step,
                  int party, float *lr_out) {
    model_zero_grad(m);
    model_forward(m, tokens, targets);
    model_backward(m, tokens, targets);
    double grad_norm = sqrt(optim_sum_squares(m->grads, m->n_params));
    if (!isfinite(m->loss) || !isfinite(grad_norm))
        fail("step %d, party %d: non-finite %s (loss %g, gradient norm %g); stopping", step + 1, party,
             isfinite(m->loss) ? "gradient" : "loss", m->loss, grad_norm);
    float lr = optim_lr(oc, step);
    optim_adamw(oc, m->tensors, m->n_tensors, m->active, m->adam_steps, m->params, m->grads, m->adam_m,
                m->adam_v, lr, optim_clip_scale(oc, grad_norm));
    *lr_out = lr;
    return grad_norm;
}

int train_run(const Config *c, int force) {
    threads_setup(c);
    const int party = 0, B = c->batch_size, T = c->seq_len;

    // the party's private corpus
    Dataset ds;
    char err[2048];
    if (data_load(&ds, c->data_path[party], c->val_fraction, T, (uint64_t)c->seed + 1 + party, err, sizeof err))
        fail_usage(2, 0, "data.%d = %s", party, err);

    // the model and its optimizer
    ModelConfig mc = model_config_from(c);
    Model model;
    model_create(&model, &mc, NULL, B, T);
    model_init(&model, (uint64_t)c->seed);
    OptimConfig oc = optim_config_from(c);

    Metrics mt;
    metrics_open(&mt, c, force);
    uint8_t *tokens = mallocCheck((size_t)B * T), *targets = mallocCheck((size_t)B * T);
    StepStats s = {.party = party};
    double best_val = INFINITY, tokens_seen = 0.0;

    if (c->eval_every > 0) { // the starting point: validation loss of the initial model
        s.has_val = 1;
        s.val_loss = best_val = train_evaluate(&model, &ds, c->eval_batches, tokens, targets);
        metrics_log(&mt, &s);
        metrics_progress(&mt, &s, c->steps, 1);
    }

    for (int step = 0; step < c->steps; step++) {
        double t0 = now_seconds();
        // 1. a batch of the party's own data
        data_train_batch(&ds, tokens, targets, B, T);
        // 2. forward, backward, clip, AdamW
        model.flops = 0.0;
        float lr;
        double grad_norm = train_step(&model, &oc, tokens, targets, step, party, &lr);
        double dt = now_seconds() - t0;
        tokens_seen += (double)B * T;

        // 3. metrics, and validation on eval steps and at the end
        s = (StepStats){.step = step + 1, .party = party, .has_train = 1, .train_loss = model.loss,
                        .ce = model.ce, .aux = model.aux, .z = model.z, .lr = lr, .grad_norm = grad_norm,
                        .tokens_per_s = (double)B * T / dt, .flops = model.flops};
        int last = step + 1 == c->steps;
        if (last || (c->eval_every > 0 && (step + 1) % c->eval_every == 0)) {
            s.has_val = 1;
            s.val_loss = train_evaluate(&model, &ds, c->eval_batches, tokens, targets);
            if (s.val_loss < best_val) best_val = s.val_loss;
        }
        int log_now = last || s.has_val || (step + 1) % c->log_every == 0;
        if (log_now) metrics_log(&mt, &s);
        metrics_progress(&mt, &s, c->steps, log_now);
    }

    metrics_summary(&mt, &s, best_val, c->steps, tokens_seen, model.n_params, model.mem);
    metrics_close(&mt);
    free(tokens);
    free(targets);
    model_free(&model);
    data_free(&ds);
    return 0;
}
