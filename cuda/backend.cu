// backend.cu: the CUDA backend of src/backend.h: the kernels of cuda/ behind the ops table model.c
// calls. Every kernel, copy and GEMM is queued on one non-default stream, so the host waits only where it
// must read a result: once per MoE layer (the routing counts the exchange and the expert GEMMs need) and
// once per step (the gradient norm, with the losses). Buffers the model keeps come from alloc_device and this
// file's own scratch from cudaMalloc: device memory, which the host reaches only through copies (what it
// reads arrives in pinned buffers) and a CUDA-aware MPI directly (mpi_access). The table's state belongs to
// the one device this process opened.
// No MPI reaches here (src/backend.h and what it includes are below the exchange): plain nvcc builds it.
#include "kernels.h"

#include <cstdio>  // snprintf
#include <cstring> // memcpy
#include <unordered_map>
#include <vector>

extern "C" {
#include "backend.h"
}

namespace {

// Pinned host memory an upload goes through, reusable once its copy has run (`sent` has passed).
struct Staging {
    void *pin = nullptr;
    size_t cap = 0;
    cudaEvent_t sent = nullptr;
};

struct State {
    int open = 0;
    cublasHandle_t blas = nullptr;
    cudaStream_t stream = nullptr;                 // every op of this backend (cuBLAS too)
    // the pass's batch (batch()): where the host keeps it, and its device copy, tokens then targets (2 N)
    const Token *host_tokens = nullptr, *host_targets = nullptr;
    int batch_n = 0;
    Token *batch = nullptr;                        // (then the buckets below)
    size_t cap_batch = 0;
    Token *loose = nullptr;                        // tokens of a call outside the batch (generation)
    size_t cap_loose = 0;
    int n_buckets = 0;                             // the batch tokens' buckets (cu_embedding_buckets) on the device:
    int *buckets = nullptr;                        // token (N), start (N + 1), rows (N), in batch's buffer
    std::vector<int> host_buckets;                 // (3 N + 1) built here
    // every upload's pinned staging (the batch, the shuffle, AdamW's and the experts' tables): one not in flight
    // is reused, else a new one joins, so an upload never waits (the pool grows to the uploads between two waits)
    std::vector<Staging> staging;
    std::vector<CuAdamwTensor> adamw_tensors;      // AdamW's tables (adamw_dev), built here
    void *adamw_tables = nullptr;                  // their device copy
    size_t cap_adamw_tables = 0;
    void *ffn_table = nullptr;                     // the experts' grouped GEMMs' table (cu_ffn_table_bytes)
    size_t cap_ffn_table = 0;
    int *perm = nullptr;                           // (N*k) the shuffle's permutation on the device
    int *order = nullptr;                          // (MAX_EXPERTS) the experts' packing order on the device,
    std::vector<int> host_order;                   // and what it holds (uploaded when the host's differs)
    size_t cap_perm = 0;
    int *dispatch = nullptr;                       // the dispatch's per-chunk counts
    size_t cap_dispatch = 0;
    void *pin_route = nullptr;                     // (2 m ints, 2 + m doubles) a MoE layer's counts, offsets, aux, z,
                                                   // probability sums
    int *aux_counts = nullptr;                     // (MAX_EXPERTS) a party's counts for its aux loss's gradient
    void *att_scratch = nullptr;                   // attention scratch
    void *rms_scratch = nullptr;                   // the RMSNorm and QK-norm weight gradients' partial sums
    size_t cap_att = 0, cap_rms = 0;               // their sizes in bytes (each grown to the largest use)
    double *scalars = nullptr;                     // (MAX_SCALARS) results the host reads (sums of squares; aux, z)
    double *partial = nullptr;                     // scratch of the sum of squares and of the MoE losses
    double *pin_scalar = nullptr;                  // (MAX_SCALARS) pinned: where the sums of squares arrive
    void *finite = nullptr;                        // first_nonfinite's blocks (2 count ints), then its results:
    size_t cap_finite = 0;                         // first (count unsigned long long), value (count floats)
    void *pin_finite = nullptr;                    // pinned: where the results arrive
    size_t cap_pin_finite = 0;
    std::unordered_map<void *, size_t> sizes;      // bytes of every buffer alloc gave out
    size_t bytes = 0, peak = 0;                    // device bytes held, now and at most
} S;

const int MAX_EXPERTS = 1024;   // (cu_moe_route's limit)
const int MAX_SCALARS = 4096;   // arrays one sum_squares call may take

void count_alloc(void *p, size_t bytes) {
    S.sizes[p] = bytes;
    S.bytes += bytes;
    if (S.bytes > S.peak) S.peak = S.bytes;
}
void count_release(void *p) {
    auto it = S.sizes.find(p);
    if (it == S.sizes.end()) fail("CUDA backend: release of %p, which alloc did not give", p);
    S.bytes -= it->second;
    S.sizes.erase(it);
}

// A model buffer: device memory, zero-filled on the stream.
void *dev_alloc_device(size_t bytes) {
    void *p = nullptr;
    cudaCheck(cudaMalloc(&p, bytes ? bytes : 1));
    cudaCheck(cudaMemsetAsync(p, 0, bytes, S.stream));
    count_alloc(p, bytes);
    return p;
}
void dev_release(void *p) {
    if (!p) return;
    count_release(p);
    cudaCheck(cudaFree(p));
}
void *dev_resize(void *q, size_t old_bytes, size_t bytes) {
    void *p = dev_alloc_device(bytes);
    if (old_bytes) cudaCheck(cudaMemcpyAsync(p, q, old_bytes < bytes ? old_bytes : bytes, cudaMemcpyDefault, S.stream));
    dev_release(q); // (cudaFree waits for the copy)
    return p;
}
// This backend's own scratch: device memory, contents undefined.
void *scratch_alloc(size_t bytes) {
    void *p = nullptr;
    cudaCheck(cudaMalloc(&p, bytes ? bytes : 1));
    count_alloc(p, bytes);
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
void dev_sync(void) { cudaCheck(cudaStreamSynchronize(S.stream)); }
void mpi_access(int open) {
#ifdef __CUDACC__
    (void)open; // (a CUDA-aware MPI reads device memory itself)
#else
    emu_mpi_access(open);
#endif
}
void dev_zero(void *p, size_t bytes) { cudaCheck(cudaMemsetAsync(p, 0, bytes, S.stream)); }
void dev_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, S.stream));
}

