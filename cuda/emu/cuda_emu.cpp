// cuda_emu.cpp: the scheduler behind cuda_emu.h. A launch runs each block's threads as fibers on the
// calling OS thread; barriers and warp exchanges are the only places a thread gives way. Below it, the
// device's queue (streams and events) and its memory (allocations, protection, the fault handler).
#include "cuda_emu.h"

#include <execinfo.h> // backtrace_symbols_fd
#include <signal.h>   // sigaction
#include <sys/mman.h> // mmap, mprotect
#include <unistd.h>   // write, getpid, sysconf
#include <cstdint>    // uintptr_t
#include <deque>
#include <map>
#include <memory> // make_shared

#include <cstdio>   // fprintf
#include <cstdlib>  // abort, malloc, free
#include <cstring>  // memset, memcpy
#include <csetjmp>  // _setjmp, _longjmp (POSIX)
#include <setjmp.h>
#include <ucontext.h>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

// The static __shared__ variables of every kernel (cuda_emu.h puts them in this section); weak, so that a
// program without any links too.
extern "C" char __start_emu_shared[] __attribute__((weak)), __stop_emu_shared[] __attribute__((weak));

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
    uintptr_t lo = reinterpret_cast<uintptr_t>(__start_emu_shared), hi = reinterpret_cast<uintptr_t>(__stop_emu_shared);
    size_t shared = (size_t)(hi - lo);
    if (shared) std::memset(__start_emu_shared, 0xff, shared); // a block starts with its shared memory unwritten (NaN)
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
void emu_set_max_dynamic_smem(size_t n) { L.max_dynamic_smem = n; }

// ------------------------------------------------------------------------------ the device's queue
namespace {

enum Kind { DEVICE, MANAGED, PINNED };
struct Alloc {
    size_t size, mapped; // bytes asked for; bytes mapped (whole pages; 0 for pinned, which is malloc'd)
    Kind kind;
    int open;            // device and managed: 1 while the pages are readable and writable
};
struct Work {
    cudaStream_t stream;
    unsigned long long seq; // its place in the queue (1, 2, ...)
    std::function<void()> run;
};

// A pinned copy destination while its copy is queued: the host sees NaN; the device work queued before the copy
// still sees what was there (restored when the queue runs).
struct Poison {
    unsigned long long seq; // the copy
    void *dst;
    std::vector<unsigned char> was;
};

struct Device {
    std::map<uintptr_t, Alloc> allocs;  // by start address
    std::deque<Work> queue;             // queued work in the order it was queued (all streams)
    unsigned long long queued = 0, done = 0; // seq of the last work queued, and of the last that ran
    std::map<cudaStream_t, unsigned long long> last; // seq of each stream's last work
    std::vector<Poison> poisoned;       // pinned destinations of queued copies, NaN for the host meanwhile
    int draining = 0;
    int mpi_open = 0;                   // emu_mpi_access: the host's MPI may touch device memory
    int reverse = 0;                    // emu_set_reverse: for the launches queued from now
    EmuCounters count = {0, 0, 0};
    int handler = 0;
    struct sigaction old_segv;
} D;

} // namespace

struct EmuStream {
    int nonblocking;
};
struct EmuEvent {
    unsigned long long seq; // the work it waits for (0: none)
};

