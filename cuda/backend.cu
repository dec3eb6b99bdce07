// backend.cu: the CUDA backend of src/backend.h: the kernels of cuda/ behind the ops table model.c
// calls. Model buffers are CUDA managed memory, so the host-side code that reads a few of them (the
// MoE's counts, the checkpoint writer, fedavg) works after sync(). The table's state (the cuBLAS handle,
// copies of the batch's bytes, scratch) belongs to the one device this process opened.
// No MPI reaches here (src/backend.h and what it includes are below the exchange): plain nvcc builds it.
#include "kernels.h"

#include <cstdio>  // snprintf
#include <cstring> // memset

extern "C" {
#include "backend.h"
}

namespace {

struct State {
    int open = 0;
    cublasHandle_t blas = nullptr;
    void *tokens = nullptr, *targets = nullptr;    // device copies of the batch's bytes
    void *att_scratch = nullptr;                   // attention scratch
    void *rms_scratch = nullptr;                   // the RMSNorm and QK-norm weight gradients' partial sums
    size_t cap_tokens = 0, cap_targets = 0, cap_att = 0, cap_rms = 0; // their sizes in bytes (each grown to the
                                                                      // largest use)
    double *scalars = nullptr;                     // (2) results read by the host (sum of squares; aux, z)
    double *partial = nullptr;                     // scratch of the sum of squares and of the MoE losses
    size_t bytes = 0, peak = 0;                    // device bytes held through dev_alloc, now and at most
} S;

// Every device buffer starts with a header that keeps its size, so release can count it off: the
// accounting is exact and needs no table. HEADER keeps the caller's pointer 256-byte aligned.
constexpr size_t HEADER = 256;

void *dev_alloc(size_t bytes) {
    char *p = nullptr;
    cudaCheck(cudaMallocManaged(reinterpret_cast<void **>(&p), HEADER + bytes));
    cudaCheck(cudaMemset(p + HEADER, 0, bytes));
    cudaCheck(cudaDeviceSynchronize());
    *reinterpret_cast<size_t *>(p) = bytes;
    S.bytes += bytes;
    if (S.bytes > S.peak) S.peak = S.bytes;
    return p + HEADER;
}
void dev_release(void *q) {
    if (!q) return;
    char *p = static_cast<char *>(q) - HEADER;
    S.bytes -= *reinterpret_cast<size_t *>(p);
    cudaCheck(cudaFree(p));
}
void *dev_resize(void *q, size_t old_bytes, size_t bytes) {
    void *p = dev_alloc(bytes);
    if (old_bytes) cudaCheck(cudaMemcpy(p, q, old_bytes < bytes ? old_bytes : bytes, cudaMemcpyDefault));
    dev_release(q);
    return p;
}
size_t dev_peak(void) { return S.peak; }
void *pinned_alloc(size_t bytes) {
    void *p = nullptr;
    cudaCheck(cudaMallocHost(&p, bytes ? bytes : 1));
    std::memset(p, 0, bytes ? bytes : 1);
    return p;
}
void pinned_release(void *p) { cudaCheck(cudaFreeHost(p)); }
void dev_sync(void) { cudaCheck(cudaDeviceSynchronize()); }
void dev_zero(void *p, size_t bytes) { cudaCheck(cudaMemsetAsync(p, 0, bytes, 0)); }
void dev_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, 0));
}

// *buf, holding at least `bytes` (*cap: its size, grown to the largest request; contents not kept)
void *dev_grow(void **buf, size_t *cap, size_t bytes) {
    if (bytes > *cap) {
        dev_release(*buf);
        *buf = dev_alloc(bytes);
        *cap = bytes;
    }
    return *buf;
}

// a device copy of n host tokens in *buf
const Token *dev_tokens(void **buf, size_t *cap, const Token *host, size_t n) {
    void *d = dev_grow(buf, cap, sizeof(Token) * n);
    cudaCheck(cudaMemcpy(d, host, sizeof(Token) * n, cudaMemcpyHostToDevice));
    return static_cast<const Token *>(d);
}

