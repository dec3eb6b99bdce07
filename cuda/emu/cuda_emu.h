// cuda_emu.h: the CUDA execution model on the CPU, so that the very .cu files nvcc compiles also run
// here (./configure --enable-cuda-emulation; the tests use it). Included by cuda/common.cuh when the
// compiler is not nvcc; kernels never include it themselves.
//
// What it models:
// - A launch runs its blocks one after another. A block's threads are cooperative fibers (ucontext) on
//   one OS thread: a thread runs until it reaches a barrier or returns, then the next one runs.
// - __syncthreads() parks the thread until every thread of the block is parked there; it aborts when
//   some threads have returned while others wait (a barrier not reached by all: a bug on a GPU too).
// - Warp shuffles write the lane's value to a per-warp slot, meet the warp at a barrier, read the
//   partner's slot, and meet again. The mask must name every lane of the warp (full warps only).
// - __shared__ variables are statics in one linker section, which is filled with NaN bytes before every
//   block: a read before the block wrote it shows, as does a value left by the previous block.
// - Dynamic shared memory (DYNAMIC_SMEM in common.cuh) is a per-launch buffer of NaN bytes.
// - Device limits are checked at every launch: 1024 threads per block, block (1024, 1024, 64), grid
//   (2^31-1, 65535, 65535), dynamic shared memory <= 48 KiB unless raised by cudaFuncSetAttribute.
// - Threads run in forward or reverse order (emu_set_reverse), so code that relies on an order that no
//   barrier enforces gives different answers between the two runs.
// - Streams: launches, GEMMs, async copies and memsets are queued, and run only when the host waits
//   (cudaDeviceSynchronize, cudaStreamSynchronize, cudaEventSynchronize, a blocking cudaMemcpy,
//   cudaFree). A result read without the wait is not there yet. An async copy into pinned host memory
//   fills its destination with NaN bytes when it is queued.
// - Memory: cudaMalloc memory is mapped PROT_NONE except while queued work runs, managed memory is
//   PROT_NONE while work is queued, so host code that touches device memory (ever) or managed memory
//   (before a synchronisation) stops with a message naming the allocation. New device, managed and
//   pinned memory is NaN bytes, so reading what nothing wrote shows.
// - It counts kernel launches, GEMMs and synchronisations; with PCMOE_EMU_COUNTS=FILE the totals are
//   appended to FILE at exit, one line per process (tests take per-step budgets from two run lengths).
// - cudart calls act on host memory; cuBLAS calls (cublas_emu.h) map to CBLAS with cuBLAS's column-major
//   meaning.
// What it cannot show: nvcc's code generation, races between blocks, memory fences, the order of real
// atomics, FMA contraction, overlap between streams, timing. See docs/cuda.md.
#ifndef PCMOE_CUDA_EMU_H
#define PCMOE_CUDA_EMU_H

#include <cstddef>    // size_t
#include <cstring>    // memcpy
#include <functional> // std::function

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static __attribute__((section("emu_shared")))
#define __restrict__ __restrict

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The running thread's coordinates, set by the scheduler before it resumes a thread.
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
static const int warpSize = 32;

// ------------------------------------------------------------------------------------------ cudart
typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
} cudaError_t;
typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
} cudaMemcpyKind;
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
typedef struct EmuStream *cudaStream_t; // nullptr: the legacy default stream
typedef struct EmuEvent *cudaEvent_t;
static const unsigned cudaStreamNonBlocking = 1, cudaEventDisableTiming = 2;

cudaError_t cudaMalloc(void **ptr, size_t size);
cudaError_t cudaMallocManaged(void **ptr, size_t size, unsigned flags = 1);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t size);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t size, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t size, cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemset(void *ptr, int value, size_t size);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t size, cudaStream_t stream);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t err);
template <typename F> cudaError_t cudaFuncSetAttribute(F *func, cudaFuncAttribute attr, int value);

// ------------------------------------------------------------------------------------- the launcher
// Queues body on stream, to run on every thread of every block of (grid, block) with smem bytes of dynamic
// shared memory. Returns cudaErrorInvalidConfiguration (also kept for cudaGetLastError) when a device limit
// is broken; nothing is queued then.
cudaError_t emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, std::function<void()> body);
// The kernel call LAUNCH queues: the arguments are evaluated and copied now, as a launch does.
template <typename K, typename... A> std::function<void()> emu_bind(K kernel, A... args) {
    return [=]() { kernel(args...); };
}
// Queues fn on stream as device work (the cuBLAS emulation's GEMMs); counted as a GEMM when gemm is set.
void emu_enqueue(cudaStream_t stream, std::function<void()> fn, int gemm);
void *emu_dynamic_smem(void);            // the running launch's dynamic shared memory
// 1 when [p, p + bytes) lies in one cudaMalloc or managed allocation (what device-side tables must be in)
int emu_is_device(const void *p, size_t bytes);
// The host's MPI stands in for a CUDA-aware one: between emu_mpi_access(1) and (0) device memory is open to
// the host. Opening with work queued stops the program (MPI would read what the device has not written yet).
void emu_mpi_access(int open);
// 1: the host's MPI may read device memory (through emu_mpi_access), as a CUDA-aware MPI would; 0 with
// PCMOE_EMU_MPI_HOST_ONLY=1: the emulated device is a GPU beside an MPI without CUDA support, and
// emu_mpi_access(1) stops the program
int emu_mpi_reads_device(void);
void emu_set_reverse(int reverse);       // 1: a block's threads start in reverse order (from the next launch)
void emu_set_max_dynamic_smem(size_t n); // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
typedef struct {
    long long launches, gemms, syncs; // kernel launches and GEMMs queued; host waits for queued work
} EmuCounters;
EmuCounters emu_counters(void);
// The cudaMalloc and managed allocations not freed yet: their count, and their bytes in *bytes (what
// compute-sanitizer's memcheck --leak-check full reports as errors at the end of a GPU run)
int emu_live_allocations(size_t *bytes);

// -------------------------------------------------------------------------------- device functions
void __syncthreads(void);
void emu_warp_exchange(unsigned mask, const void *mine, void *theirs, size_t size, int src_lane);
int emu_lane(void);

template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    T r;
    int lane = emu_lane(), src = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
    emu_warp_exchange(mask, &v, &r, sizeof(T), src);
    return r;
}
template <typename T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    T r;
    int lane = emu_lane(), in = (lane & (width - 1)) + (int)delta;
    emu_warp_exchange(mask, &v, &r, sizeof(T), in < width ? lane + (int)delta : lane);
    return r;
}
template <typename T> T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    T r;
    int lane = emu_lane();
    emu_warp_exchange(mask, &v, &r, sizeof(T), (lane & ~(width - 1)) + (src_lane & (width - 1)));
    return r;
}

// Fibers never pre-empt each other: a read-modify-write is atomic.
inline float atomicAdd(float *p, float v) { float old = *p; *p = old + v; return old; }
inline int atomicAdd(int *p, int v) { int old = *p; *p = old + v; return old; }
inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) {
    unsigned long long old = *p;
    *p = v < old ? v : old;
    return old;
}

template <typename F> cudaError_t cudaFuncSetAttribute(F *func, cudaFuncAttribute attr, int value) {
    (void)func;
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > 227 * 1024)
        return cudaErrorInvalidValue;
    emu_set_max_dynamic_smem((size_t)value);
    return cudaSuccess;
}

#endif
