// safetensors.c: reading safetensors files, memory-mapped and validated (safetensors_write.c writes them).
#define _DEFAULT_SOURCE // madvise
#include "safetensors.h"

#include <errno.h>    // errno
#include <fcntl.h>    // open
#include <jansson.h>  // json_loadb, json_object_foreach
#include <stdio.h>    // snprintf, fopen
#include <stdlib.h>   // qsort, free
#include <string.h>   // memcpy, strcmp, strerror
#include <sys/mman.h> // mmap, madvise
#include <sys/stat.h> // fstat
#include <unistd.h>   // close

#include "util.h"     // error_set, mallocCheck

#define ST_HEADER_MAX (100u << 20) // the format's own limit on the header: 100 MB

static int dtype_of(const char *s, size_t *width) {
    static const struct { const char *name; int dtype; size_t width; } known[] = {
        {"F32", ST_F32, 4}, {"BF16", ST_BF16, 2}, {"F16", ST_F16, 2}, {"F64", ST_OTHER, 8}, {"I64", ST_OTHER, 8},
        {"I32", ST_OTHER, 4}, {"I16", ST_OTHER, 2}, {"I8", ST_OTHER, 1}, {"U8", ST_OTHER, 1}, {"BOOL", ST_OTHER, 1},
        {"F8_E4M3", ST_OTHER, 1}, {"F8_E5M2", ST_OTHER, 1}, {"U16", ST_OTHER, 2}, {"U32", ST_OTHER, 4},
        {"U64", ST_OTHER, 8}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(s, known[i].name)) { *width = known[i].width; return known[i].dtype; }
    return -1;
}

