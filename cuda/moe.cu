// moe.cu: the MoE layer of src/moe.c on the device: router softmax, top-k and renormalised gates,
// packing token rows by expert, the experts (SwiGLU FFNs in cuBLAS grouped GEMMs: one call per product for
// all experts), the weighted combine, and the backward of all of it. The choices and the row order are those
// of src/moe.c bit for bit (same loops, same tie rule), so the exchange sees the same rows.
// The private shuffle of each expert's rows is drawn on the host (moe_shuffle_permutation, the same
// draws as the CPU path, from the counts the host needs anyway for the exchange) and applied here.
#include "kernels.h"

#include <vector>

// one thread per token n: probs (N, m) = softmax(logits), lse (N), top-k (most probable first, ties to
// the lower id), gates = chosen probs / their sum (gate_sum)
__global__ void router_forward_kernel(float *probs, float *lse, int *topk, float *gates, float *gate_sum,
                                      const float *logits, int N, int m, int k, int renorm) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *lg = logits + (long)n * m;
    float *p = probs + (long)n * m;
    float maxv = -INFINITY;
    for (int e = 0; e < m; e++) maxv = fmaxf(maxv, lg[e]);
    double sum = 0.0;
    for (int e = 0; e < m; e++) { p[e] = expf(lg[e] - maxv); sum += p[e]; }
    float inv = (float)(1.0 / sum);
    for (int e = 0; e < m; e++) p[e] *= inv;
    lse[n] = (float)(log(sum) + maxv);
    int *top = topk + (long)n * k;
    float gsum = 0.0f;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < m; e++) {
            int taken = 0;
            for (int i = 0; i < j; i++) taken |= top[i] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        top[j] = best;
        gsum += p[best];
    }
    if (!renorm) gsum = 1.0f;
    gate_sum[n] = gsum;
    for (int j = 0; j < k; j++) gates[(long)n * k + j] = p[top[j]] / gsum;
}

// Dispatch, a stable counting sort of the N*k choices by expert in three launches, each deterministic:
// the choices are cut into chunks of DISPATCH_CHUNK; per chunk, how many go to each expert; per expert, its
// count and each chunk's first place among its rows; then every choice takes its row.
static const int DISPATCH_CHUNK = 128;

int cu_moe_dispatch_scratch_ints(long Nk, int m) { return (int)(ceil_div(Nk, DISPATCH_CHUNK) * (long)m); }

// block b, one thread per choice of chunk b: chunk_counts (chunks, m) [b, e] = its choices routed to e
__global__ void dispatch_count_kernel(int *chunk_counts, const int *topk, long Nk, int m) {
    DYNAMIC_SMEM(int, c); // (m)
    for (int e = threadIdx.x; e < m; e += blockDim.x) c[e] = 0;
    __syncthreads();
    long i = (long)blockIdx.x * DISPATCH_CHUNK + threadIdx.x;
    if (i < Nk) atomicAdd(&c[topk[i]], 1); // (integer counts: the same for any order)
    __syncthreads();
    for (int e = threadIdx.x; e < m; e += blockDim.x) chunk_counts[(long)blockIdx.x * m + e] = c[e];
}

// one block, thread e per expert: counts[e]; chunk_counts [b, e] becomes the rows of e in the chunks before b;
// then thread 0 lays the experts out in `order` (NULL: 0..m-1): offsets
__global__ void dispatch_scan_kernel(int *counts, int *offsets, int *chunk_counts, const int *order, int chunks,
                                     int m) {
    for (int e = threadIdx.x; e < m; e += blockDim.x) {
        int run = 0;
        for (int b = 0; b < chunks; b++) {
            int n = chunk_counts[(long)b * m + e];
            chunk_counts[(long)b * m + e] = run;
            run += n;
        }
        counts[e] = run;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int next = 0;
        for (int i = 0; i < m; i++) {
            int x = order ? order[i] : i;
            offsets[x] = next;
            next += counts[x];
        }
    }
}

// block b, thread t for choice i = b * DISPATCH_CHUNK + t: its row is its expert's offset, plus the expert's rows
// in earlier chunks, plus the choices before it in this chunk that chose the same expert (stable: choice order)
__global__ void dispatch_place_kernel(int *row_choice, const int *offsets, const int *chunk_base, const int *topk,
                                      long Nk, int m) {
    __shared__ int ex[DISPATCH_CHUNK];
    long i = (long)blockIdx.x * DISPATCH_CHUNK + threadIdx.x;
    ex[threadIdx.x] = i < Nk ? topk[i] : -1;
    __syncthreads();
    if (i >= Nk) return;
    int e = ex[threadIdx.x], before = 0;
    for (int t = 0; t < (int)threadIdx.x; t++) before += ex[t] == e;
    row_choice[offsets[e] + chunk_base[(long)blockIdx.x * m + e] + before] = (int)i;
}

