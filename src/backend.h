// backend.h: the seam between the model (model.c, which keeps the order of a step) and the device that
// runs its ops. One table per device, each entry with the signature and meaning of its CPU function in
// layers.h, moe.h or optim.h:
// - "cpu" (backend_cpu.c): those functions themselves;
// - "cuda" (cuda/backend.cu): the kernels of cuda/ (cuda/kernels.h).
// No op counts its FLOPs: model.c and the exchange count them where they call an op (flops.h).
// Buffers a model keeps come from the table's alloc_device (parameters, gradients, AdamW state, activations,
// the MoE rows and the exchange's buffers: device memory on cuda). Only ops, copy() and a CUDA-aware MPI (see
// mpi_access) touch them; the host reaches the state through copies (model.h's host_params) and the study
// features (the DP defence, the recorder) the rows through copies (exchange.c). Ops queue their work; those
// that return host values (moe_route's counts, sum_squares, first_nonfinite) wait for it themselves.
#ifndef PCMOE_BACKEND_H
#define PCMOE_BACKEND_H

#include <stddef.h> // size_t
#include <stdint.h> // uint8_t

#include "token.h"  // Token
#include "layers.h" // FfnGroup
#include "moe.h"    // MoeActs, MoeScratch, ExpertSet
#include "optim.h"  // OptimConfig, ParamTensor

