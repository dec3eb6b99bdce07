// util.c: the single fatal-error path, checked wrappers, clock, mkdir -p, files written whole, a growable text.
#include "util.h"

#include <ctype.h>    // isspace
#include <errno.h>    // errno
#include <fcntl.h>    // open
#include <hdf5.h>     // H5close
#include <mpi.h>      // MPI_Initialized, MPI_Abort, MPI_Error_string
#include <stdarg.h>   // va_list
#include <stdlib.h>   // malloc, exit
#include <string.h>   // strerror
#include <sys/stat.h> // mkdir
#include <time.h>     // clock_gettime
#include <unistd.h>   // write, fsync, close, unlink

static int mpi_running(void) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

// Prints "pcmoe: error: <msg>" (prefixed with the rank when the job has several) on this rank, or on
// rank 0 only unless all_ranks.
static void report(int all_ranks, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    int rank = 0, size = 1;
    if (mpi_running()) {
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &size);
    }
    if (all_ranks < 0 || (rank != 0 && !all_ranks)) return;
    if (size > 1) fprintf(stderr, "pcmoe: error: [rank %d] %s\n", rank, msg);
    else fprintf(stderr, "pcmoe: error: %s\n", msg);
    fflush(stderr);
}

void finalize(void) {
    H5close(); // parallel HDF5 would otherwise shut down inside MPI_Finalize, after MPI's own teardown began
    if (mpi_running()) MPI_Finalize();
}

void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    report(1, fmt, ap);
    va_end(ap);
    if (mpi_running()) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

void fail_usage(int code, int all_ranks, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    report(all_ranks, fmt, ap);
    va_end(ap);
    finalize();
    exit(code);
}

char *str_trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

int error_set(char *err, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return 2;
}

void *malloc_check(size_t size, const char *file, int line) {
    void *p = malloc(size ? size : 1);
    if (!p) fail("out of memory allocating %zu bytes (%s:%d)", size, file, line);
    return p;
}

void *calloc_check(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fail("out of memory allocating %zu x %zu bytes (%s:%d)", count, size, file, line);
    return p;
}

FILE *fopen_check(const char *path, const char *mode, const char *file, int line) {
    FILE *f = fopen(path, mode);
    if (!f) fail("cannot open '%s' (mode %s): %s (%s:%d)", path, mode, strerror(errno), file, line);
    return f;
}

void mpi_check(int rc, const char *call, const char *file, int line) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    fail("MPI call %s failed: %s (%s:%d)", call, text, file, line);
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int mkdir_p(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
            buf[i] = c;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) { errno = ENOTDIR; return -1; }
    return 0;
}

int write_all_sync(const char *path, const void *buf, size_t size) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    const char *p = buf;
    size_t done = 0;
    int rc = 0;
    while (done < size && rc == 0) {
        ssize_t n = write(fd, p + done, size - done);
        if (n > 0) done += (size_t)n;
        else if (n < 0 && errno == EINTR) continue;
        else { if (n == 0) errno = EIO; rc = -1; }
    }
    if (rc == 0) rc = fsync(fd);
    int saved = errno;
    if (close(fd) != 0 && rc == 0) { rc = -1; saved = errno; }
    if (rc != 0) { unlink(path); errno = saved; }
    return rc;
}

int write_file_atomic(const char *path, const void *buf, size_t size, char *err, size_t len) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (write_all_sync(tmp, buf, size) != 0) {
        error_set(err, len, "%s: cannot write: %s", path, strerror(errno));
        return 1;
    }
    if (rename(tmp, path) != 0) {
        error_set(err, len, "%s: cannot write: rename: %s", path, strerror(errno));
        unlink(tmp);
        return 1;
    }
    return 0;
}

int file_append(const char *path, unsigned char **buf, size_t *n, size_t *cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return FILE_CANNOT_OPEN;
    for (;;) {
        if (*n == *cap) {
            size_t ncap = *cap ? 2 * *cap : (1 << 20);
            unsigned char *nb = realloc(*buf, ncap);
            if (!nb) { fclose(f); return FILE_NO_MEMORY; }
            *buf = nb;
            *cap = ncap;
        }
        size_t got = fread(*buf + *n, 1, *cap - *n, f);
        *n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    return bad ? FILE_READ_ERROR : 0;
}

void text_printf(Text *t, const char *fmt, ...) {
    for (;;) {
        size_t room = t->cap - t->len;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) fail("internal: text_printf: bad format");
        if (t->s && (size_t)n < room) { t->len += (size_t)n; return; }
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + (size_t)n + 1) cap *= 2;
        char *s = realloc(t->s, cap);
        if (!s) fail("out of memory growing a text to %zu bytes", cap);
        t->s = s;
        t->cap = cap;
    }
}

void text_free(Text *t) {
    free(t->s);
    t->s = NULL;
    t->len = t->cap = 0;
}