void cu_moe_dispatch(int *counts, int *offsets, int *row_choice, const int *topk, const int *order, long Nk, int m,
                     int *scratch, cudaStream_t stream) {
    int chunks = ceil_div(Nk, DISPATCH_CHUNK);
    if (chunks == 0) { // no rows: every count and offset 0
        cudaCheck(cudaMemsetAsync(counts, 0, sizeof(int) * m, stream));
        cudaCheck(cudaMemsetAsync(offsets, 0, sizeof(int) * m, stream));
        return;
    }
    LAUNCH(dispatch_count_kernel, chunks, DISPATCH_CHUNK, sizeof(int) * m, stream, scratch, topk, Nk, m);
    cudaCheck(cudaGetLastError());
    LAUNCH(dispatch_scan_kernel, 1, m < 1024 ? ceil_div(m, 32) * 32 : 1024, 0, stream, counts, offsets, scratch, order,
           chunks, m);
    cudaCheck(cudaGetLastError());
    LAUNCH(dispatch_place_kernel, chunks, DISPATCH_CHUNK, 0, stream, row_choice, offsets, scratch, topk, Nk, m);
    cudaCheck(cudaGetLastError());
}

// one thread per packed row: row_choice[r] = was[perm[r]] (the private shuffle)
__global__ void shuffle_kernel(int *row_choice, const int *was, const int *perm, long Nk) {
    long r = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r < Nk) row_choice[r] = was[perm[r]];
}

// one thread: this layer's Switch aux loss m * sum_e (counts_e / (N k)) * mean_n probs[n, e] and z-loss
// mean_n lse_n^2, summed in src/moe.c's order (double): out[0] = aux, out[1] = z
static const int LOSS_THREADS = 256;

int cu_moe_losses_scratch_doubles(int m) { return m + 1; }

// block e < m: sums[e] = sum_n probs[n, e]; block m: sums[m] = sum_n lse[n]^2. In double, each thread over its
// rows in order, then a fixed tree over the block's threads (the same sums for any launch order).
__global__ void moe_losses_partial_kernel(double *sums, const float *probs, const float *lse, int N, int m) {
    DYNAMIC_SMEM(double, s);
    int e = blockIdx.x;
    double acc = 0.0;
    for (int n = threadIdx.x; n < N; n += blockDim.x)
        acc += e < m ? (double)probs[(long)n * m + e] : (double)lse[n] * lse[n];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) sums[e] = s[0];
}

// out[0] = aux = m sum_e frac_e mean_p_e (experts in order), out[1] = z = mean lse^2, from the block sums
__global__ void moe_losses_kernel(double *out, const double *sums, const int *counts, int N, int m, int k) {
    double aux = 0.0;
    for (int e = 0; e < m; e++) aux += ((double)counts[e] / ((double)N * k)) * (sums[e] / N);
    out[0] = aux * m;
    out[1] = sums[m] / N;
}

// one thread per packed row: choice_row, the inverse of row_choice
__global__ void invert_kernel(int *choice_row, const int *row_choice, long Nk) {
    long r = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r < Nk) choice_row[row_choice[r]] = (int)r;
}

// one thread per element of xe (N*k, d): the input row of the token of each packed row
__global__ void pack_kernel(float *xe, const float *inp, const int *row_choice, long Nk, int d, int k) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= Nk * d) return;
    long row = i / d;
    xe[i] = inp[(long)(row_choice[row] / k) * d + i % d];
}

// one thread per element of out (N, d): sum_j gates[n, j] * ye[choice_row[n*k + j]], j in order
__global__ void combine_kernel(float *out, const float *ye, const float *gates, const int *choice_row, int N, int d,
                               int k) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * d) return;
    long n = i / d;
    int c = (int)(i % d);
    float o = 0.0f;
    for (int j = 0; j < k; j++) o += gates[n * k + j] * ye[(long)choice_row[n * k + j] * d + c];
    out[i] = o;
}

// one warp per choice (n, j): dye[row] = g * dout[n], dgates[n, j] = dout[n] . ye[row]
__global__ void combine_backward_kernel(float *dye, float *dgates, const float *dout, const float *ye,
                                        const float *gates, const int *choice_row, long Nk, int d, int k) {
    long ch = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (ch >= Nk) return;
    int lane = threadIdx.x % 32;
    long row = choice_row[ch];
    const float *dy = dout + (ch / k) * d, *y = ye + row * d;
    float g = gates[ch], dot = 0.0f;
    for (int i = lane; i < d; i += 32) { dot += dy[i] * y[i]; dye[row * d + i] = g * dy[i]; }
    dot = warp_sum(dot);
    if (lane == 0) dgates[ch] = dot;
}

