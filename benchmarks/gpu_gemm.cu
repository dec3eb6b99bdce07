// gpu_gemm: this GPU's cuBLAS GEMM rates, for benchmarks/gpu.sh. The dense fp32 and TF32 peaks (one square
// SGEMM) that the benchmark's shares are of, then the expert GEMMs of one MoE layer at a shape of its own: the
// gate-and-up product, 2 E problems of f x rows x d, the way pcmoe's grouped FFN calls it (cuda/swiglu.cu:
// cublasGemmGroupedBatchedEx, one group per problem, the compute type from the handle's math mode) and the ways
// it could (cublasSgemmGroupedBatched with the math mode, its fallback; one uniform group; strided-batched as
// with capacity padding; one SGEMM per problem). Every variant's product is compared with the exact-fp32 grouped
// one before its rate is printed.
//   usage: gpu_gemm [N E ROWS D F]   (defaults 8192 32 512 512 512: the large shape of benchmarks/gpu.sh)
//          gpu_gemm --check [bad]    small sizes, the exact-fp32 products against a host loop too, one
//                                    repetition each (the emulated build runs it: tests/test_cuda_emu.sh);
//                                    "bad" spoils one element first, which the check must catch
// Prints one line per variant: KEY TFLOP/s "TFLOP/s" worst-error "of" tolerance, and a description; a variant
// cuBLAS refuses prints "refused" with the status. Exits 77 without a CUDA device, 1 when a product is wrong.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common.cuh" // cudaCheck, cublasCheck (and the emulation where nvcc is not the compiler)