// *buf, device scratch holding at least `bytes` (*cap: its size, grown to the largest request; contents
// not kept)
void *dev_grow(void **buf, size_t *cap, size_t bytes) {
    if (bytes > *cap || !*buf) {
        if (*buf) { count_release(*buf); cudaCheck(cudaFree(*buf)); }
        *buf = scratch_alloc(bytes);
        *cap = bytes;
    }
    return *buf;
}

// *buf, pinned host memory of at least `bytes` (*cap: its size; contents not kept)
void *grow_pinned(void **buf, size_t *cap, size_t bytes) {
    if (bytes > *cap || !*buf) {
        if (*buf) cudaCheck(cudaFreeHost(*buf));
        cudaCheck(cudaMallocHost(buf, bytes ? bytes : 1));
        *cap = bytes;
    }
    return *buf;
}

// A staging of at least `bytes` with no copy from it in flight (its index; never a wait). Once the caller has
// queued its copies from it, staging_sent.
int staging_take(size_t bytes) {
    size_t i = 0;
    for (; i < S.staging.size(); i++) {
        cudaError_t rc = cudaEventQuery(S.staging[i].sent);
        if (rc == cudaSuccess) break;
        if (rc != cudaErrorNotReady) cudaCheck(rc);
        else cudaCheck(cudaGetLastError());
    }
    if (i == S.staging.size()) {
        S.staging.emplace_back();
        cudaCheck(cudaEventCreateWithFlags(&S.staging[i].sent, cudaEventDisableTiming));
    }
    grow_pinned(&S.staging[i].pin, &S.staging[i].cap, bytes);
    return (int)i;
}
void staging_sent(int i) { cudaCheck(cudaEventRecord(S.staging[i].sent, S.stream)); }

// dst (device) = n bytes of host memory src, through a staging
void upload(void *dst, const void *src, size_t n) {
    if (!n) return;
    int i = staging_take(n);
    std::memcpy(S.staging[i].pin, src, n);
    cudaCheck(cudaMemcpyAsync(dst, S.staging[i].pin, n, cudaMemcpyHostToDevice, S.stream));
    staging_sent(i);
}