CuMoeActs view(const MoeActs *a) {
    CuMoeActs c;
    c.N = a->N; c.d = a->d; c.m = a->m; c.k = a->k; c.f = a->f;
    c.renorm = a->renorm;
    c.logits = a->logits; c.probs = a->probs; c.lse = a->lse; c.topk = a->topk; c.gates = a->gates;
    c.gate_sum = a->gate_sum; c.counts = a->counts; c.offsets = a->offsets; c.row_choice = a->row_choice;
    c.choice_row = a->choice_row; c.xe = a->xe; c.ye = a->ye; c.he = a->he; c.ue = a->ue; c.ae = a->ae;
    return c;
}

void residual(float *out, const float *a, const float *b, size_t n) { cu_residual_forward(out, a, b, (long)n, 0); }
void embedding_fwd(float *out, const Token *tokens, const float *embed, int N, int d) {
    cu_embedding_forward(out, dev_tokens(&S.tokens, &S.cap_tokens, tokens, (size_t)N), embed, N, d, 0);
}
void embedding_bwd(float *dembed, const float *dout, const Token *tokens, int N, int d) {
    cu_embedding_backward(dembed, dout, dev_tokens(&S.tokens, &S.cap_tokens, tokens, (size_t)N), N, d, 0);
}
void rmsnorm_fwd(float *out, float *rstd, const float *inp, const float *w, int N, int d, float eps) {
    cu_rmsnorm_forward(out, rstd, inp, w, N, d, eps, 0);
}
void rmsnorm_bwd(float *dinp, float *dw, const float *dout, const float *inp, const float *w, const float *rstd, int N,
                 int d) {
    size_t need = sizeof(float) * (size_t)cu_rmsnorm_scratch_floats(N, d);
    cu_rmsnorm_backward(dinp, dw, static_cast<float *>(dev_grow(&S.rms_scratch, &S.cap_rms, need)), dout, inp, w, rstd,
                        N, d, 0);
}
void matmul_fwd(float *out, const float *inp, const float *w, int N, int n_in, int n_out) {
    if (N == 0) return;
    cu_matmul_forward(S.blas, out, inp, w, N, n_in, n_out);
}
void matmul_bwd(float *dinp, float *dw, const float *dout, const float *inp, const float *w, int N, int n_in,
                int n_out) {
    if (N == 0) return;
    cu_matmul_backward(S.blas, dinp, dw, dout, inp, w, N, n_in, n_out);
}
void rope_fwd(float *qkv, const float *c, const float *s, int B, int T, int H, int Hkv, int hs) {
    cu_rope_forward(qkv, c, s, B, T, H, Hkv, hs, 0);
}
void rope_bwd(float *dqkv, const float *c, const float *s, int B, int T, int H, int Hkv, int hs) {
    cu_rope_backward(dqkv, c, s, B, T, H, Hkv, hs, 0);
}
void qknorm_fwd(float *qkv, float *raw, float *rstd, const float *wq, const float *wk, int N, int H, int Hkv, int hs,
                int per_head, float eps) {
    cu_qknorm_forward(qkv, raw, rstd, wq, wk, N, H, Hkv, hs, per_head, eps, 0);
}
void qknorm_bwd(float *dqkv, float *dwq, float *dwk, const float *raw, const float *wq, const float *wk,
                const float *rstd, int N, int H, int Hkv, int hs, int per_head) {
    size_t need = sizeof(float) * (size_t)cu_qknorm_scratch_floats(N, H, Hkv, hs, per_head);
    float *scratch = static_cast<float *>(dev_grow(&S.rms_scratch, &S.cap_rms, need)); // (shared with RMSNorm's)
    cu_qknorm_backward(dqkv, dwq, dwk, scratch, raw, wq, wk, rstd, N, H, Hkv, hs, per_head, 0);
}
float *att_scratch(int B, int T, int H, int hs) {
    size_t need = sizeof(float) * (size_t)cu_attention_scratch_floats(B, T, H, hs);
    return static_cast<float *>(dev_grow(&S.att_scratch, &S.cap_att, need));
}
size_t att_saved(int B, int T, int H) { return (size_t)B * H * T * T; } // the probabilities
size_t att_work(int) { return 0; }                                        // (att_scratch instead)
void attention_fwd(float *out, float *att, float *, size_t, const float *qkv, int B, int T, int H, int Hkv, int hs) {
    cu_attention_forward(S.blas, out, att, qkv, att_scratch(B, T, H, hs), B, T, H, Hkv, hs, 0);
}
void attention_bwd(float *dqkv, float *, size_t, const float *dout, const float *qkv, const float *att, const float *,
                   int B, int T, int H, int Hkv, int hs) {
    cu_attention_backward(S.blas, dqkv, dout, qkv, att, att_scratch(B, T, H, hs), B, T, H, Hkv, hs, 0);
}
double ce_fwd(float *probs, float *losses, const Token *targets, int N, int V) {
    cu_crossentropy_forward(probs, losses, dev_tokens(&S.targets, &S.cap_targets, targets, (size_t)N), N, V, 0);
    dev_sync();
    double total = 0.0; // in row order, as the CPU kernel
    for (int n = 0; n < N; n++) total += losses[n];
    return total / N;
}
void ce_bwd(float *dlogits, const float *probs, const Token *targets, int N, int V, float scale) {
    const Token *dt = dev_tokens(&S.targets, &S.cap_targets, targets, (size_t)N);
    cu_crossentropy_backward(dlogits, probs, dt, N, V, scale, 0);
}
void ffn_fwd(float *y, float *h, float *u, float *a, const float *x, const float *wg, const float *wu, const float *wd,
             int N, int d, int f) {
    if (N == 0) return;
    cu_ffn_forward(S.blas, y, h, u, a, x, wg, wu, wd, N, d, f, 0);
}
void ffn_bwd(float *dx, float *dwg, float *dwu, float *dwd, float *dh, float *du, float *da, const float *dy,
             const float *x, const float *h, const float *u, const float *a, const float *wg, const float *wu,
             const float *wd, int N, int d, int f) {
    if (N == 0) return;
    cu_ffn_backward(S.blas, dx, dwg, dwu, dwd, dh, du, da, dy, x, h, u, a, wg, wu, wd, N, d, f, 0);
}
void moe_route_dev(MoeActs *a, const float *inp, const float *router, const int *order, Rng *shuffle) {
    CuMoeActs c = view(a);
    cu_moe_route(S.blas, &c, inp, router, order, 0);
    dev_sync(); // counts and offsets: the host draws the shuffle from them (and sizes the expert GEMMs)
    if (shuffle) moe_shuffle_permutation(a->perm, a->counts, a->offsets, a->m, shuffle);
    cu_moe_pack(&c, inp, shuffle ? a->perm : nullptr, a->choice_row, 0);
    cu_moe_losses(S.scalars, S.partial, &c, 0);
    dev_sync();
    a->aux = S.scalars[0];
    a->z = S.scalars[1];
}
void moe_experts_fwd(MoeActs *a, ExpertSet w) {
    CuMoeActs c = view(a);
    cu_moe_experts_forward(S.blas, &c, w.gate, w.up, w.down, a->counts, a->offsets, 0);
}
void moe_combine_dev(float *out, const MoeActs *a) {
    CuMoeActs c = view(a);
    cu_moe_combine(out, &c, 0);
}
void moe_combine_bwd(MoeScratch *s, const float *dout, const MoeActs *a) {
    CuMoeActs c = view(a);
    cu_moe_combine_backward(s->dye, s->dgates, dout, &c, 0);
}
void moe_experts_bwd(MoeScratch *s, const MoeActs *a, ExpertSet w, ExpertSet dw) {
    CuMoeActs c = view(a);
    cu_moe_experts_backward(S.blas, s->dxe, s->dhe, s->due, s->dae, s->dye, &c, w.gate, w.up, w.down, dw.gate, dw.up,
                            dw.down, a->counts, a->offsets, 0);
}
void moe_route_bwd(float *dinp, float *drouter, MoeScratch *s, const MoeActs *a, const float *inp, const float *router,
                   float aux_coef, float z_coef) {
    CuMoeActs c = view(a);
    cu_moe_route_backward(S.blas, dinp, drouter, s->dlogits, s->dxe, s->dgates, &c, inp, router, aux_coef, z_coef, 0);
}
double sum_squares_dev(const float *g, size_t n) {
    cu_sum_squares(S.scalars, S.partial, g, (long)n, 0);
    dev_sync();
    return S.scalars[0];
}
void adamw_dev(const OptimConfig *o, const ParamTensor *tensors, int n_tensors, const unsigned char *active, int *steps,
               float *params, const float *grads, float *m, float *v, float lr, float grad_scale) {
    for (int k = 0; k < n_tensors; k++) {
        if (!active[k]) continue;
        const ParamTensor *pt = &tensors[k];
        float bc1, bc2, decay;
        optim_adamw_scalars(o, pt, ++steps[k], lr, &bc1, &bc2, &decay);
        cu_adamw(params + pt->offset, grads + pt->offset, m + pt->offset, v + pt->offset, (long)pt->numel, lr, o->beta1,
                 o->beta2, o->eps, decay, bc1, bc2, grad_scale, 0);
    }
}

