// data.c: corpus loading (bytes, or a tokenizer's ids) and batch sampling.
#include "data.h"

#include <dirent.h>   // opendir, readdir
#include <errno.h>    // errno
#include <stdio.h>    // FILE, snprintf
#include <stdlib.h>   // malloc, qsort
#include <string.h>   // strerror, memcpy
#include <sys/stat.h> // stat

#include "util.h"     // error_set, file_append

static void tokens_push(Dataset *ds, size_t *cap, Token t) {
    if (ds->n_tokens == *cap) {
        *cap = *cap ? 2 * *cap : 1 << 20;
        Token *n = realloc(ds->tokens, sizeof(Token) * *cap);
        if (!n) fail("out of memory reading a corpus");
        ds->tokens = n;
    }
    ds->tokens[ds->n_tokens++] = t;
}

// Appends the tokens of file `path` (one document) to ds->tokens (capacity *cap): its bytes, or with tok its ids
// after an EOS (eos >= 0) when a document came before.
static int append_file(Dataset *ds, size_t *cap, const char *path, Tokenizer *tok, int eos, char *err, size_t len) {
    unsigned char *bytes = NULL;
    size_t n = 0, bcap = 0;
    int rc = file_append(path, &bytes, &n, &bcap);
    if (rc == FILE_CANNOT_OPEN) rc = error_set(err, len, "%s: cannot read corpus: %s", path, strerror(errno));
    else if (rc == FILE_NO_MEMORY) rc = error_set(err, len, "%s: out of memory reading corpus", path);
    else if (rc == FILE_READ_ERROR) rc = error_set(err, len, "%s: read error", path);
    const unsigned char *nul = rc ? NULL : memchr(bytes, 0, n);
    if (nul) // text never holds NUL bytes; a binary file is almost surely a wrong path
        rc = error_set(err, len, "%s: binary data (NUL byte at offset %zu); a corpus must be text", path,
                       (size_t)(nul - bytes));
    if (!rc && !tok)
        for (size_t i = 0; i < n; i++) tokens_push(ds, cap, bytes[i]);
    if (!rc && tok) {
        char why[256];
        if (ds->n_files && eos >= 0) tokens_push(ds, cap, (Token)eos);
        if (tokenizer_encode(tok, (const char *)bytes, n, &ds->tokens, &ds->n_tokens, cap, why, sizeof why))
            rc = error_set(err, len, "%s: %s; a corpus must be UTF-8 text for its tokenizer", path, why);
    }
    free(bytes);
    ds->n_bytes += n;
    ds->n_files += !rc;
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// The regular files of directory `path`, in name order, appended.
static int append_dir(Dataset *ds, size_t *cap, const char *path, Tokenizer *tok, int eos, char *err, size_t len) {
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
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", path, names[i]);
        struct stat fs;
        if (!rc && stat(full, &fs) == 0 && S_ISREG(fs.st_mode)) rc = append_file(ds, cap, full, tok, eos, err, len);
        free(names[i]);
    }
    free(names);
    if (!rc && ds->n_files == 0) rc = error_set(err, len, "%s: corpus directory holds no regular files", path);
    return rc;
}

int data_load(Dataset *ds, const char *path, double val_fraction, int T, uint64_t seed, Tokenizer *tok, int eos,
              char *err, size_t len) {
    memset(ds, 0, sizeof *ds);
    struct stat st;
    if (stat(path, &st) != 0) return error_set(err, len, "%s: cannot read corpus: %s", path, strerror(errno));
    size_t cap = 0;
    int rc = S_ISDIR(st.st_mode) ? append_dir(ds, &cap, path, tok, eos, err, len)
                                 : append_file(ds, &cap, path, tok, eos, err, len);
    if (rc) { data_free(ds); return rc; }
    if (ds->n_tokens == 0) { data_free(ds); return error_set(err, len, "%s: corpus is empty", path); }
    const char *unit = tok ? "tokens" : "bytes";
    size_t n_val = (size_t)(val_fraction * (double)ds->n_tokens);
    ds->n_train = ds->n_tokens - n_val;
    if (ds->n_train < (size_t)T + 1 || n_val < (size_t)T + 1) {
        size_t need = (size_t)((T + 1) / (val_fraction < 0.5 ? val_fraction : 0.5)) + 1;
        size_t have = ds->n_tokens;
        data_free(ds);
        return error_set(err, len,
                         "%s: corpus of %zu %s is too short for model.seq_len = %d with data.val_fraction = %g "
                         "(each split needs seq_len+1 %s; at least %zu %s)",
                         path, have, unit, T, val_fraction, unit, need, unit);
    }
    // bytes per token of the validation split: with a tokenizer, the corpus's average (the split's own text
    // would need its tokens' bytes; the average is what bits per byte usually reports)
    ds->val_bytes_per_token = tok ? (double)ds->n_bytes / (double)ds->n_tokens : 1.0;
    rng_seed(&ds->rng, seed);
    return 0;
}

void data_free(Dataset *ds) {
    free(ds->tokens);
    ds->tokens = NULL;
}

void data_train_batch(Dataset *ds, Token *tokens, Token *targets, int B, int T) {
    for (int b = 0; b < B; b++) {
        size_t start = (size_t)rng_below(&ds->rng, ds->n_train - (size_t)T);
        memcpy(tokens + (size_t)b * T, ds->tokens + start, sizeof(Token) * T);
        memcpy(targets + (size_t)b * T, ds->tokens + start + 1, sizeof(Token) * T);
    }
}

void data_val_batch(const Dataset *ds, Token *tokens, Token *targets, int B, int T, int i, int n_batches) {
    size_t n_val = ds->n_tokens - ds->n_train;
    size_t span = n_val - (size_t)T - 1; // last valid start offset within the split
    size_t windows = (size_t)B * n_batches;
    for (int b = 0; b < B; b++) {
        size_t w = (size_t)i * B + b;
        size_t start = ds->n_train + (windows > 1 ? (size_t)((double)span * w / (windows - 1)) : 0);
        memcpy(tokens + (size_t)b * T, ds->tokens + start, sizeof(Token) * T);
        memcpy(targets + (size_t)b * T, ds->tokens + start + 1, sizeof(Token) * T);
    }
}