// The pass's tokens and targets (N each, either may be NULL), and the tokens' buckets for the embedding's
// backward: uploaded once (one copy), read by the ops below.
void batch(const Token *tokens, const Token *targets, int N) {
    std::vector<int> &hb = S.host_buckets;
    hb.assign(3 * (size_t)N + 1, 0);
    S.n_buckets = tokens ? cu_embedding_buckets(tokens, N, hb.data(), hb.data() + N, hb.data() + 2 * N + 1) : 0;
    size_t tok_bytes = (sizeof(Token) * 2 * N + 15) / 16 * 16, bytes = tok_bytes + sizeof(int) * hb.size();
    char *d = static_cast<char *>(dev_grow(reinterpret_cast<void **>(&S.batch), &S.cap_batch, bytes));
    int slot = staging_take(bytes);
    char *pin = static_cast<char *>(S.staging[slot].pin);
    if (tokens) std::memcpy(pin, tokens, sizeof(Token) * N);
    if (targets) std::memcpy(pin + sizeof(Token) * N, targets, sizeof(Token) * N);
    std::memcpy(pin + tok_bytes, hb.data(), sizeof(int) * hb.size());
    cudaCheck(cudaMemcpyAsync(d, pin, bytes, cudaMemcpyHostToDevice, S.stream));
    staging_sent(slot);
    S.host_tokens = tokens;
    S.host_targets = targets;
    S.batch_n = N;
    S.buckets = reinterpret_cast<int *>(d + tok_bytes);
}
// The device copy of n host tokens: within the batch, or uploaded now
const Token *dev_tokens(const Token *host, int n) {
    const Token *bases[2] = {S.host_tokens, S.host_targets};
    for (int i = 0; i < 2; i++)
        if (bases[i] && host >= bases[i] && host + n <= bases[i] + S.batch_n)
            return S.batch + i * S.batch_n + (host - bases[i]);
    Token *d = static_cast<Token *>(dev_grow(reinterpret_cast<void **>(&S.loose), &S.cap_loose, sizeof(Token) * n));
    upload(d, host, sizeof(Token) * n);
    return d;
}

CuMoeActs view(const MoeActs *a) {
    CuMoeActs c;
    c.N = a->N; c.d = a->d; c.m = a->m; c.k = a->k; c.f = a->f;
    c.renorm = a->renorm;
    c.logits = a->logits; c.probs = a->probs; c.lse = a->lse; c.topk = a->topk; c.gates = a->gates;
    c.gate_sum = a->gate_sum; c.counts = a->dev_index; c.offsets = a->dev_index + a->m; c.row_choice = a->row_choice;
    c.choice_row = a->choice_row; c.xe = a->xe; c.ye = a->ye; c.he = a->he; c.ue = a->ue; c.ae = a->ae;
    return c;
}

