// matmul.cu: the row-major x @ W^T products of src/layers.c through cuBLAS (column-major, fp32).
// A row-major (r, c) matrix is the column-major (c, r) matrix, its transpose, with leading dimension c.
#include "kernels.h"

void cu_matmul_forward(cublasHandle_t h, float *out, const float *inp, const float *w, int N, int n_in, int n_out) {
    const float one = 1.0f, zero = 0.0f;
    if (N == 0) return;
    // out^T (n_out, N) = W (n_out, n_in) . inp^T (n_in, N)
    cublasCheck(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, n_out, N, n_in, &one, w, n_in, inp, n_in, &zero, out, n_out));
}

void cu_matmul_backward(cublasHandle_t h, float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                        int N, int n_in, int n_out) {
    const float one = 1.0f;
    if (N == 0) return;
    // dinp^T (n_in, N) += W^T (n_in, n_out) . dout^T (n_out, N)
    if (dinp)
        cublasCheck(
                cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n_in, N, n_out, &one, w, n_in, dout, n_out, &one, dinp, n_in));
    // dW^T (n_in, n_out) += inp^T (n_in, N) . dout (N, n_out)
    cublasCheck(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, n_in, n_out, N, &one, inp, n_in, dout, n_out, &one, dw, n_in));
}
