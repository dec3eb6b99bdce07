// backend_nocuda.c: backend_cuda_open in a build without CUDA (configure found no nvcc and cuBLAS).
#include "backend.h"

#include "util.h" // error_set

const Backend *backend_cuda_open(int gpu, int local_rank, int tf32, char *err, size_t len) {
    (void)gpu;
    (void)tf32;
    (void)local_rank;
    error_set(err, len, "run.device = cuda: this pcmoe was built without CUDA (configure --with-cuda; see README \"CUDA kernels\")");
    return NULL;
}

void backend_cuda_close(void) {}