void residual(float *out, const float *a, const float *b, size_t n) {
    cu_residual_forward(out, a, b, (long)n, S.stream);
}
void embedding_fwd(float *out, const Token *tokens, const float *embed, int N, int d) {
    cu_embedding_forward(out, dev_tokens(tokens, N), embed, N, d, S.stream);
}
// (the batch's buckets; tokens outside the batch get theirs built and uploaded here)
void embedding_bwd(float *dembed, const float *dout, const Token *tokens, int N, int d) {
    if (tokens != S.host_tokens || N != S.batch_n) batch(tokens, nullptr, N);
    const int *b = S.buckets;
    cu_embedding_backward(dembed, dout, b, b + N, b + 2 * N + 1, S.n_buckets, d, S.stream);
}
void rmsnorm_fwd(float *out, float *rstd, const float *inp, const float *w, int N, int d, float eps) {
    cu_rmsnorm_forward(out, rstd, inp, w, N, d, eps, S.stream);
}
void rmsnorm_bwd(float *dinp, float *dw, const float *dout, const float *inp, const float *w, const float *rstd, int N,
                 int d) {
    size_t need = sizeof(float) * (size_t)cu_rmsnorm_scratch_floats(N, d);
    cu_rmsnorm_backward(dinp, dw, static_cast<float *>(dev_grow(&S.rms_scratch, &S.cap_rms, need)), dout, inp, w, rstd,
                        N, d, S.stream);
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
    cu_rope_forward(qkv, c, s, B, T, H, Hkv, hs, S.stream);
}
void rope_bwd(float *dqkv, const float *c, const float *s, int B, int T, int H, int Hkv, int hs) {
    cu_rope_backward(dqkv, c, s, B, T, H, Hkv, hs, S.stream);
}
void qknorm_fwd(float *qkv, float *raw, float *rstd, const float *wq, const float *wk, int N, int H, int Hkv, int hs,
                int per_head, float eps) {
    cu_qknorm_forward(qkv, raw, rstd, wq, wk, N, H, Hkv, hs, per_head, eps, S.stream);
}
void qknorm_bwd(float *dqkv, float *dwq, float *dwk, const float *raw, const float *wq, const float *wk,
                const float *rstd, int N, int H, int Hkv, int hs, int per_head) {
    size_t need = sizeof(float) * (size_t)cu_qknorm_scratch_floats(N, H, Hkv, hs, per_head);
    float *scratch = static_cast<float *>(dev_grow(&S.rms_scratch, &S.cap_rms, need)); // (shared with RMSNorm's)
    cu_qknorm_backward(dqkv, dwq, dwk, scratch, raw, wq, wk, rstd, N, H, Hkv, hs, per_head, S.stream);
}
float *att_scratch(int B, int T, int H, int hs) {
    size_t need = sizeof(float) * (size_t)cu_attention_scratch_floats(B, T, H, hs);
    return static_cast<float *>(dev_grow(&S.att_scratch, &S.cap_att, need));
}
size_t att_saved(int B, int T, int H) { return (size_t)B * H * T * T; } // the probabilities
size_t att_work(int) { return 0; }                                        // (att_scratch instead)
void attention_fwd(float *out, float *att, float *, size_t, const float *qkv, int B, int T, int H, int Hkv, int hs) {
    cu_attention_forward(S.blas, out, att, qkv, att_scratch(B, T, H, hs), B, T, H, Hkv, hs, S.stream);
}
void attention_bwd(float *dqkv, float *, size_t, const float *dout, const float *qkv, const float *att, const float *,
                   int B, int T, int H, int Hkv, int hs) {
    cu_attention_backward(S.blas, dqkv, dout, qkv, att, att_scratch(B, T, H, hs), B, T, H, Hkv, hs, S.stream);
}
void ce_fwd(float *probs, float *losses, const Token *targets, int N, int V) {
    cu_crossentropy_forward(probs, losses, dev_tokens(targets, N), N, V, S.stream);
}
void ce_bwd(float *dlogits, const float *probs, const Token *targets, int N, int V, float scale) {
    cu_crossentropy_backward(dlogits, probs, dev_tokens(targets, N), N, V, scale, S.stream);
}
void ce_fused(float *logits, float *losses, const Token *targets, int N, int V, float scale) {
    cu_crossentropy_fused(logits, losses, dev_tokens(targets, N), N, V, scale, S.stream);
}
void ffn_fwd(float *y, float *h, float *u, float *a, const float *x, const float *wg, const float *wu, const float *wd,
             int N, int d, int f) {
    if (N == 0) return;
    cu_ffn_forward(S.blas, y, h, u, a, x, wg, wu, wd, N, d, f, S.stream);
}
void ffn_bwd(float *dx, float *dwg, float *dwu, float *dwd, float *dh, float *du, float *da, const float *dy,
             const float *x, const float *h, const float *u, const float *a, const float *wg, const float *wu,
             const float *wd, int N, int d, int f) {
    if (N == 0) return;
    cu_ffn_backward(S.blas, dx, dwg, dwu, dwd, dh, du, da, dy, x, h, u, a, wg, wu, wd, N, d, f, S.stream);
}
// The device copy of the experts' packing order (m host ints; NULL: none), uploaded when it changed
const int *dev_order(const int *order, int m) {
    if (!order) return nullptr;
    if (S.host_order.size() == (size_t)m && std::memcmp(S.host_order.data(), order, sizeof(int) * m) == 0)
        return S.order;
    if (!S.order) S.order = static_cast<int *>(scratch_alloc(sizeof(int) * MAX_EXPERTS));
    if (m > MAX_EXPERTS) fail("CUDA MoE routing: %d experts, at most %d supported", m, MAX_EXPERTS);
    S.host_order.assign(order, order + m);
    upload(S.order, order, sizeof(int) * m);
    return S.order;
}

