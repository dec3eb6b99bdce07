// dump_reference: runs the C engine on a small model and writes everything an independent reference
// needs to recompute it (config, initial weights, batches) and everything to compare (logits, loss
// terms, every gradient of step 1, losses and gradient norms of 5 AdamW steps, final weights) to one
// binary file, read by tests/reference/check_parity.py.
//
// File: "PCMOEREF" magic, int32 version (1), int32 record count, then records:
//   char name[64], int32 dtype (0 float32, 1 uint8, 2 float64), int32 ndim, int32 shape[4], data.
#include <stdlib.h> // malloc
#include <string.h> // strncpy

#include "layers.h" // matmul_forward (to recompute the logits)
#include "optim.h"  // OptimConfig
#include "testutil.h"
#include "train.h"  // train_step
#include "util.h"   // fopenCheck

enum { DT_F32 = 0, DT_U8 = 1, DT_F64 = 2 };

static void record(FILE *f, const char *name, int dtype, int ndim, int s0, int s1, const void *data) {
    char nm[64] = {0};
    strncpy(nm, name, sizeof nm - 1);
    int hdr[6] = {dtype, ndim, s0, s1, 1, 1};
    fwrite(nm, 1, sizeof nm, f);
    fwrite(hdr, sizeof(int), 6, f);
    size_t n = (size_t)s0 * (ndim > 1 ? s1 : 1), width = dtype == DT_F32 ? 4 : dtype == DT_U8 ? 1 : 8;
    fwrite(data, width, n, f);
}

static void params_record(FILE *f, const Model *m, const float *base, const char *prefix, int *count) {
    for (int i = 0; i < m->n_tensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%s/%s", prefix, t->name);
        record(f, name, DT_F32, 2, t->rows, t->cols, base + t->offset);
        (*count)++;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: dump_reference OUT.bin\n"); return 2; }
    ModelConfig c = test_config(4, 2, 4, 2); // layers 1 and 3 MoE, 0 and 2 dense
    c.d = 32; c.n_heads = c.n_kv_heads = 4; c.head_dim = 8; c.seq_len = 16; c.d_ff = 48; c.expert_ff = 24;
    c.aux_coef = 0.05f; c.z_coef = 0.01f; c.init_std = 0.05f;
    // adam_eps = 1e-6, not the 1e-8 default: AdamW's update g/(|g|+eps) has derivative 1/eps at g ~ 0, so
    // at 1e-8 the fp32 rounding (~1e-11) of a near-zero gradient element is amplified to ~1e-3 of lr and
    // the comparison would measure that amplification, not the engine. The code path is the same.
    OptimConfig oc = {.lr = 1e-2f, .min_lr = 1e-3f, .warmup_steps = 2, .total_steps = 5, .beta1 = 0.9f,
                      .beta2 = 0.95f, .eps = 1e-6f, .weight_decay = 0.1f, .grad_clip = 1.0f};
    int B = 3, T = c.seq_len, N = B * T, steps = 5;
    Model m;
    model_create(&m, &c, NULL, 1, B, T);
    model_init(&m, 2024, 2025);

    FILE *f = fopenCheck(argv[1], "wb");
    int version = 1, count = 0;
    fwrite("PCMOEREF", 1, 8, f);
    fwrite(&version, sizeof(int), 1, f);
    long count_pos = ftell(f);
    fwrite(&count, sizeof(int), 1, f);

    double cfg[] = {c.vocab, c.d, c.n_layers, c.n_heads, T, B, c.d_ff, c.n_experts, c.top_k, c.expert_ff,
                    c.moe_every, c.aux_coef, c.z_coef, c.rope_theta, c.norm_eps, oc.lr, oc.min_lr,
                    oc.warmup_steps, oc.total_steps, oc.beta1, oc.beta2, oc.eps, oc.weight_decay, oc.grad_clip};
    record(f, "config", DT_F64, 1, (int)(sizeof cfg / sizeof cfg[0]), 1, cfg); count++;
    params_record(f, &m, m.params, "init", &count);

    Token *tok = malloc(sizeof(Token) * N * steps), *tgt = malloc(sizeof(Token) * N * steps);
    uint8_t *bytes = malloc(2 * N * steps); // the batches as the file keeps them: bytes
    for (int s = 0; s < steps; s++) test_batch(tok + s * N, tgt + s * N, N, 100 + s);
    for (int i = 0; i < N * steps; i++) { bytes[i] = (uint8_t)tok[i]; bytes[N * steps + i] = (uint8_t)tgt[i]; }
    record(f, "tokens", DT_U8, 2, steps * B, T, bytes); count++;
    record(f, "targets", DT_U8, 2, steps * B, T, bytes + N * steps); count++;
    free(bytes);

    // step 1 forward and backward, without an update
    model_zero_grad(&m);
    model_forward(&m, tok, tgt);
    double terms[4] = {m.loss, m.ce, m.aux, m.z};
    float *logits = malloc(sizeof(float) * N * c.vocab);
    matmul_forward(logits, m.lnf, m.w.lm_head, N, c.d, c.vocab);
    model_backward(&m, tok, tgt);
    record(f, "logits", DT_F32, 2, N, c.vocab, logits); count++;
    record(f, "loss_terms", DT_F64, 1, 4, 1, terms); count++;
    params_record(f, &m, m.grads, "grad", &count);

    // five AdamW steps, one batch each
    double losses[5], norms[5], lrs[5];
    for (int s = 0; s < steps; s++) {
        float lr;
        norms[s] = train_step(&m, &oc, tok + s * N, tgt + s * N, s, 0, &lr);
        losses[s] = m.loss;
        lrs[s] = lr;
        printf("step %d: loss %.6f grad norm %.4f lr %.5f\n", s + 1, losses[s], norms[s], lrs[s]);
    }
    record(f, "step_losses", DT_F64, 1, steps, 1, losses); count++;
    record(f, "step_grad_norms", DT_F64, 1, steps, 1, norms); count++;
    record(f, "step_lrs", DT_F64, 1, steps, 1, lrs); count++;
    params_record(f, &m, m.params, "final", &count);
    fseek(f, count_pos, SEEK_SET);
    fwrite(&count, sizeof(int), 1, f);
    if (fclose(f) != 0) { fprintf(stderr, "dump_reference: write failed\n"); return 1; }
    printf("wrote %d records to %s\n", count, argv[1]);
    free(tok); free(tgt); free(logits);
    model_free(&m);
    return 0;
}