namespace {

long page_bytes(void) { return sysconf(_SC_PAGESIZE); }

// the allocation holding address a, or nullptr
const Alloc *find_alloc(uintptr_t a, uintptr_t *start) {
    auto it = D.allocs.upper_bound(a);
    if (it == D.allocs.begin()) return nullptr;
    --it;
    size_t extent = it->second.mapped ? it->second.mapped : it->second.size;
    if (a >= it->first + (extent ? extent : 1)) return nullptr;
    if (start) *start = it->first;
    return &it->second;
}

// Device memory is open only while queued work runs (or MPI reads it); managed memory also whenever nothing
// is queued.
void set_access(int running) {
    for (auto &kv : D.allocs) {
        Alloc &a = kv.second;
        if (a.kind == PINNED) continue;
        int open = running || D.mpi_open || (a.kind == MANAGED && D.queue.empty());
        if (open == a.open) continue;
        if (mprotect(reinterpret_cast<void *>(kv.first), a.mapped, open ? PROT_READ | PROT_WRITE : PROT_NONE))
            emu_abort("mprotect failed");
        a.open = open;
    }
}

// Runs queued work up to and including seq upto.
void drain(unsigned long long upto) {
    if (D.draining) emu_abort("a synchronisation from inside device work");
    if (D.queue.empty() || D.queue.front().seq > upto) return;
    D.draining = 1;
    set_access(1);
    for (auto it = D.poisoned.rbegin(); it != D.poisoned.rend(); ++it) // (the oldest content last)
        std::memcpy(it->dst, it->was.data(), it->was.size());
    while (!D.queue.empty() && D.queue.front().seq <= upto) {
        Work w = std::move(D.queue.front());
        D.queue.pop_front();
        w.run();
        D.done = w.seq;
    }
    std::vector<Poison> still;
    for (auto &p : D.poisoned)
        if (p.seq > D.done) {
            std::memcpy(p.was.data(), p.dst, p.was.size());
            std::memset(p.dst, 0xff, p.was.size());
            still.push_back(std::move(p));
        }
    D.poisoned.swap(still);
    D.draining = 0;
    set_access(0);
}

// A host wait: counted when there is queued work to wait for (a wait on an idle device costs nothing), then
// that work runs. PCMOE_EMU_TRACE_SYNCS=1 prints the call stack of every counted wait (for addr2line).
void host_wait(unsigned long long upto) {
    if (D.queue.empty() || D.queue.front().seq > upto) return;
    D.count.syncs++;
    static const char *trace = getenv("PCMOE_EMU_TRACE_SYNCS");
    if (trace && *trace == '1') {
        void *frames[16];
        int n = backtrace(frames, 16);
        fprintf(stderr, "cuda emulation: wait %lld\n", D.count.syncs);
        backtrace_symbols_fd(frames, n, 2);
    }
    drain(upto);
}

void enqueue(cudaStream_t stream, std::function<void()> fn) {
    if (D.draining) emu_abort("device work queued from inside device work");
    D.queue.push_back(Work{stream, ++D.queued, std::move(fn)});
    D.last[stream] = D.queued;
    set_access(0); // managed memory closes while work is queued
}

void write_counts(void) {
    const char *path = getenv("PCMOE_EMU_COUNTS");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, "pid %d launches %lld gemms %lld syncs %lld\n", (int)getpid(), D.count.launches, D.count.gemms,
            D.count.syncs);
    fclose(f);
}

void say(const char *s) { ssize_t r = write(2, s, strlen(s)); (void)r; }

// A fault on device or managed memory: the host touched it. Anything else goes to the handler before ours.
void on_segv(int sig, siginfo_t *si, void *ctx) {
    uintptr_t start = 0;
    const Alloc *a = find_alloc(reinterpret_cast<uintptr_t>(si->si_addr), &start);
    if (a && a->kind != PINNED) {
        char msg[400];
        snprintf(msg, sizeof msg,
                 "cuda emulation: the host touched %s memory at %p (offset %zu of an allocation of %zu bytes)%s\n",
                 a->kind == DEVICE ? "device" : "managed", si->si_addr,
                 (size_t)(reinterpret_cast<uintptr_t>(si->si_addr) - start), a->size,
                 a->kind == DEVICE ? ": cudaMalloc memory is for the device only; copy it to the host"
                                   : " while device work was queued: a synchronisation is missing");
        say(msg);
        void *frames[32];
        int n = backtrace(frames, 32);
        backtrace_symbols_fd(frames, n, 2);
        signal(SIGABRT, SIG_DFL);
        abort();
    }
    if (D.old_segv.sa_flags & SA_SIGINFO) { D.old_segv.sa_sigaction(sig, si, ctx); return; }
    if (D.old_segv.sa_handler != SIG_DFL && D.old_segv.sa_handler != SIG_IGN) { D.old_segv.sa_handler(sig); return; }
    signal(SIGSEGV, SIG_DFL); // returning re-runs the access, which now ends the process as it would have
}

