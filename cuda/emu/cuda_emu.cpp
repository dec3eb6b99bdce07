// cuda_emu.cpp: the scheduler behind cuda_emu.h. A launch runs each block's threads as fibers on the
// calling OS thread; barriers and warp exchanges are the only places a thread gives way.
#include "cuda_emu.h"

#include <cstdio>   // fprintf
#include <cstdlib>  // abort, malloc, free
#include <cstring>  // memset, memcpy
#include <csetjmp>  // _setjmp, _longjmp (POSIX)
#include <setjmp.h>
#include <ucontext.h>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace {

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

// A thread of the running block. Fibers persist across blocks and launches: each runs fiber_main's loop
// (the kernel body, then "done"), so starting a block only resets their state. Switching uses
// _setjmp/_longjmp (no system call, unlike swapcontext's signal-mask save); a fiber's stack is set up
// once by makecontext. Under AddressSanitizer, which does not follow _longjmp between stacks, every
// switch uses swapcontext instead.
struct Fiber {
    ucontext_t uc;      // its context while it is parked (swapcontext path) / its first entry
    jmp_buf env;        // its context while it is parked (_longjmp path)
    char *stack = nullptr;
    State state = DONE;
    dim3 tid;
    int linear = 0;
};

const size_t STACK_BYTES = 256 * 1024;
const int MAX_THREADS = 1024;
#if defined(__SANITIZE_ADDRESS__)
const bool FAST_SWITCH = false;
#else
const bool FAST_SWITCH = true;
#endif

struct Launch {
    Fiber fibers[MAX_THREADS];                 // threads of one block; stacks kept across launches
    int n_created = 0;                         // fibers whose stacks exist
    const std::function<void()> *body = nullptr;
    ucontext_t scheduler_uc;
    jmp_buf scheduler_env;
    int current = -1;
    int n = 0;                                 // threads in the block
    int reverse = 0;
    std::vector<unsigned char> slots;          // (n, 8) warp-exchange slots, one per thread
    std::vector<unsigned char> smem;           // dynamic shared memory of the running launch
    size_t max_dynamic_smem = 48 * 1024;
    cudaError_t last_error = cudaSuccess;
    int running = 0;
    ~Launch() {
        for (int i = 0; i < n_created; i++) std::free(fibers[i].stack);
    }
} L;

[[noreturn]] void emu_abort(const char *what) {
    std::fprintf(stderr, "cuda emulation: %s (block %u,%u,%u thread %u,%u,%u)\n", what, blockIdx.x, blockIdx.y,
                 blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    std::abort();
}

// The running fiber gives way to the scheduler.
void to_scheduler(void) {
    Fiber &f = L.fibers[L.current];
    if (FAST_SWITCH) {
        if (!_setjmp(f.env)) _longjmp(L.scheduler_env, 1);
    } else {
        swapcontext(&f.uc, &L.scheduler_uc);
    }
}

// Every fiber's life: run the body for the block it is started in, report done, wait to be started again.
void fiber_main(void) {
    for (;;) {
        (*L.body)();
        L.fibers[L.current].state = DONE;
        to_scheduler();
    }
}

// First entry of a fiber (FAST_SWITCH): keep this point as its context and go back to its creator; the
// scheduler's first _longjmp here starts fiber_main on the fiber's stack.
void fiber_boot(void) {
    if (!_setjmp(L.fibers[L.current].env)) setcontext(&L.scheduler_uc);
    fiber_main();
}

void fiber_create(int i) {
    Fiber &f = L.fibers[i];
    f.stack = static_cast<char *>(std::malloc(STACK_BYTES));
    if (!f.stack) emu_abort("out of memory for fiber stacks");
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack;
    f.uc.uc_stack.ss_size = STACK_BYTES;
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, FAST_SWITCH ? fiber_boot : fiber_main, 0);
    if (FAST_SWITCH) { // run fiber_boot up to its _setjmp, then come back here
        L.current = i;
        swapcontext(&L.scheduler_uc, &f.uc);
    }
}

// The scheduler runs fiber i until it gives way.
void to_fiber(int i) {
    L.current = i;
    threadIdx = L.fibers[i].tid;
    if (FAST_SWITCH) {
        if (!_setjmp(L.scheduler_env)) _longjmp(L.fibers[i].env, 1);
    } else {
        swapcontext(&L.scheduler_uc, &L.fibers[i].uc);
    }
}

// Gives way to the scheduler with the running thread in state s.
void park(State s) {
    L.fibers[L.current].state = s;
    to_scheduler();
}

// Releases the threads waiting at a barrier whose group has all arrived. Returns whether any moved.
bool release_barriers(void) {
    int n = L.n, waiting_block = 0, done = 0;
    for (int i = 0; i < n; i++) {
        waiting_block += L.fibers[i].state == AT_BLOCK_BARRIER;
        done += L.fibers[i].state == DONE;
    }
    if (waiting_block && waiting_block + done == n) {
        if (done) emu_abort("__syncthreads() reached by only some threads of the block (the others returned)");
        for (int i = 0; i < n; i++) L.fibers[i].state = RUNNABLE;
        return true;
    }
    bool moved = false;
    for (int w = 0; w * 32 < n; w++) {
        int lo = w * 32, hi = lo + 32 < n ? lo + 32 : n, at = 0, gone = 0;
        for (int i = lo; i < hi; i++) { at += L.fibers[i].state == AT_WARP_BARRIER; gone += L.fibers[i].state == DONE; }
        if (at && at + gone == hi - lo) {
            if (gone) emu_abort("warp shuffle reached by only some lanes of the warp (the others returned)");
            for (int i = lo; i < hi; i++) L.fibers[i].state = RUNNABLE;
            moved = true;
        }
    }
    return moved;
}