// Every entry by name (C++20 designated initialisers, in the declaration order of backend.h, which the
// compiler enforces): an op moved or added in the table cannot land in another op's slot.
const Backend TABLE = {
    .name = "cuda",
    .device = 1,
    .alloc = dev_alloc,
    .release = dev_release,
    .resize = dev_resize,
    .alloc_pinned = pinned_alloc,
    .release_pinned = pinned_release,
    .sync = dev_sync,
    .zero = dev_zero,
    .copy = dev_copy,
    .peak_bytes = dev_peak,
    .residual_forward = residual,
    .embedding_forward = embedding_fwd,
    .embedding_backward = embedding_bwd,
    .rmsnorm_forward = rmsnorm_fwd,
    .rmsnorm_backward = rmsnorm_bwd,
    .matmul_forward = matmul_fwd,
    .matmul_backward = matmul_bwd,
    .rope_forward = rope_fwd,
    .rope_backward = rope_bwd,
    .qknorm_forward = qknorm_fwd,
    .qknorm_backward = qknorm_bwd,
    .attention_saved_floats = att_saved,
    .attention_work_floats = att_work,
    .attention_forward = attention_fwd,
    .attention_backward = attention_bwd,
    .crossentropy_forward = ce_fwd,
    .crossentropy_backward = ce_bwd,
    .ffn_forward = ffn_fwd,
    .ffn_backward = ffn_bwd,
    .moe_route = moe_route_dev,
    .moe_experts_forward = moe_experts_fwd,
    .moe_combine = moe_combine_dev,
    .moe_combine_backward = moe_combine_bwd,
    .moe_experts_backward = moe_experts_bwd,
    .moe_route_backward = moe_route_bwd,
    .sum_squares = sum_squares_dev,
    .adamw = adamw_dev,
};

} // namespace