void install_handler(void) {
    if (D.handler) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &D.old_segv);
    atexit(write_counts);
    D.handler = 1;
}

cudaError_t map_alloc(void **ptr, size_t size, Kind kind) {
    install_handler();
    size_t page = (size_t)page_bytes(), mapped = ((size ? size : 1) + page - 1) / page * page;
    void *p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { *ptr = nullptr; return L.last_error = cudaErrorMemoryAllocation; }
    std::memset(p, 0xff, mapped); // unwritten device memory reads as NaN
    D.allocs[reinterpret_cast<uintptr_t>(p)] = Alloc{size, mapped, kind, 1};
    set_access(0);
    *ptr = p;
    return cudaSuccess;
}

// One launch, run now (from the queue): every block in turn.
void run_launch(dim3 grid, dim3 block, size_t smem, int reverse, const std::function<void()> &body) {
    L.body = &body;
    L.n = (int)(block.x * block.y * block.z);
    L.reverse = reverse;
    L.slots.assign((size_t)L.n * 8, 0);
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
}

} // namespace

void emu_set_reverse(int reverse) { D.reverse = reverse; }
EmuCounters emu_counters(void) { return D.count; }

int emu_live_allocations(size_t *bytes) {
    int n = 0;
    *bytes = 0;
    for (const auto &kv : D.allocs)
        if (kv.second.kind != PINNED) { n++; *bytes += kv.second.size; }
    return n;
}

void emu_enqueue(cudaStream_t stream, std::function<void()> fn, int gemm) {
    D.count.gemms += gemm != 0;
    enqueue(stream, std::move(fn));
}

cudaError_t emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, std::function<void()> body) {
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
    D.count.launches++;
    int reverse = D.reverse;
    enqueue(stream,
            [grid, block, smem, reverse, body = std::move(body)]() { run_launch(grid, block, smem, reverse, body); });
    return cudaSuccess;
}

// ------------------------------------------------------------------------------------------ cudart
cudaError_t cudaMalloc(void **ptr, size_t size) { return map_alloc(ptr, size, DEVICE); }
cudaError_t cudaMallocManaged(void **ptr, size_t size, unsigned flags) {
    (void)flags;
    return map_alloc(ptr, size, MANAGED);
}
cudaError_t cudaFree(void *ptr) {
    if (!ptr) return cudaSuccess;
    auto it = D.allocs.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == D.allocs.end() || it->second.kind == PINNED) return L.last_error = cudaErrorInvalidValue;
    if (!D.queue.empty()) host_wait(D.queued); // cudaFree waits for the device
    munmap(ptr, it->second.mapped);
    D.allocs.erase(it);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **ptr, size_t size) {
    install_handler();
    *ptr = std::malloc(size ? size : 1);
    if (!*ptr) return L.last_error = cudaErrorMemoryAllocation;
    std::memset(*ptr, 0xff, size); // cudaMallocHost does not clear: reading it unwritten shows as NaN
    D.allocs[reinterpret_cast<uintptr_t>(*ptr)] = Alloc{size ? size : 1, 0, PINNED, 1};
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *ptr) {
    auto it = D.allocs.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == D.allocs.end() || it->second.kind != PINNED) return L.last_error = cudaErrorInvalidValue;
    if (!D.queue.empty()) host_wait(D.queued);
    D.allocs.erase(it);
    std::free(ptr);
    return cudaSuccess;
}

