// cuda_semantics.cu: small kernels whose results CUDA defines exactly (warp shuffles and their edge
// cases, shared memory across a barrier, dynamic shared memory, 3-D blocks and grids, atomics). Built
// by both tests/test_cuda_kernels builds: on the emulation they check that cuda/emu/ models CUDA; on a
// GPU the same expectations check the device, so a GPU run also validates the emulator.
#include <cstdio>
#include <vector>

#include "../cuda/common.cuh"

// out[lane] = sum of all lanes' values (butterfly with __shfl_xor_sync)
__global__ void sem_xor_kernel(float *out) { out[threadIdx.x] = warp_sum((float)threadIdx.x); }

// out[lane] = __shfl_down_sync(v = lane, 4): lane + 4, or its own value where lane + 4 leaves the warp
__global__ void sem_down_kernel(int *out) { out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 4); }

// out[lane] = lane 5 of its 16-lane segment (width 16)
__global__ void sem_bcast_kernel(int *out) { out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 5, 16); }

// 256 threads: each writes its id to shared memory, then reads the mirror entry
__global__ void sem_shared_kernel(int *out) {
    __shared__ int s[256];
    s[threadIdx.x] = (int)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[255 - threadIdx.x];
}

// the same through dynamic shared memory, block n offsets by n * 1000
__global__ void sem_dynamic_kernel(int *out) {
    DYNAMIC_SMEM(int, s);
    s[threadIdx.x] = (int)(threadIdx.x + blockIdx.x * 1000);
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// block (8, 4, 2), grid (3, 2): every thread writes its coordinates, encoded, at its global linear id
__global__ void sem_dims_kernel(int *out) {
    int tl = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int bl = blockIdx.x + gridDim.x * blockIdx.y;
    out[bl * (blockDim.x * blockDim.y * blockDim.z) + tl] =
        (int)(threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z + 1000 * blockIdx.x + 10000 * blockIdx.y);
}

// every thread of 5 blocks of 96 adds 1
__global__ void sem_atomic_kernel(int *count) { atomicAdd(count, 1); }

template <typename T> static std::vector<T> run_and_fetch(T *d, size_t n) {
    std::vector<T> h(n);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaMemcpy(h.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost));
    return h;
}

static int report(const char *what, bool ok) {
    std::printf("%s: CUDA semantics: %s\n", ok ? "ok" : "FAIL", what);
    return ok ? 0 : 1;
}

// Runs every check; returns the number that failed.
int cuda_semantics_check(void) {
    int failed = 0, *di = nullptr;
    float *df = nullptr;
    cudaCheck(cudaMalloc(reinterpret_cast<void **>(&di), sizeof(int) * 1024));
    cudaCheck(cudaMalloc(reinterpret_cast<void **>(&df), sizeof(float) * 32));
    cudaStream_t s = 0;

    LAUNCH(sem_xor_kernel, 1, 32, 0, s, df);
    auto f = run_and_fetch(df, 32);
    bool ok = true;
    for (int i = 0; i < 32; i++) ok &= f[i] == 496.0f;
    failed += report("__shfl_xor_sync butterfly gives every lane the warp's sum", ok);

    LAUNCH(sem_down_kernel, 1, 32, 0, s, di);
    auto v = run_and_fetch(di, 32);
    ok = true;
    for (int i = 0; i < 32; i++) ok &= v[i] == (i + 4 < 32 ? i + 4 : i);
    failed += report("__shfl_down_sync past the warp's end returns the lane's own value", ok);

    LAUNCH(sem_bcast_kernel, 1, 32, 0, s, di);
    v = run_and_fetch(di, 32);
    ok = true;
    for (int i = 0; i < 32; i++) ok &= v[i] == (i < 16 ? 5 : 21);
    failed += report("__shfl_sync with width 16 broadcasts within each 16-lane segment", ok);

    LAUNCH(sem_shared_kernel, 1, 256, 0, s, di);
    v = run_and_fetch(di, 256);
    ok = true;
    for (int i = 0; i < 256; i++) ok &= v[i] == 255 - i;
    failed += report("__shared__ memory is one copy per block, complete after __syncthreads()", ok);

    LAUNCH(sem_dynamic_kernel, 3, 128, 128 * sizeof(int), s, di);
    v = run_and_fetch(di, 384);
    ok = true;
    for (int b = 0; b < 3; b++)
        for (int i = 0; i < 128; i++) ok &= v[b * 128 + i] == 127 - i + b * 1000;
    failed += report("dynamic shared memory of the launch's size, per block", ok);

    LAUNCH(sem_dims_kernel, dim3(3, 2), dim3(8, 4, 2), 0, s, di);
    v = run_and_fetch(di, 384);
    ok = true;
    for (int by = 0; by < 2; by++)
        for (int bx = 0; bx < 3; bx++)
            for (int z = 0; z < 2; z++)
                for (int y = 0; y < 4; y++)
                    for (int x = 0; x < 8; x++)
                        ok &= v[(bx + 3 * by) * 64 + x + 8 * (y + 4 * z)] == x + 10 * y + 100 * z + 1000 * bx + 10000 * by;
    failed += report("threadIdx / blockIdx / blockDim / gridDim in 3-D blocks and 2-D grids", ok);

    cudaCheck(cudaMemset(di, 0, sizeof(int)));
    LAUNCH(sem_atomic_kernel, 5, 96, 0, s, di);
    v = run_and_fetch(di, 1);
    failed += report("atomicAdd from 480 threads of 5 blocks", v[0] == 480);

    cudaCheck(cudaFree(di));
    cudaCheck(cudaFree(df));
    return failed;
}