// The router and dispatch on the device, then the layer's one wait: the host needs the counts and offsets
// (the exchange, the expert GEMMs' sizes, the shuffle) and takes the aux and z losses with them.
void moe_route_dev(MoeActs *a, const float *inp, const float *router, const int *order, Rng *shuffle) {
    CuMoeActs c = view(a);
    int m = a->m;
    size_t need = sizeof(int) * (size_t)cu_moe_dispatch_scratch_ints((long)a->N * a->k, m);
    int *scratch = static_cast<int *>(dev_grow(reinterpret_cast<void **>(&S.dispatch), &S.cap_dispatch, need));
    cu_moe_route(S.blas, &c, inp, router, dev_order(order, m), scratch, S.stream);
    cu_moe_losses(S.scalars, S.partial, &c, S.stream);
    int *pin = static_cast<int *>(S.pin_route);
    double *pin_losses = reinterpret_cast<double *>(pin + 2 * MAX_EXPERTS);
    cudaCheck(cudaMemcpyAsync(pin, a->dev_index, sizeof(int) * 2 * m, cudaMemcpyDeviceToHost, S.stream));
    cudaCheck(cudaMemcpyAsync(pin_losses, S.scalars, 2 * sizeof(double), cudaMemcpyDeviceToHost, S.stream));
    cudaCheck(cudaMemcpyAsync(pin_losses + 2, S.partial, sizeof(double) * m, cudaMemcpyDeviceToHost, S.stream));
    dev_sync();
    std::memcpy(a->counts, pin, sizeof(int) * m);
    std::memcpy(a->offsets, pin + m, sizeof(int) * m);
    a->aux = pin_losses[0];
    a->z = pin_losses[1];
    std::memcpy(a->psum, pin_losses + 2, sizeof(double) * m); // (moe_losses_partial_kernel's sums)
    int *perm = nullptr;
    if (shuffle) { // drawn on the host, as the CPU path does, then uploaded
        size_t bytes = sizeof(int) * (size_t)a->N * a->k;
        moe_shuffle_permutation(a->perm, a->counts, a->offsets, m, shuffle);
        perm = static_cast<int *>(dev_grow(reinterpret_cast<void **>(&S.perm), &S.cap_perm, bytes));
        upload(perm, a->perm, bytes);
    }
    cu_moe_pack(&c, inp, perm, a->choice_row, S.stream);
}
// the experts' grouped GEMMs' table for m experts: a staging (its index in *slot) and the device copy
CuTable ffn_table(int m, int *slot) {
    size_t bytes = cu_ffn_table_bytes(m);
    *slot = staging_take(bytes);
    return CuTable{S.staging[*slot].pin, dev_grow(&S.ffn_table, &S.cap_ffn_table, bytes)};
}
void ffn_groups_fwd(const FfnGroup *g, int n, int d, int f) {
    if (n == 0) return;
    int slot;
    CuTable t = ffn_table(n, &slot);
    cu_ffn_groups_forward(S.blas, g, n, t, d, f, S.stream);
    staging_sent(slot);
}
void ffn_groups_bwd(const FfnGroup *g, int n, int d, int f) {
    if (n == 0) return;
    int slot;
    CuTable t = ffn_table(n, &slot);
    cu_ffn_groups_backward(S.blas, g, n, t, d, f, S.stream);
    staging_sent(slot);
}
void moe_experts_fwd(MoeActs *a, ExpertSet w) {
    CuMoeActs c = view(a);
    int slot;
    CuTable t = ffn_table(a->m, &slot);
    cu_moe_experts_forward(S.blas, &c, w.gate, w.up, w.down, a->counts, a->offsets, t, S.stream);
    staging_sent(slot);
}
void moe_combine_dev(float *out, const MoeActs *a) {
    CuMoeActs c = view(a);
    cu_moe_combine(out, &c, S.stream);
}
void moe_combine_bwd(MoeScratch *s, const float *dout, const MoeActs *a) {
    CuMoeActs c = view(a);
    cu_moe_combine_backward(s->dye, s->dgates, dout, &c, S.stream);
}
void moe_experts_bwd(MoeScratch *s, const MoeActs *a, ExpertSet w, ExpertSet dw) {
    CuMoeActs c = view(a);
    int slot;
    CuTable t = ffn_table(a->m, &slot);
    cu_moe_experts_backward(S.blas, s->dxe, s->dhe, s->due, s->dae, s->dye, &c, w.gate, w.up, w.down, dw.gate, dw.up,
                            dw.down, a->counts, a->offsets, t, S.stream);
    staging_sent(slot);
}
void moe_route_bwd(float *dinp, float *drouter, MoeScratch *s, const MoeActs *a, const float *inp, const float *router,
                   float aux_coef, float z_coef) {
    CuMoeActs c = view(a);
    if (a->party_rows) {
        if (!S.aux_counts) S.aux_counts = static_cast<int *>(scratch_alloc(sizeof(int) * MAX_EXPERTS));
        upload(S.aux_counts, a->party_counts, sizeof(int) * a->m);
    }
    cu_moe_route_backward(S.blas, dinp, drouter, s->dlogits, s->dxe, s->dgates, &c, inp, router, aux_coef, z_coef,
                          a->party_rows ? S.aux_counts : nullptr, a->party_rows, S.stream);
}
// out[i] = the sum of squares of array i, each on the device, then one wait for all of them
// (MAX_SCALARS at a time: one wait each)
void sum_squares_dev(double *out, const float *const *arrays, const size_t *lengths, int count) {
    for (int i0 = 0; i0 < count; i0 += MAX_SCALARS) {
        int n = count - i0 < MAX_SCALARS ? count - i0 : MAX_SCALARS;
        for (int i = 0; i < n; i++)
            cu_sum_squares(S.scalars + i, S.partial, arrays[i0 + i], (long)lengths[i0 + i], S.stream);
        cudaCheck(cudaMemcpyAsync(S.pin_scalar, S.scalars, sizeof(double) * n, cudaMemcpyDeviceToHost, S.stream));
        dev_sync();
        std::memcpy(out + i0, S.pin_scalar, sizeof(double) * n);
    }
}
// The first NaN or Inf of each block of received rows (privacy_first_nonfinite), scanned on the device, one wait
void first_nonfinite_dev(long *first, float *value, const float *buf, const int *rows, const int *offs, int count,
                         int d) {
    if (count == 0) return;
    size_t ints = (sizeof(int) * 2 * count + 15) / 16 * 16;
    size_t results = (sizeof(unsigned long long) + sizeof(float)) * count;
    std::vector<int> ro(2 * (size_t)count);
    int most = 0;
    for (int q = 0; q < count; q++) {
        ro[q] = rows[q];
        ro[count + q] = offs[q];
        most = rows[q] > most ? rows[q] : most;
    }
    char *dev = static_cast<char *>(dev_grow(&S.finite, &S.cap_finite, ints + results));
    upload(dev, ro.data(), sizeof(int) * ro.size());
    auto *dfirst = reinterpret_cast<unsigned long long *>(dev + ints);
    auto *dvalue = reinterpret_cast<float *>(dfirst + count);
    cu_first_nonfinite(dfirst, dvalue, buf, reinterpret_cast<const int *>(dev), most, count, d, S.stream);
    char *pin = static_cast<char *>(grow_pinned(&S.pin_finite, &S.cap_pin_finite, results));
    cudaCheck(cudaMemcpyAsync(pin, dfirst, results, cudaMemcpyDeviceToHost, S.stream));
    dev_sync();
    const auto *hfirst = reinterpret_cast<const unsigned long long *>(pin);
    const auto *hvalue = reinterpret_cast<const float *>(hfirst + count);
    for (int q = 0; q < count; q++) {
        first[q] = hfirst[q] == ~0ull ? -1 : (long)hfirst[q];
        value[q] = hvalue[q];
    }
}
// AdamW over the active tensors: one launch, its two tables uploaded in one copy from a staging.
void adamw_dev(const OptimConfig *o, const ParamTensor *tensors, int n_tensors, const unsigned char *active, int *steps,
               float *params, const float *grads, float *m, float *v, float lr, float grad_scale) {
    std::vector<CuAdamwTensor> &t = S.adamw_tensors;
    t.clear();
    for (int k = 0; k < n_tensors; k++) {
        if (!active[k]) continue;
        const ParamTensor *pt = &tensors[k];
        CuAdamwTensor c = {(long)pt->offset, (long)pt->numel, 0.0f, 0.0f, 0.0f};
        optim_adamw_scalars(o, pt, ++steps[k], lr, &c.bc1, &c.bc2, &c.decay);
        t.push_back(c);
    }
    int nb = cu_adamw_plan(t.data(), (int)t.size(), nullptr);
    if (nb == 0) return;
    size_t tbytes = (sizeof(CuAdamwTensor) * t.size() + 15) / 16 * 16, bytes = tbytes + sizeof(CuAdamwBlock) * nb;
    int slot = staging_take(bytes);
    char *pin = static_cast<char *>(S.staging[slot].pin);
    std::memcpy(pin, t.data(), sizeof(CuAdamwTensor) * t.size());
    cu_adamw_plan(t.data(), (int)t.size(), reinterpret_cast<CuAdamwBlock *>(pin + tbytes));
    char *d = static_cast<char *>(dev_grow(reinterpret_cast<void **>(&S.adamw_tables), &S.cap_adamw_tables, bytes));
    cudaCheck(cudaMemcpyAsync(d, pin, bytes, cudaMemcpyHostToDevice, S.stream));
    staging_sent(slot);
    cu_adamw_tensors(params, grads, m, v, reinterpret_cast<const CuAdamwTensor *>(d),
                     reinterpret_cast<const CuAdamwBlock *>(d + tbytes), nb, lr, o->beta1, o->beta2, o->eps, grad_scale,
                     S.stream);
}