int64_t st_numel(const StTensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static StFile *file_add(StModel *s) {
    StFile *f = realloc(s->files, sizeof(StFile) * (size_t)(s->n_files + 1));
    if (!f) fail("out of memory");
    s->files = f;
    f = &s->files[s->n_files++];
    memset(f, 0, sizeof *f);
    f->fd = -1;
    return f;
}

// One header entry `name`: {"dtype", "shape", "data_offsets"} of file fi, whose data section has `data_len`
// bytes. Appends it to s->t. Returns 0, or 2 with err set.
static int entry_parse(StModel *s, int fi, const char *name, json_t *e, size_t data_len, char *err, size_t len) {
    const char *where = s->files[fi].path;
    json_t *dt = json_object_get(e, "dtype"), *shape = json_object_get(e, "shape"),
           *offs = json_object_get(e, "data_offsets");
    if (!json_is_object(e) || !json_is_string(dt) || !json_is_array(shape) || !json_is_array(offs) ||
        json_array_size(offs) != 2)
        return error_set(err, len, "%s: tensor %s: header entry lacks a string dtype, a shape or two data_offsets",
                         where, name);
    if (strlen(name) >= ST_NAME_LEN) return error_set(err, len, "%s: tensor name of %zu bytes", where, strlen(name));
    StTensor t = {0};
    snprintf(t.name, sizeof t.name, "%s", name);
    snprintf(t.dtype_name, sizeof t.dtype_name, "%s", json_string_value(dt));
    size_t width = 0;
    t.dtype = dtype_of(t.dtype_name, &width);
    if (t.dtype < 0) return error_set(err, len, "%s: tensor %s: unknown dtype %s", where, name, t.dtype_name);
    t.ndim = (int)json_array_size(shape);
    if (t.ndim > ST_MAX_DIMS) return error_set(err, len, "%s: tensor %s: %d dimensions", where, name, t.ndim);
    double numel = 1.0;
    for (int i = 0; i < t.ndim; i++) {
        json_t *v = json_array_get(shape, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return error_set(err, len, "%s: tensor %s: shape[%d] is not a non-negative integer", where, name, i);
        t.shape[i] = json_integer_value(v);
        numel *= (double)t.shape[i];
    }
    json_t *b = json_array_get(offs, 0), *en = json_array_get(offs, 1);
    if (!json_is_integer(b) || !json_is_integer(en) || json_integer_value(b) < 0 ||
        json_integer_value(en) < json_integer_value(b) || (size_t)json_integer_value(en) > data_len)
        return error_set(err, len, "%s: tensor %s: data_offsets outside the file's %zu data bytes", where, name,
                         data_len);
    t.begin = (size_t)json_integer_value(b);
    t.end = (size_t)json_integer_value(en);
    if ((double)(t.end - t.begin) != numel * (double)width)
        return error_set(err, len, "%s: tensor %s: %zu data bytes, its shape and dtype %s need %.0f", where, name,
                         t.end - t.begin, t.dtype_name, numel * (double)width);
    t.file = fi;
    StTensor *nt = realloc(s->t, sizeof(StTensor) * (size_t)(s->n + 1));
    if (!nt) fail("out of memory");
    s->t = nt;
    s->t[s->n++] = t;
    return 0;
}

static int cmp_begin(const void *a, const void *b) {
    const StTensor *x = *(StTensor *const *)a, *y = *(StTensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

// No two tensors of file fi (entries first .. s->n - 1) share a byte.
static int overlap_check(const StModel *s, int first, int fi, char *err, size_t len) {
    int n = s->n - first;
    const StTensor **v = mallocCheck(sizeof(StTensor *) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) v[i] = &s->t[first + i];
    qsort(v, (size_t)n, sizeof *v, cmp_begin);
    int rc = 0;
    for (int i = 1; i < n && !rc; i++)
        if (v[i]->begin < v[i - 1]->end && v[i]->end > v[i]->begin)
            rc = error_set(err, len, "%s: tensors %s and %s overlap in the data", s->files[fi].path, v[i - 1]->name,
                           v[i]->name);
    free(v);
    return rc;
}

// Parses the header of file fi (s->files[fi].map, .size). Returns 0, or 2 with err set.
static int header_parse(StModel *s, int fi, char *err, size_t len) {
    StFile *f = &s->files[fi];
    if (f->size < 8) return error_set(err, len, "%s: %zu bytes: not a safetensors file", f->path, f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->map[i];
    if (n > ST_HEADER_MAX || n > f->size - 8)
        return error_set(err, len, "%s: header length %llu past the file's %zu bytes (or over 100 MB)", f->path,
                         (unsigned long long)n, f->size);
    f->data = 8 + (size_t)n;
    json_error_t je;
    json_t *h = json_loadb((const char *)f->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!h) return error_set(err, len, "%s: header is not JSON: %s (at byte %d)", f->path, je.text, je.position);
    int rc = json_is_object(h) ? 0 : error_set(err, len, "%s: header is not a JSON object", f->path);
    int first = s->n;
    const char *name;
    json_t *e;
    json_object_foreach(h, name, e) {
        if (rc) break;
        if (!strcmp(name, "__metadata__")) continue;
        rc = entry_parse(s, fi, name, e, f->size - f->data, err, len);
    }
    json_decref(h);
    return rc ? rc : overlap_check(s, first, fi, err, len);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

// Sorts the tensors by name; a name in two files is an error.
static int names_index(StModel *s, char *err, size_t len) {
    if (s->n > 1) qsort(s->t, (size_t)s->n, sizeof(StTensor), cmp_name);
    for (int i = 1; i < s->n; i++)
        if (!strcmp(s->t[i].name, s->t[i - 1].name))
            return error_set(err, len, "%s: tensor %s is in %s and in %s", s->dir, s->t[i].name,
                             s->files[s->t[i - 1].file].path, s->files[s->t[i].file].path);
    return 0;
}

static int map_file(StModel *s, const char *path, char *err, size_t len) {
    StFile *f = file_add(s);
    snprintf(f->path, sizeof f->path, "%s", path);
    f->fd = open(path, O_RDONLY);
    if (f->fd < 0) return error_set(err, len, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) return error_set(err, len, "%s: not a regular file", path);
    f->size = (size_t)st.st_size;
    if (f->size) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
        if (p == MAP_FAILED) return error_set(err, len, "%s: cannot map: %s", path, strerror(errno));
        f->map = p;
        madvise(p, f->size, MADV_RANDOM); // (no read-ahead: the pages a party maps are the tensors it reads)
    }
    return header_parse(s, s->n_files - 1, err, len);
}

int st_open_file(StModel *s, const char *path, char *err, size_t len) {
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s", path);
    int rc = map_file(s, path, err, len);
    if (!rc) rc = names_index(s, err, len);
    if (rc) st_close(s);
    return rc;
}

int st_open_bytes(StModel *s, const unsigned char *bytes, size_t size, const char *name, char *err, size_t len) {
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s", name);
    StFile *f = file_add(s);
    snprintf(f->path, sizeof f->path, "%s", name);
    f->map = (unsigned char *)bytes;
    f->size = size;
    f->fd = -2; // (not ours to unmap)
    int rc = header_parse(s, 0, err, len);
    if (!rc) rc = names_index(s, err, len);
    if (rc) st_close(s);
    return rc;
}

// The shards of DIR/model.safetensors.index.json, each mapped once; every name of the weight map must be in
// the shard it names.
static int open_index(StModel *s, const char *index, char *err, size_t len) {
    json_error_t je;
    json_t *root = json_load_file(index, JSON_REJECT_DUPLICATES, &je), *map = json_object_get(root, "weight_map");
    if (!root) return error_set(err, len, "%s: not JSON: %s (line %d)", index, je.text, je.line);
    int rc = json_is_object(map) ? 0 : error_set(err, len, "%s: no \"weight_map\" object", index);
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        if (rc) break;
        const char *shard = json_string_value(v);
        if (!shard || strchr(shard, '/')) { rc = error_set(err, len, "%s: %s: not a file name", index, name); break; }
        char path[1280];
        snprintf(path, sizeof path, "%s/%s", s->dir, shard);
        int fi = -1;
        for (int i = 0; i < s->n_files; i++)
            if (!strcmp(s->files[i].path, path)) fi = i;
        if (fi < 0) {
            rc = map_file(s, path, err, len);
            fi = s->n_files - 1;
        }
        int found = 0;
        for (int i = 0; i < s->n && !rc && !found; i++) found = s->t[i].file == fi && !strcmp(s->t[i].name, name);
        if (!rc && !found)
            rc = error_set(err, len, "%s: tensor %s: not in %s, where the index puts it", index, name, path);
    }
    json_decref(root);
    return rc;
}

int st_open(StModel *s, const char *dir, char *err, size_t len) {
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    char path[1280];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    struct stat st;
    int rc = stat(path, &st) == 0 ? open_index(s, path, err, len) : 0;
    if (!rc && s->n_files == 0) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (stat(path, &st) != 0)
            rc = error_set(err, len, "%s: neither model.safetensors nor model.safetensors.index.json", dir);
        else rc = map_file(s, path, err, len);
    }
    if (!rc) rc = names_index(s, err, len);
    if (rc) st_close(s);
    return rc;
}

void st_close(StModel *s) {
    for (int i = 0; i < s->n_files; i++) {
        StFile *f = &s->files[i];
        if (f->fd == -2) continue;
        if (f->map) munmap(f->map, f->size);
        if (f->fd >= 0) close(f->fd);
    }
    free(s->files);
    free(s->t);
    memset(s, 0, sizeof *s);
}

const StTensor *st_find(const StModel *s, const char *name) {
    int lo = 0, hi = s->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(s->t[mid].name, name);
        if (!c) return &s->t[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

float st_bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | man << 13; // inf, NaN
    else if (exp) bits = sign | (exp + 112) << 23 | man << 13;
    else if (!man) bits = sign;
    else { // subnormal: normalise
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | (uint32_t)(112 - e) << 23 | (man & 0x3ff) << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t st_f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(bits >> 16 | 0x40); // NaN stays NaN
    return (uint16_t)((bits + 0x7fffu + (bits >> 16 & 1)) >> 16);
}

int st_read_f32(const StModel *s, const StTensor *t, float *out, char *err, size_t len) {
    const StFile *f = &s->files[t->file];
    const unsigned char *p = f->map + f->data + t->begin;
    size_t n = (size_t)st_numel(t);
    if (t->dtype == ST_F32) memcpy(out, p, sizeof(float) * n);
    else if (t->dtype == ST_BF16 || t->dtype == ST_F16)
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
            out[i] = t->dtype == ST_BF16 ? st_bf16_to_f32(h) : st_f16_to_f32(h);
        }
    else return error_set(err, len, "%s: tensor %s: dtype %s; pcmoe reads F32, BF16 and F16", f->path, t->name,
                          t->dtype_name);
    if (f->fd >= 0 && t->end > t->begin) {
        // the pages read go back, so a party's peak memory is its own tensors: the whole 2 MiB blocks around the
        // tensor, since the kernel may have mapped a large folio of the page cache (a neighbour's bytes) at once
        size_t block = 2u << 20, a = (f->data + t->begin) / block * block;
        size_t e = (f->data + t->end + block - 1) / block * block;
        madvise(f->map + a, (e < f->size ? e : f->size) - a, MADV_DONTNEED);
    }
    return 0;
}