void run_block(void) {
    int n = L.n;
    for (int i = 0; i < n; i++) {
        Fiber &f = L.fibers[i];
        if (i >= L.n_created) { fiber_create(i); L.n_created = i + 1; }
        if (!FAST_SWITCH && f.state != DONE) emu_abort("internal: a fiber was not done");
        if (!FAST_SWITCH) makecontext(&f.uc, fiber_main, 0); // (swapcontext path: a fresh entry per block)
        f.state = RUNNABLE;
        f.linear = i;
        f.tid = dim3(i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y));
    }
    for (;;) {
        bool ran = false;
        for (int k = 0; k < n; k++) {
            int i = L.reverse ? n - 1 - k : k;
            if (L.fibers[i].state != RUNNABLE) continue;
            to_fiber(i);
            ran = true;
        }
        int done = 0;
        for (int i = 0; i < n; i++) done += L.fibers[i].state == DONE;
        if (done == n) return;
        if (!release_barriers() && !ran) emu_abort("deadlock: threads wait at barriers that can never complete");
    }
}

} // namespace

int emu_lane(void) { return L.fibers[L.current].linear % 32; }

void __syncthreads(void) {
    if (!L.running) emu_abort("__syncthreads() outside a kernel");
    park(AT_BLOCK_BARRIER);
}

void emu_warp_exchange(unsigned mask, const void *mine, void *theirs, size_t size, int src_lane) {
    if (!L.running) emu_abort("warp shuffle outside a kernel");
    int me = L.fibers[L.current].linear, warp = me / 32, width = L.n - warp * 32 < 32 ? L.n - warp * 32 : 32;
    unsigned full = width == 32 ? 0xffffffffu : ((1u << width) - 1u);
    if (mask != full) emu_abort("warp shuffle with a mask that is not the warp's full set of lanes");
    if (src_lane < 0 || src_lane >= width) src_lane = me % 32; // out of range: own value, as on the device
    std::memcpy(&L.slots[(size_t)me * 8], mine, size);
    park(AT_WARP_BARRIER);
    std::memcpy(theirs, &L.slots[(size_t)(warp * 32 + src_lane) * 8], size);
    park(AT_WARP_BARRIER); // nobody overwrites a slot before every lane has read
}

void *emu_dynamic_smem(void) { return L.smem.empty() ? nullptr : L.smem.data(); }
void emu_set_reverse(int reverse) { L.reverse = reverse; }
void emu_set_max_dynamic_smem(size_t n) { L.max_dynamic_smem = n; }

cudaError_t emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const std::function<void()> &body) {
    (void)stream; // one in-order queue: launches run at once
    unsigned long threads = (unsigned long)block.x * block.y * block.z;
    bool ok = threads >= 1 && threads <= 1024 && block.x <= 1024 && block.y <= 1024 && block.z <= 64 && grid.x >= 1 &&
              grid.x <= 2147483647u && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 && grid.z <= 65535 &&
              smem <= L.max_dynamic_smem;
    if (!ok) {
        std::fprintf(stderr,
                     "cuda emulation: launch of grid (%u,%u,%u) block (%u,%u,%u) with %zu bytes of dynamic shared "
                     "memory breaks a device limit\n",
                     grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
        L.last_error = cudaErrorInvalidConfiguration;
        return L.last_error;
    }
    if (L.running) emu_abort("kernel launched from a kernel");
    L.body = &body;
    L.n = (int)threads;
    L.slots.assign(threads * 8, 0);
    L.smem.assign(smem, 0xff); // uninitialised shared memory reads as NaN
    gridDim = grid;
    blockDim = block;
    L.running = 1;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = dim3(x, y, z);
                run_block();
            }
    L.running = 0;
    return cudaSuccess;
}

// ------------------------------------------------------------------------------------------ cudart
cudaError_t cudaMalloc(void **ptr, size_t size) {
    *ptr = std::malloc(size ? size : 1);
    if (!*ptr) return L.last_error = cudaErrorMemoryAllocation;
    std::memset(*ptr, 0xff, size); // unwritten device memory reads as NaN
    return cudaSuccess;
}
cudaError_t cudaMallocManaged(void **ptr, size_t size, unsigned flags) { (void)flags; return cudaMalloc(ptr, size); }
cudaError_t cudaFree(void *ptr) { std::free(ptr); return cudaSuccess; }
cudaError_t cudaMallocHost(void **ptr, size_t size) { return cudaMalloc(ptr, size); }
cudaError_t cudaFreeHost(void *ptr) { return cudaFree(ptr); }
cudaError_t cudaMemcpy(void *dst, const void *src, size_t size, cudaMemcpyKind kind) {
    if ((int)kind < 0 || (int)kind > 4 || (size && (!dst || !src))) return L.last_error = cudaErrorInvalidValue;
    if (size) std::memmove(dst, src, size);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t size, cudaMemcpyKind kind, cudaStream_t) {
    return cudaMemcpy(dst, src, size, kind);
}
cudaError_t cudaMemset(void *ptr, int value, size_t size) {
    if (size && !ptr) return L.last_error = cudaErrorInvalidValue;
    if (size) std::memset(ptr, value, size);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t size, cudaStream_t) { return cudaMemset(ptr, value, size); }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int *count) { *count = 1; return cudaSuccess; }
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : (L.last_error = cudaErrorInvalidDevice); }
cudaError_t cudaGetLastError(void) { cudaError_t e = L.last_error; L.last_error = cudaSuccess; return e; }
cudaError_t cudaPeekAtLastError(void) { return L.last_error; }
const char *cudaGetErrorString(cudaError_t err) {
    switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    }
    return "unknown error";
}