namespace {

// count products of one size, their buffers in device memory: problem i reads A_i (k x m, column-major with
// ld k: op T) and B_i (k x n, ld k) and writes C_i (m x n, ld m), each at a fixed stride.
struct Problems {
    int count, m, n, k;
    float *a, *b, *c;             // device: count * (k m), count * (k n), count * (m n) floats
    float **ptrs;                 // device: the pointer arrays A[count], B[count], C[count]
    long sa() const { return (long)k * m; }
    long sb() const { return (long)k * n; }
    long sc() const { return (long)m * n; }
    double flops() const { return 2.0 * m * n * k * count; }
};

float *dev_random(long n, unsigned seed, std::vector<float> *keep) {
    std::vector<float> h((size_t)n);
    unsigned s = seed;
    for (float &x : h) { // uniform in [-1, 1), a fixed sequence
        s = s * 1664525u + 1013904223u;
        x = (float)((s >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    float *d = nullptr;
    cudaCheck(cudaMalloc(reinterpret_cast<void **>(&d), sizeof(float) * n));
    cudaCheck(cudaMemcpy(d, h.data(), sizeof(float) * n, cudaMemcpyHostToDevice));
    if (keep) *keep = h;
    return d;
}

Problems problems_make(int count, int m, int n, int k, std::vector<float> *ha, std::vector<float> *hb) {
    Problems p = {count, m, n, k, nullptr, nullptr, nullptr, nullptr};
    p.a = dev_random(count * p.sa(), 1, ha);
    p.b = dev_random(count * p.sb(), 2, hb);
    cudaCheck(cudaMalloc(reinterpret_cast<void **>(&p.c), sizeof(float) * count * p.sc()));
    std::vector<float *> h(3 * (size_t)count);
    for (int i = 0; i < count; i++) {
        h[i] = p.a + i * p.sa();
        h[count + i] = p.b + i * p.sb();
        h[2 * count + i] = p.c + i * p.sc();
    }
    cudaCheck(cudaMalloc(reinterpret_cast<void **>(&p.ptrs), sizeof(float *) * h.size()));
    cudaCheck(cudaMemcpy(p.ptrs, h.data(), sizeof(float *) * h.size(), cudaMemcpyHostToDevice));
    return p;
}

void problems_free(Problems *p) {
    for (void *q : {static_cast<void *>(p->a), static_cast<void *>(p->b), static_cast<void *>(p->c),
                    static_cast<void *>(p->ptrs)})
        cudaCheck(cudaFree(q));
}

enum Way { GROUPED, GROUPED_SGEMM, GROUPED_ONE_GROUP, STRIDED, ONE_BY_ONE };

// one launch of every product by way w, on the handle's math mode (the grouped Ex calls: the compute type that
// mode stands for, as cuda/swiglu.cu); the cuBLAS status of the (first) call
cublasStatus_t run_way(cublasHandle_t h, Way w, const Problems &p) {
    const float one = 1.0f, zero = 0.0f;
    int c = p.count;
    const float *const *A = p.ptrs, *const *B = p.ptrs + c;
    float *const *C = p.ptrs + 2 * c;
    std::vector<cublasOperation_t> ta((size_t)c, CUBLAS_OP_T), tb((size_t)c, CUBLAS_OP_N);
    std::vector<int> ms((size_t)c, p.m), ns((size_t)c, p.n), ks((size_t)c, p.k), ones((size_t)c, 1);
    std::vector<int> lda((size_t)c, p.k), ldb((size_t)c, p.k), ldc((size_t)c, p.m);
    std::vector<float> alpha((size_t)c, 1.0f), beta((size_t)c, 0.0f);
    switch (w) {
    case GROUPED: // as cuda/swiglu.cu: a group per problem
    case GROUPED_ONE_GROUP: // (only the arrays' first elements are read)
        return cublasGemmGroupedBatchedEx(h, ta.data(), tb.data(), ms.data(), ns.data(), ks.data(), alpha.data(),
                                          reinterpret_cast<const void *const *>(A), CUDA_R_32F, lda.data(),
                                          reinterpret_cast<const void *const *>(B), CUDA_R_32F, ldb.data(),
                                          beta.data(), reinterpret_cast<void *const *>(C), CUDA_R_32F, ldc.data(),
                                          w == GROUPED ? c : 1, w == GROUPED ? ones.data() : &c,
                                          cublas_compute_type(h));
    case GROUPED_SGEMM: // cuda/swiglu.cu's fallback
        return cublasSgemmGroupedBatched(h, ta.data(), tb.data(), ms.data(), ns.data(), ks.data(), alpha.data(), A,
                                         lda.data(), B, ldb.data(), beta.data(), C, ldc.data(), c, ones.data());
    case STRIDED:
        return cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, p.m, p.n, p.k, &one, p.a, p.k, p.sa(), p.b,
                                         p.k, p.sb(), &zero, p.c, p.m, p.sc(), c);
    case ONE_BY_ONE:
        for (int i = 0; i < c; i++) {
            cublasStatus_t st = cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, p.m, p.n, p.k, &one, p.a + i * p.sa(), p.k,
                                            p.b + i * p.sb(), p.k, &zero, p.c + i * p.sc(), p.m);
            if (st != CUBLAS_STATUS_SUCCESS) return st;
        }
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

double seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// worst |got - ref| / max |ref| over the products (NaN counts as infinitely wrong)
double worst_error(const std::vector<float> &got, const std::vector<float> &ref) {
    double big = 0.0, w = 0.0;
    for (float r : ref) big = std::fmax(big, std::fabs((double)r));
    for (size_t i = 0; i < ref.size(); i++) {
        double e = std::fabs((double)got[i] - (double)ref[i]);
        if (!(e <= w)) w = std::isnan(e) ? INFINITY : e;
    }
    return big > 0.0 ? w / big : w;
}

std::vector<float> download(const Problems &p) {
    std::vector<float> h((size_t)p.count * p.sc());
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaMemcpy(h.data(), p.c, sizeof(float) * h.size(), cudaMemcpyDeviceToHost));
    return h;
}

// the products on the host in double (check mode): C_i = A_i^T B_i
std::vector<float> host_products(const Problems &p, const std::vector<float> &a, const std::vector<float> &b) {
    std::vector<float> c((size_t)p.count * p.sc());
    for (int i = 0; i < p.count; i++)
        for (int col = 0; col < p.n; col++)
            for (int row = 0; row < p.m; row++) {
                double s = 0.0;
                for (int t = 0; t < p.k; t++)
                    s += (double)a[i * p.sa() + (long)row * p.k + t] * b[i * p.sb() + (long)col * p.k + t];
                c[i * p.sc() + (long)col * p.m + row] = (float)s;
            }
    return c;
}

struct Run { // what main passes to each measurement
    cublasHandle_t h;
    double min_seconds; // repeat for at least this long (0: once)
    const std::vector<float> *ref;
    int *failures;
};

// times way w on math mode `math` and prints its line; tol: the largest worst_error that passes
void measure(const Run &r, const char *key, Way w, cublasMath_t math, const Problems &p, double tol,
             const char *what) {
    cublasCheck(cublasSetMathMode(r.h, math));
    cudaCheck(cudaMemset(p.c, 0xff, sizeof(float) * p.count * p.sc())); // NaN: an unwritten element fails
    cublasStatus_t st = run_way(r.h, w, p); // the warm-up, and the product checked
    if (st != CUBLAS_STATUS_SUCCESS) {
        std::printf("%-22s refused (cuBLAS status %d)  %s\n", key, (int)st, what);
        return;
    }
    double err = worst_error(download(p), *r.ref);
    int reps = 0; // in rounds of 1, 2, 4, ... launches, a wait after each round, not after each launch
    double t0 = seconds(), t = 0.0;
    for (int round = 1; reps == 0 || t < r.min_seconds; round *= 2) {
        for (int i = 0; i < round; i++) cublasCheck(run_way(r.h, w, p));
        reps += round;
        cudaCheck(cudaDeviceSynchronize());
        t = seconds() - t0;
    }
    bool ok = err <= tol;
    std::printf("%-22s %9.2f TFLOP/s  error %.1e of %.0e%s  %s\n", key, p.flops() * reps / t / 1e12, err, tol,
                ok ? "" : " FAIL", what);
    if (!ok) (*r.failures)++;
}

// the dense peaks: one n^3 SGEMM, exact fp32 and TF32 (check: against the host's product)
void dense_rates(Run r, int n, bool check, double tol32, double tol_tf32) {
    std::vector<float> ha, hb;
    Problems sq = problems_make(1, n, n, n, check ? &ha : nullptr, check ? &hb : nullptr);
    cublasCheck(cublasSetMathMode(r.h, CUBLAS_DEFAULT_MATH));
    cublasCheck(run_way(r.h, ONE_BY_ONE, sq));
    std::vector<float> ref = check ? host_products(sq, ha, hb) : download(sq);
    r.ref = &ref;
    measure(r, "dense_fp32", ONE_BY_ONE, CUBLAS_DEFAULT_MATH, sq, tol32, "one SGEMM, exact fp32 (the fp32 peak)");
    measure(r, "dense_tf32", ONE_BY_ONE, CUBLAS_TF32_TENSOR_OP_MATH, sq, tol_tf32, "one SGEMM, TF32 (the TF32 peak)");
    problems_free(&sq);
}

// the gate-and-up products of E experts on `rows` rows each, every way; the reference is the exact-fp32
// cublasSgemmGroupedBatched one
// (check: itself against the host's product first; bad: one element of it spoiled)
void expert_rates(Run r, int E, int rows, int d, int f, bool check, bool bad, double tol32, double tol_tf32) {
    std::vector<float> ha, hb;
    Problems ex = problems_make(2 * E, f, rows, d, check ? &ha : nullptr, check ? &hb : nullptr);
    cublasCheck(cublasSetMathMode(r.h, CUBLAS_DEFAULT_MATH));
    cublasCheck(run_way(r.h, GROUPED_SGEMM, ex)); // (the call every cuBLAS 12.5 and later takes)
    std::vector<float> ref = download(ex);
    if (check) {
        std::vector<float> host = host_products(ex, ha, hb);
        if (bad) ref[ref.size() / 2] += 1e-3f * (1.0f + std::fabs(ref[ref.size() / 2]));
        double e = worst_error(ref, host);
        std::printf("reference vs host:     error %.1e of %.0e%s\n", e, tol32, e <= tol32 ? "" : " FAIL");
        if (e > tol32) (*r.failures)++;
    }
    r.ref = &ref;
    const cublasMath_t fp32 = CUBLAS_DEFAULT_MATH, tf32 = CUBLAS_TF32_TENSOR_OP_MATH;
    measure(r, "grouped_fp32", GROUPED, fp32, ex, tol32, "grouped Ex, a group a problem (pcmoe, run.tf32 = false)");
    measure(r, "grouped_tf32", GROUPED, tf32, ex, tol_tf32,
            "grouped Ex, a group a problem, CUBLAS_COMPUTE_32F_FAST_TF32 (pcmoe, run.tf32 = true)");
    measure(r, "grouped_sgemm_tf32", GROUPED_SGEMM, tf32, ex, tol_tf32,
            "cublasSgemmGroupedBatched, TF32 math mode (pcmoe's fallback)");
    measure(r, "grouped_1group_tf32", GROUPED_ONE_GROUP, tf32, ex, tol_tf32,
            "grouped Ex, every problem in one uniform group, FAST_TF32");
    measure(r, "strided_fp32", STRIDED, fp32, ex, tol32, "strided-batched (as with capacity padding)");
    measure(r, "strided_tf32", STRIDED, tf32, ex, tol_tf32, "strided-batched, TF32 math mode");
    measure(r, "one_by_one_tf32", ONE_BY_ONE, tf32, ex, tol_tf32, "one SGEMM a problem, TF32");
    problems_free(&ex);
}

} // namespace

int main(int argc, char **argv) {
    bool check = argc > 1 && std::strcmp(argv[1], "--check") == 0;
    bool bad = check && argc > 2 && std::strcmp(argv[2], "bad") == 0;
    int n[5] = {8192, 32, 512, 512, 512}; // dense size, experts, rows, d, f
    if (check) {
        int small[5] = {48, 3, 20, 24, 16};
        std::memcpy(n, small, sizeof n);
    } else if (argc == 6) {
        for (int i = 0; i < 5; i++) n[i] = std::atoi(argv[i + 1]);
    } else if (argc != 1) {
        std::fprintf(stderr, "usage: gpu_gemm [N E ROWS D F] | --check [bad]\n");
        return 2;
    }
    for (int v : n)
        if (v < 1) { std::fprintf(stderr, "gpu_gemm: N E ROWS D F = %d %d %d %d %d: each must be >= 1\n",
                                  n[0], n[1], n[2], n[3], n[4]); return 2; }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("gpu_gemm: skipped: no CUDA device\n");
        return 77;
    }
    cublasHandle_t h;
    cublasCheck(cublasCreate(&h));
    int failures = 0;
    // fp32 rounding grows with k; TF32 inputs keep 10 mantissa bits (2^-11 relative each)
    double tol32 = 1e-5 * std::sqrt((double)(n[0] > n[3] ? n[0] : n[3])), tol_tf32 = 4e-3;
    Run r = {h, check ? 0.0 : 0.3, nullptr, &failures};
    std::printf("gpu_gemm: dense %d^3; experts %d x 2 problems of f %d x rows %d x d %d\n", n[0], n[1], n[4], n[2],
                n[3]);
    dense_rates(r, n[0], check, tol32, tol_tf32);
    expert_rates(r, n[1], n[2], n[3], n[4], check, bad, tol32, tol_tf32);
    cublasCheck(cublasDestroy(h));
    std::printf("gpu_gemm: %s\n", failures ? "FAIL: a product differs from the exact one" : "every product checked");
    return failures ? 1 : 0;
}
