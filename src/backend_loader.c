// backend_loader.c: backend_cuda_open: finds the CUDA backend and opens it.
//
// The CUDA backend (cuda/backend.cu and the kernels) is a plugin, pcmoe_cuda.so, loaded only when a run
// asks for run.device = cuda: linking cudart and cuBLAS into pcmoe itself costs every process ~157 MB of
// resident memory at start (measured: 185 MB against 28 MB for the tiny config), GPU or not. A program
// that links the backend statically (tests/pcmoe_emu: the emulated build) defines cuda_backend_open
// itself, and that one is used.
#include "backend.h"

#include <dlfcn.h>  // dlopen, dlsym, dlerror
#include <limits.h> // PATH_MAX
#include <stdio.h>  // snprintf
#include <stdlib.h> // getenv
#include <string.h> // strrchr
#include <unistd.h> // readlink, access

#include "autoconfig.h" // HAVE_CUDA, PCMOE_PLUGINDIR
#include "util.h"       // error_set

typedef const Backend *(*OpenFn)(int gpu, int local_rank, int tf32, char *err, size_t len);
typedef void (*CloseFn)(void);

// the backend linked into this program, if it is (weak: NULL otherwise)
const Backend *cuda_backend_open(int gpu, int local_rank, int tf32, char *err, size_t len) __attribute__((weak));
void cuda_backend_close(void) __attribute__((weak));

static CloseFn close_fn; // the open backend's close, or NULL

#ifdef HAVE_CUDA
// The plugin's path: $PCMOE_CUDA_PLUGIN, else pcmoe_cuda.so beside the program (a build tree), else in
// PCMOE_PLUGINDIR (make install). Returns 0, or 1 with the places looked at in err.
static int plugin_path(char *path, size_t size, char *err, size_t len) {
    const char *env = getenv("PCMOE_CUDA_PLUGIN");
    if (env && env[0]) {
        snprintf(path, size, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        snprintf(path, size, "%s/pcmoe_cuda.so", exe);
        if (access(path, R_OK) == 0) return 0;
    }
    snprintf(path, size, "%s/pcmoe_cuda.so", PCMOE_PLUGINDIR);
    if (access(path, R_OK) == 0) return 0;
    return error_set(err, len,
                     "run.device = cuda: the CUDA backend pcmoe_cuda.so is neither beside %s nor in %s (set "
                     "PCMOE_CUDA_PLUGIN to its path)",
                     n > 0 ? exe : "the program", PCMOE_PLUGINDIR);
}
#endif

const Backend *backend_cuda_open(int gpu, int local_rank, int tf32, char *err, size_t len) {
    if (cuda_backend_open) { // linked in
        close_fn = cuda_backend_close;
        return cuda_backend_open(gpu, local_rank, tf32, err, len);
    }
#ifdef HAVE_CUDA
    char path[PATH_MAX + 32];
    if (plugin_path(path, sizeof path, err, len)) return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) { error_set(err, len, "run.device = cuda: cannot load %s: %s", path, dlerror()); return NULL; }
    OpenFn open_fn = (OpenFn)dlsym(lib, "cuda_backend_open");
    CloseFn close = (CloseFn)dlsym(lib, "cuda_backend_close");
    if (!open_fn || !close) {
        error_set(err, len, "run.device = cuda: %s is not a pcmoe CUDA backend (no cuda_backend_open)", path);
        return NULL;
    }
    close_fn = close;
    return open_fn(gpu, local_rank, tf32, err, len); // (the library stays loaded until the process ends)
#else
    (void)gpu; (void)local_rank; (void)tf32;
    error_set(err, len,
              "run.device = cuda: this pcmoe was built without CUDA (configure --with-cuda; see docs/cuda.md)");
    return NULL;
#endif
}

void backend_cuda_close(void) {
    if (close_fn) close_fn();
    close_fn = NULL;
}
