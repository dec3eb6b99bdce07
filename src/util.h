// util.h: the one error path of the program, checked wrappers for libc and MPI calls, a clock.
#ifndef PCMOE_UTIL_H
#define PCMOE_UTIL_H

#include <stddef.h> // size_t
#include <stdio.h>  // FILE

// Prints "pcmoe: error: <message>" to stderr and ends the job: MPI_Abort when MPI is running (so no
// other rank hangs), exit(1) otherwise. Every fatal condition in the program goes through here.
void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

// Like fail(), but for errors every rank reaches together (bad config, bad data, after an agreement):
// prints the line on rank 0 only (all_ranks = 0), on this rank (1), or nowhere (-1), finalizes MPI,
// and exits with `code`.
void fail_usage(int code, int all_ranks, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));

// The orderly end of a process: shuts HDF5 down (closing anything still open), then MPI. Every normal or
// agreed exit goes through here, so HDF5 never runs its shutdown from inside MPI_Finalize.
void finalize(void);

// Writes a formatted one-line message into err (len bytes) and returns 2, the exit status of bad input.
// Validation code (config, data) reports through this and lets the caller decide how to end.
int error_set(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// s without its leading and trailing white space (cut in place).
char *str_trim(char *s);

// Checked allocation: fails naming the call site and the size.
void *malloc_check(size_t size, const char *file, int line);
void *calloc_check(size_t count, size_t size, const char *file, int line);
#define mallocCheck(size) malloc_check((size), __FILE__, __LINE__)
#define callocCheck(count, size) calloc_check((count), (size), __FILE__, __LINE__)

// Checked fopen: fails naming the path and the reason.
FILE *fopen_check(const char *path, const char *mode, const char *file, int line);
#define fopenCheck(path, mode) fopen_check((path), (mode), __FILE__, __LINE__)

// Checked MPI call: fails with MPI's own error string.
void mpi_check(int rc, const char *call, const char *file, int line);
#define mpiCheck(call) mpi_check((call), #call, __FILE__, __LINE__)

// Seconds on a monotonic clock.
double now_seconds(void);

// Makes the directory `path` and its parents (like mkdir -p). Returns 0 on success, -1 with errno set.
int mkdir_p(const char *path);

// Writes size bytes of buf to path (created or truncated) with checked write() calls, then fsync(), so
// that a rename publishing the file never points at data the file system may still fail to write.
// Returns 0, or -1 with errno set and path removed.
int write_all_sync(const char *path, const void *buf, size_t size);

// Replaces path by a file holding buf: written to path.tmp (write_all_sync), then renamed over path, so
// path is either the old file or the complete new one. Returns 0, or 1 with "PATH: cannot write: why"
// in err (and no path.tmp left behind).
int write_file_atomic(const char *path, const void *buf, size_t size, char *err, size_t len);

// Appends the bytes of file `path` to *buf, of which *n bytes are in use and *cap allocated (grown by
// doubling, from 1 MiB). Returns 0; FILE_CANNOT_OPEN (errno set by fopen), FILE_READ_ERROR or FILE_NO_MEMORY.
enum { FILE_CANNOT_OPEN = 1, FILE_READ_ERROR, FILE_NO_MEMORY };
int file_append(const char *path, unsigned char **buf, size_t *n, size_t *cap);

// A growable text: s (len bytes, NUL-terminated; NULL until the first append) in cap bytes. Zero-initialise
// it ({0}); text_free releases it. What the JSON writer and the config writer build their files in.
typedef struct {
    char *s;
    size_t len, cap;
} Text;
// Appends printf-formatted text (grown by doubling; ends the job when out of memory).
void text_printf(Text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void text_free(Text *t);

#endif
