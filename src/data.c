// data.c: corpus loading and batch sampling.
#include "data.h"

#include <dirent.h>   // opendir, readdir
#include <errno.h>    // errno
#include <stdio.h>    // FILE, snprintf
#include <stdlib.h>   // malloc, qsort
#include <string.h>   // strerror, memcpy
#include <sys/stat.h> // stat

#include "util.h"     // error_set, file_append

// Appends the bytes of file `path` to ds->bytes (capacity *cap).
static int append_file(Dataset *ds, size_t *cap, const char *path, char *err, size_t len) {
    int rc = file_append(path, &ds->bytes, &ds->n_bytes, cap);
    if (rc == FILE_CANNOT_OPEN) return error_set(err, len, "%s: cannot read corpus: %s", path, strerror(errno));
    if (rc == FILE_NO_MEMORY) return error_set(err, len, "%s: out of memory reading corpus", path);
    if (rc == FILE_READ_ERROR) return error_set(err, len, "%s: read error", path);
    ds->n_files++;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int data_load(Dataset *ds, const char *path, double val_fraction, int T, uint64_t seed, char *err, size_t len) {
    memset(ds, 0, sizeof *ds);
    struct stat st;
    if (stat(path, &st) != 0) return error_set(err, len, "%s: cannot read corpus: %s", path, strerror(errno));
    size_t cap = 0;
    int rc = 0;
    if (S_ISDIR(st.st_mode)) {
        DIR *dir = opendir(path);
        if (!dir) return error_set(err, len, "%s: cannot open corpus directory: %s", path, strerror(errno));
        char **names = NULL;
        size_t n = 0;
        struct dirent *de;
        while ((de = readdir(dir))) {
            if (de->d_name[0] == '.') continue; // hidden files, . and ..
            char **nn = realloc(names, sizeof(char *) * (n + 1));
            if (!nn) break;
            names = nn;
            names[n++] = strdup(de->d_name);
        }
        closedir(dir);
        if (n > 1) qsort(names, n, sizeof(char *), cmp_str);
        for (size_t i = 0; i < n; i++) {
            char full[4096];
            snprintf(full, sizeof full, "%s/%s", path, names[i]);
            struct stat fs;
            if (!rc && stat(full, &fs) == 0 && S_ISREG(fs.st_mode)) rc = append_file(ds, &cap, full, err, len);
            free(names[i]);
        }
        free(names);
        if (!rc && ds->n_files == 0) rc = error_set(err, len, "%s: corpus directory holds no regular files", path);
    } else {
        rc = append_file(ds, &cap, path, err, len);
    }
    if (rc) { data_free(ds); return rc; }
    if (ds->n_bytes == 0) { data_free(ds); return error_set(err, len, "%s: corpus is empty", path); }
    const uint8_t *nul = memchr(ds->bytes, 0, ds->n_bytes);
    if (nul) { // text never holds NUL bytes; a binary file is almost surely a wrong path
        size_t at = (size_t)(nul - ds->bytes);
        data_free(ds);
        return error_set(err, len, "%s: binary data (NUL byte at offset %zu); a corpus must be text", path, at);
    }
    size_t n_val = (size_t)(val_fraction * (double)ds->n_bytes);
    ds->n_train = ds->n_bytes - n_val;
    if (ds->n_train < (size_t)T + 1 || n_val < (size_t)T + 1) {
        size_t need = (size_t)((T + 1) / (val_fraction < 0.5 ? val_fraction : 0.5)) + 1;
        size_t have = ds->n_bytes;
        data_free(ds);
        return error_set(err, len,
                         "%s: corpus of %zu bytes is too short for model.seq_len = %d with data.val_fraction = %g "
                         "(each split needs seq_len+1 bytes; at least %zu bytes)",
                         path, have, T, val_fraction, need);
    }
    rng_seed(&ds->rng, seed);
    return 0;
}

void data_free(Dataset *ds) {
    free(ds->bytes);
    ds->bytes = NULL;
}

// dst (T) = the byte-level tokens of src (T)
static void window_copy(Token *dst, const uint8_t *src, int T) {
    for (int i = 0; i < T; i++) dst[i] = src[i];
}

void data_train_batch(Dataset *ds, Token *tokens, Token *targets, int B, int T) {
    for (int b = 0; b < B; b++) {
        size_t start = (size_t)rng_below(&ds->rng, ds->n_train - (size_t)T);
        window_copy(tokens + (size_t)b * T, ds->bytes + start, T);
        window_copy(targets + (size_t)b * T, ds->bytes + start + 1, T);
    }
}

void data_val_batch(const Dataset *ds, Token *tokens, Token *targets, int B, int T, int i, int n_batches) {
    size_t n_val = ds->n_bytes - ds->n_train;
    size_t span = n_val - (size_t)T - 1; // last valid start offset within the split
    size_t windows = (size_t)B * n_batches;
    for (int b = 0; b < B; b++) {
        size_t w = (size_t)i * B + b;
        size_t start = ds->n_train + (windows > 1 ? (size_t)((double)span * w / (windows - 1)) : 0);
        window_copy(tokens + (size_t)b * T, ds->bytes + start, T);
        window_copy(targets + (size_t)b * T, ds->bytes + start + 1, T);
    }
}