// Every entry by name (C++20 designated initialisers, in the declaration order of backend.h, which the
// compiler enforces): an op moved or added in the table cannot land in another op's slot.
Backend TABLE = {
    .name = "cuda",
    .device = 1,
    .mpi_reads_device = 0, // (a GPU's memory: only a CUDA-aware MPI; the emulation's: see cuda_backend_open)
    .release = dev_release,
    .alloc_device = dev_alloc_device,
    .resize = dev_resize,
    .alloc_pinned = pinned_alloc,
    .release_pinned = pinned_release,
    .sync = dev_sync,
    .mpi_access = mpi_access,
    .zero = dev_zero,
    .copy = dev_copy,
    .peak_bytes = dev_peak,
    .batch = batch,
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
    .crossentropy_fused = ce_fused,
    .ffn_forward = ffn_fwd,
    .ffn_backward = ffn_bwd,
    .ffn_forward_groups = ffn_groups_fwd,
    .ffn_backward_groups = ffn_groups_bwd,
    .moe_route = moe_route_dev,
    .moe_experts_forward = moe_experts_fwd,
    .moe_combine = moe_combine_dev,
    .moe_combine_backward = moe_combine_bwd,
    .moe_experts_backward = moe_experts_bwd,
    .moe_route_backward = moe_route_bwd,
    .first_nonfinite = first_nonfinite_dev,
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
        cudaCheck(cudaStreamCreateWithFlags(&S.stream, cudaStreamNonBlocking));
        cublasCheck(cublasCreate(&S.blas));
        cublasCheck(cublasSetStream(S.blas, S.stream));
        cublasCheck(cublasSetMathMode(S.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
        S.scalars = static_cast<double *>(scratch_alloc(MAX_SCALARS * sizeof(double)));
        int ss = cu_sum_squares_scratch_doubles(), ml = cu_moe_losses_scratch_doubles(MAX_EXPERTS);
        S.partial = static_cast<double *>(scratch_alloc(sizeof(double) * (ss > ml ? ss : ml)));
        cudaCheck(cudaMallocHost(reinterpret_cast<void **>(&S.pin_scalar), MAX_SCALARS * sizeof(double)));
        cudaCheck(cudaMallocHost(&S.pin_route, 2 * MAX_EXPERTS * sizeof(int) + (2 + MAX_EXPERTS) * sizeof(double)));
        S.open = 1;
    }
#ifndef __CUDACC__
    TABLE.mpi_reads_device = emu_mpi_reads_device(); // (host memory: any MPI, unless emulating a GPU's)
#endif
    return &TABLE;
}

void cuda_backend_close(void) {
    if (!S.open) return;
    void *bufs[] = {S.batch,       S.loose,       S.perm,    S.order,   S.dispatch, S.adamw_tables,
                    S.ffn_table,   S.att_scratch, S.rms_scratch, S.scalars, S.partial, S.finite, S.aux_counts};
    for (void *b : bufs)
        if (b) { count_release(b); cudaCheck(cudaFree(b)); }
    for (void *p : {S.pin_route, static_cast<void *>(S.pin_scalar), S.pin_finite})
        if (p) cudaCheck(cudaFreeHost(p));
    for (Staging &st : S.staging) {
        if (st.pin) cudaCheck(cudaFreeHost(st.pin));
        cudaCheck(cudaEventDestroy(st.sent));
    }
    cublasCheck(cublasDestroy(S.blas));
    cudaCheck(cudaStreamDestroy(S.stream));
    S = State();
}