typedef struct Backend {
    const char *name;                         // "cpu" or "cuda"
    int device;                               // 1: alloc_device gives device memory (MPI: staged, or CUDA-aware)
    // 1: any MPI reads and writes alloc_device memory (cpu; the CUDA emulation, whose device memory is the
    // host's), so handing it to MPI needs no CUDA-aware MPI
    int mpi_reads_device;
    void (*release)(void *p);                 // (alloc_device's and resize's)
    // a model buffer, zero-filled (queued): cuda: cudaMalloc memory; cpu: host memory
    void *(*alloc_device)(size_t bytes);
    // a buffer of `bytes` that starts with the first old_bytes of p (alloc_device's or resize's, which it
    // replaces; the rest is not zeroed). cpu: realloc, whose large buffers the kernel remaps rather than copies
    void *(*resize)(void *p, size_t old_bytes, size_t bytes);
    void *(*alloc_pinned)(size_t bytes);      // host memory for MPI transfers (page-locked on cuda), zero-filled
    void (*release_pinned)(void *p);
    void (*sync)(void);                       // queued ops are done: the host may read their results
    // A CUDA-aware MPI reads and writes alloc_device memory between mpi_access(1) (after a sync) and
    // mpi_access(0): nothing to do on a GPU or the CPU; the emulation opens its device memory to the host's
    // MPI then (and stops when work is still queued: a sync is missing)
    void (*mpi_access)(int open);
    void (*zero)(void *p, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes); // queued like an op; either side may be host memory
    size_t (*peak_bytes)(void);               // the most bytes alloc_device's buffers (and the backend's own) held
    // the pass's tokens and targets (N each, host memory; either may be NULL): cuda uploads them once, and the
    // ops below that take token pointers into these arrays read that copy (cpu: nothing to do)
    void (*batch)(const Token *tokens, const Token *targets, int N);
    // layers.h
    void (*residual_forward)(float *out, const float *a, const float *b, size_t n);
    void (*embedding_forward)(float *out, const Token *tokens, const float *embed, int N, int d);
    void (*embedding_backward)(float *dembed, const float *dout, const Token *tokens, int N, int d);
    void (*rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *w, int N, int d, float eps);
    void (*rmsnorm_backward)(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                             const float *rstd, int N, int d);
    void (*matmul_forward)(float *out, const float *inp, const float *w, int N, int n_in, int n_out);
    void (*matmul_backward)(float *dinp, float *dw, const float *dout, const float *inp, const float *w, int N,
                            int n_in, int n_out);
    void (*rope_forward)(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs);
    void (*rope_backward)(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs);
    void (*qknorm_forward)(float *qkv, float *raw, float *rstd, const float *wq, const float *wk, int N, int Hq,
                           int Hkv, int hs, int per_head, float eps);
    void (*qknorm_backward)(float *dqkv, float *dwq, float *dwk, const float *raw, const float *wq, const float *wk,
                            const float *rstd, int N, int Hq, int Hkv, int hs, int per_head);
    // attention: `saved` is what the forward keeps for the backward, attention_saved_floats per layer (cpu:
    // each row's log-sum-exp; cuda: the probabilities); `work` is scratch both share, attention_work_floats
    // per model (cpu: one slot per OpenMP thread; cuda: none, it has its own)
    size_t (*attention_saved_floats)(int B, int T, int H);
    size_t (*attention_work_floats)(int T);
    void (*attention_forward)(float *out, float *saved, float *work, size_t work_floats, const float *qkv, int B, int T,
                              int Hq, int Hkv, int hs);
    void (*attention_backward)(float *dqkv, float *work, size_t work_floats, const float *dout, const float *qkv,
                               const float *saved, const float *out, int B, int T, int Hq, int Hkv, int hs);
    void (*crossentropy_forward)(float *probs_inout, float *losses, const Token *targets, int N, int V);
    void (*crossentropy_backward)(float *dlogits, const float *probs, const Token *targets, int N, int V,
                                  float scale);
    void (*crossentropy_fused)(float *logits_inout, float *losses, const Token *targets, int N, int V, float scale);
    void (*ffn_forward)(float *y, float *h, float *u, float *a, const float *x, const float *wg, const float *wu,
                        const float *wd, int N, int d, int f);
    void (*ffn_backward)(float *dx, float *dwg, float *dwu, float *dwd, float *dh, float *du, float *da,
                         const float *dy, const float *x, const float *h, const float *u, const float *a,
                         const float *wg, const float *wu, const float *wd, int N, int d, int f);
    void (*ffn_forward_groups)(const FfnGroup *groups, int n, int d, int f);
    void (*ffn_backward_groups)(const FfnGroup *groups, int n, int d, int f);
    // moe.h (moe_route leaves counts, offsets, aux and z in the host's MoeActs fields)
    void (*moe_route)(MoeActs *a, const float *inp, const float *router, const int *order, Rng *shuffle);
    void (*moe_experts_forward)(MoeActs *a, ExpertSet w);
    void (*moe_combine)(float *out, const MoeActs *a);
    void (*moe_combine_backward)(MoeScratch *s, const float *dout, const MoeActs *a);
    void (*moe_experts_backward)(MoeScratch *s, const MoeActs *a, ExpertSet w, ExpertSet dw);
    void (*moe_route_backward)(float *dinp, float *drouter, MoeScratch *s, const MoeActs *a, const float *inp,
                               const float *router, float aux_coef, float z_coef);
    // privacy.h's privacy_first_nonfinite on the backend's memory (one wait on cuda, buf on the device)
    void (*first_nonfinite)(long *first, float *value, const float *buf, const int *rows, const int *offs, int count,
                            int d);
    // optim.h
    // out[i] = optim_sum_squares(arrays[i], lengths[i]) for i < count (one wait on cuda)
    void (*sum_squares)(double *out, const float *const *arrays, const size_t *lengths, int count);
    void (*adamw)(const OptimConfig *o, const ParamTensor *tensors, int n_tensors, const unsigned char *active,
                  int *steps, float *params, const float *grads, float *m, float *v, float lr, float grad_scale);
} Backend;

extern const Backend backend_cpu;

// The CUDA backend (src/backend_loader.c: the pcmoe_cuda.so plugin, or the one linked in) on this process's
// device: run.gpu when >= 0, else local_rank % the device count;
// tf32: cuBLAS may use TF32 tensor cores for the fp32 GEMMs (run.tf32). Returns NULL with the reason in
// err when there is none (no device, or a build without CUDA).
const Backend *backend_cuda_open(int gpu, int local_rank, int tf32, char *err, size_t len);
// Releases what backend_cuda_open set up (cuBLAS, scratch); nothing when it was not opened.
void backend_cuda_close(void);

#endif