// one thread per element of dinp (N, d): += the input gradients of the token's k packed rows, j in order
__global__ void unpack_kernel(float *dinp, const float *dxe, const int *choice_row, int N, int d, int k) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * d) return;
    long n = i / d;
    int c = (int)(i % d);
    float s = dinp[i];
    for (int j = 0; j < k; j++) s += dxe[(long)choice_row[n * k + j] * d + c];
    dinp[i] = s;
}

// one thread per token: d loss / d logits (N, m) through the gates' renormalisation, the softmax, the
// Switch aux loss (fractions held constant) and the z-loss; the formula of src/moe.c
__global__ void router_backward_kernel(float *dlogits, const float *probs, const float *lse, const int *topk,
                                       const float *gates, const float *gate_sum, const float *dgates,
                                       const int *counts, int aux_rows, int N, int m, int k, int renorm,
                                       float aux_coef, float z_coef) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *p = probs + (long)n * m, *g = gates + (long)n * k, *dg = dgates + (long)n * k;
    const int *top = topk + (long)n * k;
    float *dl = dlogits + (long)n * m;
    for (int e = 0; e < m; e++) dl[e] = (float)(aux_coef * (double)m * counts[e] / ((double)aux_rows * k) / aux_rows);
    float dot = 0.0f;
    for (int j = 0; j < k && renorm; j++) dot += dg[j] * g[j];
    for (int j = 0; j < k; j++) dl[top[j]] += (dg[j] - dot) / gate_sum[n];
    float pdot = 0.0f;
    for (int e = 0; e < m; e++) pdot += p[e] * dl[e];
    float zc = z_coef * 2.0f * lse[n] / N;
    for (int e = 0; e < m; e++) dl[e] = p[e] * (dl[e] - pdot) + zc * p[e];
}