static int is_kind(const void *p, Kind k) {
    const Alloc *a = find_alloc(reinterpret_cast<uintptr_t>(p), nullptr);
    return a && a->kind == k;
}
static int is_host(const void *p) { return !find_alloc(reinterpret_cast<uintptr_t>(p), nullptr) || is_kind(p, PINNED); }
int emu_mpi_reads_device(void) {
    static const char *host_only = getenv("PCMOE_EMU_MPI_HOST_ONLY");
    return !(host_only && *host_only == '1');
}

void emu_mpi_access(int open) {
    if (open && !emu_mpi_reads_device())
        emu_abort("device memory handed to an MPI without CUDA support (PCMOE_EMU_MPI_HOST_ONLY=1): on a GPU that "
                  "MPI would crash");
    if (open && !D.queue.empty())
        emu_abort("device memory handed to MPI with device work still queued: a synchronisation is missing");
    D.mpi_open = open;
    set_access(0);
}

int emu_is_device(const void *p, size_t bytes) {
    uintptr_t start = 0, a = reinterpret_cast<uintptr_t>(p);
    const Alloc *al = find_alloc(a, &start);
    return al && al->kind != PINNED && a + bytes <= start + al->size;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t size, cudaMemcpyKind kind, cudaStream_t stream) {
    if ((int)kind < 0 || (int)kind > 4 || (size && (!dst || !src))) return L.last_error = cudaErrorInvalidValue;
    if (!size) return cudaSuccess;
    if (is_host(src) && !is_kind(src, PINNED)) { // pageable source: staged now, so the host may reuse it at once
        auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char *)src,
                                                                   (const unsigned char *)src + size);
        enqueue(stream, [dst, staged, size]() { std::memcpy(dst, staged->data(), size); });
    } else {
        enqueue(stream, [dst, src, size]() { std::memmove(dst, src, size); });
    }
    if (is_kind(dst, PINNED)) { // not there for the host until the copy has run
        const unsigned char *b = static_cast<const unsigned char *>(dst);
        D.poisoned.push_back(Poison{D.queued, dst, std::vector<unsigned char>(b, b + size)});
        std::memset(dst, 0xff, size);
    }
    else if (is_host(dst)) host_wait(D.last[stream]);          // pageable destination: the call waits
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t size, cudaMemcpyKind kind) {
    cudaError_t e = cudaMemcpyAsync(dst, src, size, kind, nullptr);
    if (e != cudaSuccess || !size) return e;
    if (!is_host(dst) || is_kind(dst, PINNED)) host_wait(D.queued); // (a pageable one waited already)
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t size, cudaStream_t stream) {
    if (size && !ptr) return L.last_error = cudaErrorInvalidValue;
    if (size) enqueue(stream, [ptr, value, size]() { std::memset(ptr, value, size); });
    return cudaSuccess;
}
cudaError_t cudaMemset(void *ptr, int value, size_t size) { return cudaMemsetAsync(ptr, value, size, nullptr); }
cudaError_t cudaDeviceSynchronize(void) { host_wait(D.queued); return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    host_wait(stream ? D.last[stream] : D.queued); // the legacy stream waits for all work before it
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
    *stream = new EmuStream{(flags & cudaStreamNonBlocking) != 0};
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (!stream) return L.last_error = cudaErrorInvalidResourceHandle;
    D.last.erase(stream);
    delete stream;
    return cudaSuccess;
}
// (one queue in order: work queued after the wait runs after the event's work anyway)
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned) {
    return event ? cudaSuccess : (L.last_error = cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned) { *event = new EmuEvent{0}; return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t event) { delete event; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    if (!event) return L.last_error = cudaErrorInvalidResourceHandle;
    event->seq = stream ? D.last[stream] : D.queued;
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) { return event->seq <= D.done ? cudaSuccess : cudaErrorNotReady; }
cudaError_t cudaEventSynchronize(cudaEvent_t event) { host_wait(event->seq); return cudaSuccess; }
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
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    }
    return "unknown error";
}