// The entry points src/backend_loader.c looks up (in pcmoe_cuda.so, or linked into the program).
extern "C" const Backend *cuda_backend_open(int gpu, int local_rank, int tf32, char *err, size_t len);
extern "C" void cuda_backend_close(void);

const Backend *cuda_backend_open(int gpu, int local_rank, int tf32, char *err, size_t len) {
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count == 0) {
        std::snprintf(err, len, "run.device = cuda: no CUDA device on this node (%s)",
                      rc != cudaSuccess ? cudaGetErrorString(rc) : "0 devices");
        return nullptr;
    }
    int dev = gpu >= 0 ? gpu : local_rank % count;
    if (dev >= count) {
        std::snprintf(err, len, "run.gpu = %d: this node has %d CUDA device%s", gpu, count, count == 1 ? "" : "s");
        return nullptr;
    }
    if (!S.open) {
        cudaCheck(cudaSetDevice(dev));
        cublasCheck(cublasCreate(&S.blas));
        cublasCheck(cublasSetMathMode(S.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
        S.scalars = static_cast<double *>(dev_alloc(2 * sizeof(double)));
        int ss = cu_sum_squares_scratch_doubles(), ml = cu_moe_losses_scratch_doubles(1024); // (m <= 1024)
        int partial = ss > ml ? ss : ml;
        S.partial = static_cast<double *>(dev_alloc(sizeof(double) * partial));
        S.open = 1;
    }
    return &TABLE;
}

void cuda_backend_close(void) {
    if (!S.open) return;
    void *bufs[] = {S.tokens, S.targets, S.att_scratch, S.rms_scratch, S.scalars, S.partial};
    for (void *b : bufs)
        if (b) dev_release(b);
    cublasCheck(cublasDestroy(S.blas));
    S = State();
}