// The router's GEMMs run in exact fp32 whatever the handle's mode (run.tf32), so that the top-k choices, which
// a rounding can flip, match the CPU's.
static cublasMath_t router_math_begin(cublasHandle_t h) {
    cublasMath_t mode;
    cublasCheck(cublasGetMathMode(h, &mode));
    cublasCheck(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    return mode;
}
static void router_math_end(cublasHandle_t h, cublasMath_t mode) { cublasCheck(cublasSetMathMode(h, mode)); }

void cu_moe_route(cublasHandle_t h, CuMoeActs *a, const float *inp, const float *router, const int *order,
                  int *scratch, cudaStream_t stream) {
    long Nk = (long)a->N * a->k;
    if (a->m > 1024) fail("CUDA MoE routing: %d experts, at most 1024 supported", a->m);
    cublasMath_t mode = router_math_begin(h);
    cu_matmul_forward(h, a->logits, inp, router, a->N, a->d, a->m);
    router_math_end(h, mode);
    LAUNCH(router_forward_kernel, ceil_div(a->N, 128), 128, 0, stream, a->probs, a->lse, a->topk, a->gates, a->gate_sum,
           a->logits, a->N, a->m, a->k, a->renorm);
    cudaCheck(cudaGetLastError());
    cu_moe_dispatch(a->counts, a->offsets, a->row_choice, a->topk, order, Nk, a->m, scratch, stream);
}

void cu_moe_pack(CuMoeActs *a, const float *inp, const int *perm, int *scratch, cudaStream_t stream) {
    long Nk = (long)a->N * a->k;
    if (perm) {
        cudaCheck(cudaMemcpyAsync(scratch, a->row_choice, sizeof(int) * Nk, cudaMemcpyDeviceToDevice, stream));
        LAUNCH(shuffle_kernel, ceil_div(Nk, 256), 256, 0, stream, a->row_choice, scratch, perm, Nk);
        cudaCheck(cudaGetLastError());
    }
    LAUNCH(invert_kernel, ceil_div(Nk, 256), 256, 0, stream, a->choice_row, a->row_choice, Nk);
    cudaCheck(cudaGetLastError());
    LAUNCH(pack_kernel, ceil_div(Nk * a->d, 256), 256, 0, stream, a->xe, inp, a->row_choice, Nk, a->d, a->k);
    cudaCheck(cudaGetLastError());
}

void cu_moe_losses(double *out, double *scratch, const CuMoeActs *a, cudaStream_t stream) {
    LAUNCH(moe_losses_partial_kernel, a->m + 1, LOSS_THREADS, sizeof(double) * LOSS_THREADS, stream, scratch, a->probs,
           a->lse, a->N, a->m);
    cudaCheck(cudaGetLastError());
    LAUNCH(moe_losses_kernel, 1, 1, 0, stream, out, scratch, a->counts, a->N, a->m, a->k);
    cudaCheck(cudaGetLastError());
}

// the experts present with rows, as FFN groups (at most m) with their forward's pointers into a's buffers, and
// (ids non-NULL) each group's expert in ids
static int expert_groups(FfnGroup *g, int *ids, const CuMoeActs *a, float *const *gate, float *const *up,
                         float *const *down, const int *counts, const int *offsets) {
    int d = a->d, f = a->f, n = 0;
    for (int e = 0; e < a->m; e++) {
        long r0 = offsets[e];
        if (!gate[e] || counts[e] == 0) continue;
        FfnGroup x = {};
        x.rows = counts[e];
        x.wg = gate[e]; x.wu = up[e]; x.wd = down[e];
        x.x = a->xe + r0 * d; x.y = a->ye + r0 * d;
        x.h = a->he + r0 * f; x.u = a->ue + r0 * f; x.a = a->ae + r0 * f;
        if (ids) ids[n] = e;
        g[n++] = x;
    }
    return n;
}

void cu_moe_experts_forward(cublasHandle_t h, CuMoeActs *a, float *const *gate, float *const *up, float *const *down,
                            const int *counts, const int *offsets, CuTable t, cudaStream_t stream) {
    std::vector<FfnGroup> g(a->m);
    int n = expert_groups(g.data(), nullptr, a, gate, up, down, counts, offsets);
    cu_ffn_groups_forward(h, g.data(), n, t, a->d, a->f, stream);
}

void cu_moe_combine(float *out, const CuMoeActs *a, cudaStream_t stream) {
    LAUNCH(combine_kernel, ceil_div((long)a->N * a->d, 256), 256, 0, stream, out, a->ye, a->gates, a->choice_row, a->N,
           a->d, a->k);
    cudaCheck(cudaGetLastError());
}

void cu_moe_combine_backward(float *dye, float *dgates, const float *dout, const CuMoeActs *a, cudaStream_t stream) {
    long Nk = (long)a->N * a->k;
    LAUNCH(combine_backward_kernel, ceil_div(Nk, 4), 128, 0, stream, dye, dgates, dout, a->ye, a->gates, a->choice_row,
           Nk, a->d, a->k);
    cudaCheck(cudaGetLastError());
}

void cu_moe_experts_backward(cublasHandle_t h, float *dxe, float *dhe, float *due, float *dae, const float *dye,
                             const CuMoeActs *a, float *const *gate, float *const *up, float *const *down,
                             float *const *dgate, float *const *dup, float *const *ddown, const int *counts,
                             const int *offsets, CuTable t, cudaStream_t stream) {
    int d = a->d, f = a->f;
    std::vector<FfnGroup> g(a->m);
    std::vector<int> ids(a->m);
    int n = expert_groups(g.data(), ids.data(), a, gate, up, down, counts, offsets);
    for (int i = 0; i < n; i++) {
        int e = ids[i];
        long r0 = offsets[e];
        g[i].dy = dye + r0 * d; g[i].dx = dxe + r0 * d;
        g[i].dwg = dgate[e]; g[i].dwu = dup[e]; g[i].dwd = ddown[e];
        g[i].dh = dhe + r0 * f; g[i].du = due + r0 * f; g[i].da = dae + r0 * f;
    }
    cu_ffn_groups_backward(h, g.data(), n, t, d, f, stream);
}

void cu_moe_route_backward(cublasHandle_t h, float *dinp, float *drouter, float *dlogits, const float *dxe,
                           const float *dgates, const CuMoeActs *a, const float *inp, const float *router,
                           float aux_coef, float z_coef, const int *aux_counts, int aux_rows, cudaStream_t stream) {
    LAUNCH(unpack_kernel, ceil_div((long)a->N * a->d, 256), 256, 0, stream, dinp, dxe, a->choice_row, a->N, a->d, a->k);
    cudaCheck(cudaGetLastError());
    LAUNCH(router_backward_kernel, ceil_div(a->N, 128), 128, 0, stream, dlogits, a->probs, a->lse, a->topk, a->gates,
           a->gate_sum, dgates, aux_counts ? aux_counts : a->counts, aux_counts ? aux_rows : a->N, a->N, a->m, a->k,
           a->renorm, aux_coef, z_coef);
    cudaCheck(cudaGetLastError());
    cublasMath_t mode = router_math_begin(h);
    cu_matmul_backward(h, dinp, drouter, dlogits, inp, router, a->N, a->d, a->m);
    router_math_end(h, mode);
}
