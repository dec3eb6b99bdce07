// ckpt.c: HDF5 checkpoint writing, validated loading, and the checkpoint directory layout.
#include "ckpt.h"

#include <dirent.h>   // opendir
#include <errno.h>    // errno
#include <hdf5.h>     // H5F*, H5D*, H5A*, H5G*, H5S*, H5T*
#include <sodium.h>   // crypto_generichash (BLAKE2b), sodium_bin2hex
#include <stdint.h>   // uint64_t
#include <stdio.h>    // snprintf, rename
#include <stdlib.h>   // malloc, free
#include <string.h>   // strcmp
#include <sys/stat.h> // stat
#include <unistd.h>   // unlink

#include "pool.h"     // pool_owner_rank
#include "util.h"     // error_set, mallocCheck, write_all_sync

// All HDF5 calls report through h5ok: the first failure is recorded as a message, later calls are
// skipped by the callers' `if (!ctx.failed)` structure, and the library's own printing is off.
typedef struct {
    char *err;
    size_t len;
    const char *file;
    int failed;
    int version;   // the open file's format_version (from /meta; 0 until read): from 2 on, datasets are checksummed
    int damaged;   // the failure is damage (unreadable HDF5, a checksum that does not match), not a mismatch
    long verified; // datasets whose checksum was verified
    int whole;     // the open file was verified whole (verify_file): its datasets are not hashed again as read
} H5Ctx;

static int h5ok(H5Ctx *x, long rc, const char *what, const char *obj) {
    if (rc >= 0) return 1;
    if (!x->failed) error_set(x->err, x->len, "%s: %s %s failed", x->file, what, obj ? obj : "");
    x->failed = 1;
    return 0;
}

static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

// A failure that means the file is damaged, recorded as h5ok records one and marked: "FILE: KIND OBJ: WHAT"
// (kind "dataset" or "group").
static void damage(H5Ctx *x, const char *kind, const char *obj, const char *what) {
    if (!x->failed) {
        error_set(x->err, x->len, "%s: %s %s: %s", x->file, kind, obj, what);
        x->damaged = 1;
    }
    x->failed = 1;
}

// ------------------------------------------------------------------------------------------ checksums
// Every dataset carries attribute `blake2b`: 64 hex digits of the BLAKE2b-256 of its path, its shape (uint64
// per dimension) and the BLAKE2b-256 of each 1 MiB chunk of its bytes as stored (pcmoe writes F32LE and U64LE
// and runs on little-endian hosts, so they are the bytes in memory; the chunks are hashed in parallel), then,
// on an adam_m dataset, its `steps` attribute (int32). /meta carries one over its attributes (meta_checksum).
// A flipped bit, a moved or reshaped dataset all change it.

#define CHECKSUM_ATTR "blake2b"
#define CHECKSUM_HEX 65                // 64 digits and the NUL
#define CHECKSUM_CHUNK ((size_t)1 << 20) // the bytes are hashed in chunks of this many

static void hash_update(crypto_generichash_state *st, const void *p, size_t n) {
    crypto_generichash_update(st, (const unsigned char *)p, (unsigned long long)n);
}

static void hash_final(crypto_generichash_state *st, char *hex) {
    unsigned char h[32];
    crypto_generichash_final(st, h, sizeof h);
    sodium_bin2hex(hex, CHECKSUM_HEX, h, sizeof h);
}

// hex (CHECKSUM_HEX): the checksum of dataset `path` of shape dims (ndim) holding `bytes` bytes at data;
// steps: its AdamW step count, or NULL
static void dataset_checksum(char *hex, const char *path, int ndim, const hsize_t *dims, const void *data,
                             size_t bytes, const int *steps) {
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    hash_update(&st, path, strlen(path) + 1);
    for (int i = 0; i < ndim; i++) {
        uint64_t d = dims[i];
        hash_update(&st, &d, sizeof d);
    }
    size_t n_chunks = (bytes + CHECKSUM_CHUNK - 1) / CHECKSUM_CHUNK;
    unsigned char *leaves = mallocCheck(32 * (n_chunks ? n_chunks : 1)); // (n_chunks, 32) each chunk's hash
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (long i = 0; i < (long)n_chunks; i++) {
        size_t off = (size_t)i * CHECKSUM_CHUNK, n = bytes - off < CHECKSUM_CHUNK ? bytes - off : CHECKSUM_CHUNK;
        crypto_generichash(leaves + 32 * i, 32, (const unsigned char *)data + off, n, NULL, 0);
    }
    hash_update(&st, leaves, 32 * n_chunks);
    free(leaves);
    if (steps) {
        int32_t n = *steps;
        hash_update(&st, &n, sizeof n);
    }
    hash_final(&st, hex);
}

// hex (CHECKSUM_HEX): the checksum of /meta: its attributes in a fixed order, each as "name=value\n"
static void meta_checksum(char *hex, const CkptMeta *fm, const char *mode, const char *schedule,
                          const char *config) {
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    char head[256];
    int n = snprintf(head, sizeof head, "format_version=%d\nstep=%d\nparty=%d\nn_parties=%d\nlocal_rank=%d\n"
                     "mode=%s\nschedule=%s\nconfig=", fm->version, fm->step, fm->party, fm->parties, fm->local, mode,
                     schedule);
    hash_update(&st, head, (size_t)n);
    hash_update(&st, config, strlen(config));
    hash_final(&st, hex);
}

// Dataset path of a tensor under `root` ("" or "/optim/adam_m"): root + /backbone/NAME or /experts/NAME
static void tensor_path(char *out, size_t len, const char *root, const ParamTensor *t) {
    snprintf(out, len, "%s/%s/%s", root, t->expert >= 0 ? "experts" : "backbone", t->name);
}

static void attr_str(H5Ctx *x, hid_t obj, const char *name, const char *v);

static void write_floats(H5Ctx *x, hid_t file, hid_t lcpl, const char *path, const ParamTensor *t, const float *data,
                         int steps) {
    hsize_t dims[2] = {(hsize_t)t->rows, (hsize_t)t->cols};
    int nd = t->cols == 1 ? 1 : 2;
    hid_t space = H5Screate_simple(nd, dims, NULL);
    hid_t d = H5Dcreate2(file, path, H5T_IEEE_F32LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (h5ok(x, space, "H5Screate_simple", path) && h5ok(x, d, "H5Dcreate2", path))
        h5ok(x, H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "H5Dwrite", path);
    if (steps >= 0 && !x->failed) {
        hid_t as = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(d, "steps", H5T_STD_I32LE, as, H5P_DEFAULT, H5P_DEFAULT);
        if (h5ok(x, a, "H5Acreate2 steps", path)) h5ok(x, H5Awrite(a, H5T_NATIVE_INT, &steps), "H5Awrite steps", path);
        if (a >= 0) H5Aclose(a);
        H5Sclose(as);
    }
    if (!x->failed) {
        char hex[CHECKSUM_HEX];
        dataset_checksum(hex, path, nd, dims, data, sizeof(float) * t->numel, steps >= 0 ? &steps : NULL);
        attr_str(x, d, CHECKSUM_ATTR, hex);
    }
    if (d >= 0) H5Dclose(d);
    if (space >= 0) H5Sclose(space);
}

static void write_u64(H5Ctx *x, hid_t file, hid_t lcpl, const char *path, const uint64_t *v, int n) {
    hsize_t dims[1] = {(hsize_t)n};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t d = H5Dcreate2(file, path, H5T_STD_U64LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (h5ok(x, d, "H5Dcreate2", path))
        h5ok(x, H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), "H5Dwrite", path);
    if (!x->failed) {
        char hex[CHECKSUM_HEX];
        dataset_checksum(hex, path, 1, dims, v, sizeof(uint64_t) * (size_t)n, NULL);
        attr_str(x, d, CHECKSUM_ATTR, hex);
    }
    if (d >= 0) H5Dclose(d);
    if (space >= 0) H5Sclose(space);
}

static void attr_int(H5Ctx *x, hid_t obj, const char *name, int v) {
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_STD_I32LE, s, H5P_DEFAULT, H5P_DEFAULT);
    if (h5ok(x, a, "H5Acreate2", name)) h5ok(x, H5Awrite(a, H5T_NATIVE_INT, &v), "H5Awrite", name);
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
}

static void attr_str(H5Ctx *x, hid_t obj, const char *name, const char *v) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    if (h5ok(x, a, "H5Acreate2", name)) h5ok(x, H5Awrite(a, t, v), "H5Awrite", name);
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
}

// A checkpoint is assembled in memory by HDF5's core driver and written to disk by us. HDF5 1.10 frees a
// file whose H5Fclose fails (disk full, quota, I/O error) but keeps its id, and its shutdown then crashes
// on that id (HDFFV-11052), so HDF5 must never do the disk I/O of a file it writes. The image lives in
// memory we own (the file-image callbacks below): H5Fclose hands it to us instead of freeing it, and
// write_all_sync() writes it with checked write() and fsync(). Cost: one image of this rank's checkpoint
// (its parameters and AdamW state) in memory while it is written.
typedef struct {
    void *mem; // the image, kept by image_free at file close
} Image;

static void *image_malloc(size_t size, H5FD_file_image_op_t op, void *udata) {
    (void)op;
    (void)udata;
    return malloc(size ? size : 1);
}
static void *image_memcpy(void *dest, const void *src, size_t size, H5FD_file_image_op_t op, void *udata) {
    (void)op;
    (void)udata;
    return memcpy(dest, src, size);
}
static void *image_realloc(void *ptr, size_t size, H5FD_file_image_op_t op, void *udata) {
    (void)op;
    (void)udata;
    return realloc(ptr, size ? size : 1);
}
static herr_t image_free(void *ptr, H5FD_file_image_op_t op, void *udata) {
    Image *im = udata;
    if (op == H5FD_FILE_IMAGE_OP_FILE_CLOSE && im && !im->mem) im->mem = ptr; // the finished file: ours now
    else free(ptr);
    return 0;
}
static void *image_udata_copy(void *udata) { return udata; } // one Image, shared by the property list copies
static herr_t image_udata_free(void *udata) { (void)udata; return 0; }

int ckpt_save(const char *path, const CkptState *s, char *err, size_t len) {
    h5_quiet();
    if (sodium_init() < 0) { error_set(err, len, "%s: libsodium failed to initialise", path); return 1; }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    H5Ctx x = {.err = err, .len = len, .file = tmp};
    Image im = {NULL};
    H5FD_file_image_callbacks_t cb = { image_malloc,     image_memcpy, image_realloc, image_free, image_udata_copy,
                                       image_udata_free, &im };
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (!h5ok(&x, fapl, "H5Pcreate", "file access")) return 1;
    if (!h5ok(&x, H5Pset_fapl_core(fapl, (size_t)1 << 20, 0), "H5Pset_fapl_core", "") ||
        !h5ok(&x, H5Pset_file_image_callbacks(fapl, &cb), "H5Pset_file_image_callbacks", "")) {
        H5Pclose(fapl);
        return 1;
    }
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (!h5ok(&x, file, "H5Fcreate", "")) return 1;
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    // /meta
    hid_t meta = H5Gcreate2(file, "/meta", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (h5ok(&x, meta, "H5Gcreate2", "/meta")) {
        Text text = {0};
        config_write(&text, s->c);
        CkptMeta fm = {CKPT_FORMAT_VERSION, s->step, s->party, s->local, s->c->n_parties, 0};
        const char *mode = MODE_NAMES[s->c->mode], *schedule = SCHEDULE_NAMES[s->c->schedule];
        char hex[CHECKSUM_HEX];
        meta_checksum(hex, &fm, mode, schedule, text.s);
        attr_int(&x, meta, "format_version", fm.version);
        attr_int(&x, meta, "step", fm.step);
        attr_int(&x, meta, "party", fm.party);
        attr_int(&x, meta, "n_parties", fm.parties);
        attr_int(&x, meta, "local_rank", fm.local);
        attr_str(&x, meta, "mode", mode);
        attr_str(&x, meta, "schedule", schedule);
        attr_str(&x, meta, "config", text.s);
        attr_str(&x, meta, CHECKSUM_ATTR, hex);
        text_free(&text);
        H5Gclose(meta);
    }
    // weights and AdamW state
    const Model *m = s->m;
    char p[256];
    for (int i = 0; i < m->n_tensors && !x.failed; i++) {
        const ParamTensor *t = &m->tensors[i];
        if (s->local > 0 && t->expert < 0) continue; // (the party's rank 0 writes its backbone)
        tensor_path(p, sizeof p, "", t);
        write_floats(&x, file, lcpl, p, t, m->host_params + t->offset, -1);
        tensor_path(p, sizeof p, "/optim/adam_m", t);
        write_floats(&x, file, lcpl, p, t, m->host_adam_m + t->offset, m->adam_steps[i]);
        tensor_path(p, sizeof p, "/optim/adam_v", t);
        write_floats(&x, file, lcpl, p, t, m->host_adam_v + t->offset, -1);
    }
    // samplers and the private shuffle
    for (int i = 0; s->local == 0 && i < s->n_data && !x.failed; i++) {
        snprintf(p, sizeof p, "/data/rng_party_%d", s->first_data + i);
        write_u64(&x, file, lcpl, p, s->data_rng[i].s, 4);
    }
    if (s->shuffle && !x.failed) write_u64(&x, file, lcpl, "/data/shuffle_rng", s->shuffle->s, 4);
    H5Pclose(lcpl);
    // everything into the image, its size, then the close that hands the image to us (memory only)
    size_t size = 0;
    if (!x.failed) h5ok(&x, H5Fflush(file, H5F_SCOPE_LOCAL), "H5Fflush", "");
    if (!x.failed) { // the image grows in 1 MiB steps; the file is its first `size` bytes (the EOA), no copy made
        ssize_t n = H5Fget_file_image(file, NULL, 0);
        if (h5ok(&x, n, "H5Fget_file_image", "")) size = (size_t)n;
    }
    h5ok(&x, H5Fclose(file), "H5Fclose", "");
    if (!x.failed && !im.mem) { error_set(err, len, "%s: HDF5 returned no file image", tmp); x.failed = 1; }
    if (!x.failed && write_all_sync(tmp, im.mem, size) != 0) {
        error_set(err, len, "%s: cannot write: %s", tmp, strerror(errno));
        x.failed = 1;
    }
    free(im.mem);
    if (x.failed) return 1;
    if (rename(tmp, path) != 0) {
        error_set(err, len, "%s: rename to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        return 1;
    }
    return 0;
}

// ------------------------------------------------------------------------------------------ loading

static int read_attr_int(H5Ctx *x, hid_t obj, const char *name, int *v) {
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) {
        if (!x->failed) error_set(x->err, x->len, "%s: missing attribute /meta/%s", x->file, name);
        x->failed = 1;
        return 0;
    }
    hid_t t = H5Aget_type(a);
    int ok = H5Tget_class(t) == H5T_INTEGER && H5Aget_storage_size(a) == 4;
    if (!ok && !x->failed) {
        error_set(x->err, x->len, "%s: attribute /meta/%s is not a 32-bit integer", x->file, name);
        x->failed = 1;
    }
    if (ok) h5ok(x, H5Aread(a, H5T_NATIVE_INT, v), "H5Aread", name);
    H5Tclose(t);
    H5Aclose(a);
    return !x->failed;
}

// Reads a fixed-length string attribute into out (NUL-terminated, at most len-1 bytes).
static int read_attr_str(H5Ctx *x, hid_t obj, const char *name, char *out, size_t len) {
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) {
        if (!x->failed) error_set(x->err, x->len, "%s: missing attribute /meta/%s", x->file, name);
        x->failed = 1;
        return 0;
    }
    hid_t t = H5Aget_type(a);
    size_t size = H5Tget_size(t);
    int ok = H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t) && size > 0 && size < len;
    if (!ok && !x->failed) {
        error_set(x->err, x->len, "%s: attribute /meta/%s is not a string of at most %zu bytes", x->file, name,
                  len - 1);
        x->failed = 1;
    }
    if (ok) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, size);
        if (h5ok(x, H5Aread(a, mt, out), "H5Aread", name)) out[size] = '\0';
        H5Tclose(mt);
    }
    H5Tclose(t);
    H5Aclose(a);
    return !x->failed;
}

// Reads attribute `blake2b` of object `obj` (a `kind` named path) into hex (CHECKSUM_HEX). Returns 1, or 0
// (damage).
static int read_checksum(H5Ctx *x, hid_t obj, const char *kind, const char *path, char *hex) {
    if (H5Aexists(obj, CHECKSUM_ATTR) <= 0) {
        damage(x, kind, path, "no checksum (attribute " CHECKSUM_ATTR "), though its file's format has them");
        return 0;
    }
    hid_t a = H5Aopen(obj, CHECKSUM_ATTR, H5P_DEFAULT), t = a >= 0 ? H5Aget_type(a) : -1;
    size_t size = t >= 0 ? H5Tget_size(t) : 0; // (65 as pcmoe writes it, NUL included; 64 without)
    int ok = t >= 0 && H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t) && (size == 64 || size == 65);
    if (ok) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, CHECKSUM_HEX);
        ok = H5Aread(a, mt, hex) >= 0;
        H5Tclose(mt);
        hex[CHECKSUM_HEX - 1] = '\0';
        ok = ok && strlen(hex) == CHECKSUM_HEX - 1;
    }
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    if (!ok) damage(x, kind, path, "its checksum attribute is unreadable (the file is damaged)");
    return ok;
}

// From format 2 on: dataset d (named path, shape dims) as read into data (bytes) must match its stored
// checksum; a mismatch is damage, named. (Files of format 1 carry none: nothing to verify.)
static void check_checksum(H5Ctx *x, hid_t d, const char *path, int ndim, const hsize_t *dims, const void *data,
                           size_t bytes, const int *steps) {
    if (x->failed || x->version < 2 || x->whole) return;
    char want[CHECKSUM_HEX], got[CHECKSUM_HEX];
    if (!read_checksum(x, d, "dataset", path, want)) return;
    dataset_checksum(got, path, ndim, dims, data, bytes, steps);
    if (strcmp(got, want)) damage(x, "dataset", path, "checksum mismatch (the file is damaged)");
    else x->verified++;
}

// Reads attribute `steps` (an AdamW moment's step count) of dataset d (named path) into steps; unreadable
// is damage.
static void read_steps(H5Ctx *x, hid_t d, const char *path, int *steps) {
    hid_t a = H5Aopen(d, "steps", H5P_DEFAULT);
    if (a < 0 || H5Aread(a, H5T_NATIVE_INT, steps) < 0) damage(x, "dataset", path, "unreadable `steps`");
    if (a >= 0) H5Aclose(a);
}

// Reads dataset `path` of `n` elements of `want` class/size with the shape of tensor t (or 1-D n).
static int read_data(H5Ctx *x, hid_t file, const char *path, int ndim, const hsize_t *dims, hid_t mem_type,
                     H5T_class_t cls, size_t size, void *out, int *steps) {
    if (x->failed) return 0;
    htri_t exists = H5Lexists(file, path, H5P_DEFAULT);
    // H5Lexists fails when an intermediate group is missing: both mean "no such dataset"
    if (exists <= 0) { error_set(x->err, x->len, "%s: missing dataset %s", x->file, path); x->failed = 1; return 0; }
    hid_t d = H5Dopen2(file, path, H5P_DEFAULT);
    if (!h5ok(x, d, "H5Dopen2", path)) return 0;
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    hsize_t got[H5S_MAX_RANK];
    int nd = (t >= 0 && sp >= 0) ? H5Sget_simple_extent_dims(sp, got, NULL) : -1;
    int ok = nd == ndim && H5Tget_class(t) == cls && H5Tget_size(t) == size;
    for (int i = 0; ok && i < ndim; i++) ok = got[i] == dims[i];
    if (!ok) {
        char shape[64] = "", want[64] = "";
        for (int i = 0; i < nd && i < 4; i++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%llu", i ? "x" : "",
                     (unsigned long long)got[i]);
        for (int i = 0; i < ndim; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%llu", i ? "x" : "",
                     (unsigned long long)dims[i]);
        error_set(x->err, x->len, "%s: dataset %s has shape %s (or the wrong type), expected %s", x->file, path,
                  nd >= 0 ? shape : "?", want);
        x->failed = 1;
    } else if (H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) {
        damage(x, "dataset", path, "unreadable (H5Dread failed: the file is damaged)");
    }
    if (ok && steps && !x->failed) {
        if (H5Aexists(d, "steps") <= 0) {
            error_set(x->err, x->len, "%s: dataset %s lacks its `steps` attribute", x->file, path);
            x->failed = 1;
        } else {
            read_steps(x, d, path, steps);
        }
        if (!x->failed && *steps < 0) {
            error_set(x->err, x->len, "%s: %s: negative AdamW step count %d", x->file, path, *steps);
            x->failed = 1;
        }
    }
    size_t n = size;
    for (int i = 0; i < ndim; i++) n *= dims[i];
    if (ok && !x->failed) check_checksum(x, d, path, ndim, dims, out, n, steps);
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    H5Dclose(d);
    return !x->failed;
}

static int finite_all(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(v[i] - v[i] == 0.0f)) return 0;
    return 1;
}

// Opens a checkpoint file for reading after checking it is an HDF5 file at all.
static hid_t open_file(H5Ctx *x, const char *path) {
    h5_quiet();
    if (sodium_init() < 0) { // (picks BLAKE2b's fastest code; idempotent)
        error_set(x->err, x->len, "%s: libsodium failed to initialise", path);
        x->failed = 1;
        return -1;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        error_set(x->err, x->len, "%s: cannot read checkpoint: %s", path, strerror(errno));
        x->failed = 1;
        return -1;
    }
    if (H5Fis_hdf5(path) <= 0) {
        error_set(x->err, x->len, "%s: not an HDF5 file (truncated or corrupt checkpoint?)", path);
        x->failed = x->damaged = 1;
        return -1;
    }
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        error_set(x->err, x->len, "%s: cannot open as HDF5 (truncated or corrupt checkpoint?)", path);
        x->failed = x->damaged = 1;
    }
    return file;
}

// An integer attribute that files before it lack: def when absent.
static int read_attr_int_or(H5Ctx *x, hid_t obj, const char *name, int *v, int def) {
    if (x->failed) return 0;
    *v = def;
    htri_t has = H5Aexists(obj, name);
    return has > 0 ? read_attr_int(x, obj, name, v) : h5ok(x, has, "H5Aexists", name);
}

// Reads /meta of an open file (its attributes into fm, mode, schedule (32 bytes each) and text; fm->ranks is
// left to the callers) and, from format 2 on, verifies its checksum. Sets x->version. Returns 1, or 0.
static int read_meta(H5Ctx *x, hid_t file, CkptMeta *fm, char *mode, char *schedule, char *text, size_t text_len) {
    if (x->failed) return 0;
    hid_t meta = H5Gopen2(file, "/meta", H5P_DEFAULT);
    if (meta < 0) {
        error_set(x->err, x->len, "%s: missing group /meta", x->file);
        x->failed = x->damaged = 1;
        return 0;
    }
    read_attr_int(x, meta, "format_version", &fm->version);
    if (!x->failed && (fm->version < CKPT_FORMAT_OLDEST || fm->version > CKPT_FORMAT_VERSION)) {
        error_set(x->err, x->len, "%s: checkpoint format version %d, this pcmoe reads %d to %d", x->file, fm->version,
                  CKPT_FORMAT_OLDEST, CKPT_FORMAT_VERSION);
        x->failed = 1;
    }
    read_attr_int(x, meta, "step", &fm->step);
    read_attr_int(x, meta, "party", &fm->party);
    read_attr_int(x, meta, "n_parties", &fm->parties);
    read_attr_int_or(x, meta, "local_rank", &fm->local, 0);
    read_attr_str(x, meta, "mode", mode, 32);
    read_attr_str(x, meta, "schedule", schedule, 32);
    read_attr_str(x, meta, "config", text, text_len);
    char want[CHECKSUM_HEX], got[CHECKSUM_HEX];
    if (!x->failed && fm->version >= 2 && read_checksum(x, meta, "group", "/meta", want)) {
        meta_checksum(got, fm, mode, schedule, text);
        if (strcmp(got, want)) damage(x, "group", "/meta", "checksum mismatch (the file is damaged)");
        else x->verified++;
    }
    H5Gclose(meta);
    if (!x->failed) x->version = fm->version;
    return !x->failed;
}

int ckpt_peek(const char *path, char *config, size_t text_len, CkptMeta *fm, char *err, size_t len) {
    H5Ctx x = {.err = err, .len = len, .file = path};
    hid_t file = open_file(&x, path);
    if (file < 0) return 2;
    char mode[32], schedule[32];
    *fm = (CkptMeta){0};
    read_meta(&x, file, fm, mode, schedule, config, text_len);
    H5Fclose(file);
    return x.failed ? 2 : 0;
}

// Reads /meta of an open file into fm and checks it against s: format, mode and the model keys of the stored
// config (parties.count and parties.ranks_per_party may differ: the callers decide).
static int check_meta(H5Ctx *x, hid_t file, const CkptState *s, CkptMeta *fm) {
    const Config *c = s->c;
    const char *path = x->file;
    char mode[32] = "", schedule[32] = "", *text = mallocCheck(1 << 20);
    read_meta(x, file, fm, mode, schedule, text, 1 << 20);
    if (!x->failed && fm->step < 0) {
        error_set(x->err, x->len, "%s: negative step %d", path, fm->step);
        x->failed = 1;
    }
    if (!x->failed && strcmp(mode, MODE_NAMES[c->mode])) {
        error_set(x->err, x->len, "%s: written in parties.mode = %s, config has %s", path, mode, MODE_NAMES[c->mode]);
        x->failed = 1;
    }
    if (!x->failed) { // the model keys must match; training keys (and the parties' layout) may change
        Config *stored = mallocCheck(sizeof(Config));
        char why[1024];
        if (config_load_text(stored, text, why, sizeof why)) {
            error_set(x->err, x->len, "%s: stored config unreadable: %s", path, why);
            x->failed = 1;
        } else if (config_diff_model(stored, c, 0, why, sizeof why)) {
            error_set(x->err, x->len, "%s: another model: %s", path, why);
            x->failed = 1;
        } else if (fm->parties != stored->n_parties) {
            error_set(x->err, x->len, "%s: written by a run of %d parties, config has parties.count = %d (its stored "
                      "config)", path, fm->parties, stored->n_parties);
            x->failed = 1;
        } else if (fm->local < 0 || fm->local >= stored->ranks_per_party || fm->party < 0 ||
                   fm->party >= fm->parties) {
            error_set(x->err, x->len, "%s: party %d, rank %d of a run of %d parties of %d ranks", path, fm->party,
                      fm->local, fm->parties, stored->ranks_per_party);
            x->failed = 1;
        }
        fm->ranks = stored->ranks_per_party;
        free(stored);
    }
    free(text);
    return !x->failed;
}

// The party and party count of a file's meta against what its reader expects (parties: -1, any; the config's,
// or those of party_0.h5's run).
static int check_party(H5Ctx *x, const CkptMeta *fm, int party, int parties, const Config *c) {
    if (x->failed) return 0;
    if (fm->party != party) {
        error_set(x->err, x->len, "%s: holds party %d, expected party %d", x->file, fm->party, party);
        x->failed = 1;
    } else if (parties >= 0 && fm->parties != parties) {
        error_set(x->err, x->len, "%s: written by a run of %d parties, %s %d", x->file, fm->parties,
                  parties == c->n_parties ? "config has parties.count =" : "the party's own file says", parties);
        x->failed = 1;
    }
    return !x->failed;
}

// Tensor i of m from an open file: its weights (checked finite) and AdamW moments and step count, each checked
// for presence, type and shape.
static void read_tensor_state(H5Ctx *x, hid_t file, Model *m, int i) {
    const ParamTensor *t = &m->tensors[i];
    hsize_t dims[2] = {(hsize_t)t->rows, (hsize_t)t->cols};
    int nd = t->cols == 1 ? 1 : 2;
    char p[256];
    tensor_path(p, sizeof p, "", t);
    read_data(x, file, p, nd, dims, H5T_NATIVE_FLOAT, H5T_FLOAT, 4, m->host_params + t->offset, NULL);
    if (!x->failed && !finite_all(m->host_params + t->offset, t->numel)) {
        error_set(x->err, x->len, "%s: %s holds NaN or Inf", x->file, p);
        x->failed = 1;
    }
    tensor_path(p, sizeof p, "/optim/adam_m", t);
    read_data(x, file, p, nd, dims, H5T_NATIVE_FLOAT, H5T_FLOAT, 4, m->host_adam_m + t->offset, &m->adam_steps[i]);
    tensor_path(p, sizeof p, "/optim/adam_v", t);
    read_data(x, file, p, nd, dims, H5T_NATIVE_FLOAT, H5T_FLOAT, 4, m->host_adam_v + t->offset, NULL);
}

// The samplers (data: s's n_data of them) and the private shuffle (shuffle, when s has one) from an open file.
static void read_rngs(H5Ctx *x, hid_t file, CkptState *s, int data, int shuffle) {
    hsize_t four[1] = {4};
    char p[64];
    for (int i = 0; data && i < s->n_data && !x->failed; i++) {
        snprintf(p, sizeof p, "/data/rng_party_%d", s->first_data + i);
        read_data(x, file, p, 1, four, H5T_NATIVE_UINT64, H5T_INTEGER, 8, s->data_rng[i].s, NULL);
    }
    if (shuffle && s->shuffle && !x->failed)
        read_data(x, file, "/data/shuffle_rng", 1, four, H5T_NATIVE_UINT64, H5T_INTEGER, 8, s->shuffle->s, NULL);
}

int ckpt_load(const char *path, CkptState *s, char *err, size_t len) {
    H5Ctx x = {.err = err, .len = len, .file = path};
    hid_t file = open_file(&x, path);
    if (file < 0) return 2;
    CkptMeta fm = {0};
    check_meta(&x, file, s, &fm);
    check_party(&x, &fm, s->party, s->c->n_parties, s->c);
    for (int i = 0; i < s->m->n_tensors && !x.failed; i++) // (a party's rank > 0 holds no backbone)
        if (fm.local == 0 || s->m->tensors[i].expert >= 0) read_tensor_state(&x, file, s->m, i);
    read_rngs(&x, file, s, fm.local == 0, 1);
    H5Fclose(file);
    s->step = fm.step;
    s->stored_parties = fm.parties;
    s->stored_ranks = fm.ranks;
    s->version = fm.version;
    s->verified = x.verified;
    s->damaged = x.damaged;
    return x.failed ? 2 : 0;
}

// ckpt_load_party: the file of rank `local` of party `party` in the checkpoint, opened once and its meta checked
// against party 0's rank-0 file, fm0 (the same step, parties and ranks). files (fm0 parties x ranks): the open
// files, -1 until opened.
static hid_t layout_file(H5Ctx *x, const char *dir, const CkptState *s, hid_t *files, int party, int local,
                         const CkptMeta *fm0, char *path, size_t path_len) {
    ckpt_rank_file(path, path_len, dir, party, local);
    x->file = path;
    hid_t *f = &files[party * fm0->ranks + local];
    if (*f >= 0 || x->failed) return *f;
    *f = open_file(x, path);
    CkptMeta fm = {0};
    if (*f >= 0 && check_meta(x, *f, s, &fm) && check_party(x, &fm, party, fm0->parties, s->c) &&
        (fm.step != fm0->step || fm.local != local || fm.ranks != fm0->ranks)) {
        error_set(x->err, x->len, "%s: step %d, rank %d of %d: does not belong with party_0.h5 (step %d, %d ranks)",
                  path, fm.step, fm.local, fm.ranks, fm0->step, fm0->ranks);
        x->failed = 1;
    }
    if (!x->failed && fm.version != fm0->version) { // (x->version, which the reads go by, is every file's)
        error_set(x->err, x->len, "%s: checkpoint format %d, its step's first file has %d", path, fm.version,
                  fm0->version);
        x->failed = 1;
    }
    return *f;
}

// The file (party, local rank) that held tensor t when the checkpoint was written (fm0: its layout): the
// party's rank 0 for the backbone; for an expert its owner then (pcmoe: the pool's, re-sharded now; the other
// modes: the party's own model).
static void tensor_home(const ParamTensor *t, const CkptState *s, const CkptMeta *fm0, int *party, int *local) {
    *party = s->party;
    *local = 0;
    if (t->expert < 0 || s->c->mode != MODE_PCMOE) return;
    int owner = pool_owner_rank(t->expert, fm0->parties, fm0->ranks);
    *party = owner / fm0->ranks;
    *local = owner % fm0->ranks;
}

int ckpt_load_party(const char *dir, CkptState *s, char *err, size_t len) {
    char path0[4200], path[4200];
    struct stat st;
    // the layout from the party's own rank-0 file (parties in different places may hold only their own), else
    // (a party that joins now) from party 0's
    int first = 0;
    ckpt_rank_file(path0, sizeof path0, dir, s->party, 0);
    if (stat(path0, &st) == 0) first = s->party;
    else ckpt_rank_file(path0, sizeof path0, dir, 0, 0);
    H5Ctx x = {.err = err, .len = len, .file = path0};
    hid_t file0 = open_file(&x, path0);
    s->damaged = x.damaged;
    if (file0 < 0) return 2;
    CkptMeta fm0 = {0};
    int pcmoe = s->c->mode == MODE_PCMOE; // (only pcmoe's parties may leave and join)
    check_meta(&x, file0, s, &fm0);
    check_party(&x, &fm0, first, pcmoe ? -1 : s->c->n_parties, s->c);
    if (!x.failed && first == 0 && s->party != 0 && s->party < fm0.parties) { // its own file is missing
        H5Fclose(file0);
        ckpt_rank_file(path0, sizeof path0, dir, s->party, 0);
        H5Ctx y = {.err = err, .len = len, .file = path0};
        open_file(&y, path0); // (fails, naming the file)
        return 2;
    }
    size_t n_files = x.failed ? 1 : (size_t)fm0.parties * fm0.ranks;
    hid_t *files = mallocCheck(sizeof(hid_t) * n_files);
    for (size_t i = 0; i < n_files; i++) files[i] = -1;
    files[x.failed ? 0 : (size_t)first * fm0.ranks] = file0;
    int known = !x.failed && s->party < fm0.parties; // 0: a party that joins now (no backbone, sampler, shuffle)
    Model *m = s->m;
    for (int i = 0; i < m->n_tensors && !x.failed; i++) { // each tensor from the rank that held it
        int party, local;
        tensor_home(&m->tensors[i], s, &fm0, &party, &local);
        if (m->tensors[i].expert < 0 && !known) continue;
        hid_t f = layout_file(&x, dir, s, files, party, local, &fm0, path, sizeof path);
        if (!x.failed) read_tensor_state(&x, f, m, i);
    }
    if (known) read_rngs(&x, layout_file(&x, dir, s, files, s->party, 0, &fm0, path, sizeof path), s, 1, 0);
    if (known && s->local < fm0.ranks) // the private shuffle: this rank's own, when the checkpoint had its rank
        read_rngs(&x, layout_file(&x, dir, s, files, s->party, s->local, &fm0, path, sizeof path), s, 0, 1);
    for (size_t i = 0; i < n_files; i++)
        if (files[i] >= 0) H5Fclose(files[i]);
    free(files);
    s->step = fm0.step;
    s->stored_parties = fm0.parties;
    s->stored_ranks = fm0.ranks;
    s->joined = !known;
    s->version = fm0.version;
    s->verified = x.verified;
    s->damaged = x.damaged;
    return x.failed ? 2 : 0;
}

// ------------------------------------------------------------------------------ verifying whole files

// Dataset d (named path) read whole in the type it was written in and checked against its checksum.
static void verify_dataset(H5Ctx *x, hid_t d, const char *path) {
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    hsize_t dims[H5S_MAX_RANK];
    int nd = sp >= 0 ? H5Sget_simple_extent_dims(sp, dims, NULL) : -1;
    int f32 = t >= 0 && H5Tget_class(t) == H5T_FLOAT && H5Tget_size(t) == 4;
    int u64 = t >= 0 && H5Tget_class(t) == H5T_INTEGER && H5Tget_size(t) == 8;
    if (nd < 0 || !(f32 || u64)) damage(x, "dataset", path, "neither float32 nor uint64 (the file is damaged)");
    size_t bytes = f32 ? 4 : 8;
    for (int i = 0; i < nd; i++) bytes *= dims[i];
    void *buf = x->failed ? NULL : mallocCheck(bytes ? bytes : 1);
    int steps = 0, has_steps = !x->failed && H5Aexists(d, "steps") > 0;
    if (buf && H5Dread(d, f32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        damage(x, "dataset", path, "unreadable (H5Dread failed: the file is damaged)");
    if (has_steps && !x->failed) read_steps(x, d, path, &steps);
    if (buf) check_checksum(x, d, path, nd, dims, buf, bytes, has_steps ? &steps : NULL);
    free(buf);
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
}

// H5Lvisit's callback: every dataset of the file, verified (op: the H5Ctx). Stops at the first failure.
static herr_t verify_visit(hid_t group, const char *name, const H5L_info_t *info, void *op) {
    (void)info;
    H5Ctx *x = op;
    char path[1024];
    snprintf(path, sizeof path, "/%s", name);
    hid_t o = H5Oopen(group, name, H5P_DEFAULT);
    if (o < 0) damage(x, "object", path, "cannot be opened (the file is damaged)");
    else if (H5Iget_type(o) == H5I_DATASET) verify_dataset(x, o, path);
    if (o >= 0) H5Oclose(o);
    return x->failed ? 1 : 0;
}

// The open file's /meta and every dataset verified against their checksums (format 2 on); fm: its /meta.
static void verify_file(H5Ctx *x, hid_t file, CkptMeta *fm) {
    char mode[32], schedule[32], *text = mallocCheck(1 << 20);
    x->whole = 0;
    if (read_meta(x, file, fm, mode, schedule, text, 1 << 20) && fm->version >= 2 &&
        H5Lvisit(file, H5_INDEX_NAME, H5_ITER_INC, verify_visit, x) < 0)
        damage(x, "group", "/", "its links cannot be walked (the file is damaged)");
    x->whole = 1; // (what is read from the file next need not be hashed again)
    free(text);
}

int ckpt_verify(const char *path, long *verified, int *version, char *err, size_t len) {
    H5Ctx x = {.err = err, .len = len, .file = path};
    hid_t file = open_file(&x, path);
    if (file < 0) return 2;
    CkptMeta fm = {0};
    verify_file(&x, file, &fm);
    H5Fclose(file);
    if (verified) *verified = x.verified;
    if (version) *version = fm.version;
    return x.failed ? 2 : 0;
}

int ckpt_is_file_name(const char *name) {
    size_t l = strlen(name);
    return !strncmp(name, "party_", 6) && l > 3 && !strcmp(name + l - 3, ".h5");
}

int ckpt_verify_dir(const char *dir, char *err, size_t len) {
    DIR *d = opendir(dir);
    if (!d) return error_set(err, len, "%s: cannot open directory", dir);
    struct dirent *e;
    char path[4200];
    int rc = 0, n = 0;
    while (!rc && (e = readdir(d))) {
        if (!ckpt_is_file_name(e->d_name)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        rc = ckpt_verify(path, NULL, NULL, err, len);
        n++;
    }
    closedir(d);
    if (!rc && n == 0) rc = error_set(err, len, "%s: no party_*.h5 checkpoint files", dir);
    return rc;
}

int ckpt_newest_verified(const char *run_dir, int below) {
    int steps[4096], n = ckpt_list(run_dir, steps, 4096);
    char dir[4096], err[2048];
    for (int i = n - 1; i >= 0; i--) {
        if (steps[i] >= below) continue;
        ckpt_step_dir(dir, sizeof dir, run_dir, steps[i]);
        if (ckpt_verify_dir(dir, err, sizeof err) == 0) return steps[i];
    }
    return -1;
}

// ------------------------------------------------------------------------------ directory layout

void ckpt_step_dir(char *out, size_t len, const char *run_dir, int step) {
    snprintf(out, len, "%s/checkpoints/step_%08d", run_dir, step);
}

void ckpt_party_file(char *out, size_t len, const char *dir, int party) {
    snprintf(out, len, "%s/party_%d.h5", dir, party);
}

void ckpt_rank_file(char *out, size_t len, const char *dir, int party, int local) {
    if (local == 0) ckpt_party_file(out, len, dir, party);
    else snprintf(out, len, "%s/party_%d.rank_%d.h5", dir, party, local);
}

void ckpt_remove_party(const char *dir, int party) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[4200];
    while ((e = readdir(d))) {
        int p = -1, local = -1, n = -1;
        if ((sscanf(e->d_name, "party_%d.h5%n", &p, &n) == 1 && n == (int)strlen(e->d_name)) ||
            (sscanf(e->d_name, "party_%d.rank_%d.h5%n", &p, &local, &n) == 2 && n == (int)strlen(e->d_name)))
            if (p == party) {
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                unlink(path);
            }
    }
    closedir(d);
}

void ckpt_marker_file(char *out, size_t len, const char *dir) { snprintf(out, len, "%s/%s", dir, CKPT_MARKER); }

int ckpt_is_complete(const char *dir) {
    char p[4200];
    ckpt_marker_file(p, sizeof p, dir);
    struct stat st;
    return stat(p, &st) == 0;
}

static int is_complete(const char *run_dir, int step) {
    char dir[4000];
    ckpt_step_dir(dir, sizeof dir, run_dir, step);
    return ckpt_is_complete(dir);
}

static int cmp_int(const void *a, const void *b) {
    return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

// All step directories (complete or not), ascending; returns the count (<= max stored).
static int scan_steps(const char *run_dir, int *steps, int max) {
    char p[4096];
    snprintf(p, sizeof p, "%s/checkpoints", run_dir);
    DIR *d = opendir(p);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int step;
        char tail;
        if (sscanf(e->d_name, "step_%d%c", &step, &tail) == 1 && step >= 0 && strlen(e->d_name) == 13 && n < max)
            steps[n++] = step;
    }
    closedir(d);
    qsort(steps, n, sizeof(int), cmp_int);
    return n;
}

int ckpt_list(const char *run_dir, int *steps, int max) {
    int all[4096], n = scan_steps(run_dir, all, 4096), k = 0;
    for (int i = 0; i < n; i++)
        if (is_complete(run_dir, all[i]) && k < max) steps[k++] = all[i];
    return k;
}

int ckpt_latest(const char *run_dir, char *ignored, size_t ignored_len) {
    int all[4096], n = scan_steps(run_dir, all, 4096);
    if (ignored && ignored_len) ignored[0] = '\0';
    for (int i = n - 1; i >= 0; i--) {
        if (is_complete(run_dir, all[i])) return all[i];
        if (ignored)
            snprintf(ignored + strlen(ignored), ignored_len - strlen(ignored), "%sstep_%08d", ignored[0] ? ", " : "",
                     all[i]);
    }
    return -1;
}

int ckpt_read_weights(Model *m, const char *dir, int backbone_party, int experts_only, int expert_parties,
                      int expert_ranks, char *err, size_t len) {
    int n_files = expert_parties * expert_ranks;
    hid_t *files = mallocCheck(sizeof(hid_t) * (size_t)n_files); // (n_files) each rank's file, once verified whole
    for (int i = 0; i < n_files; i++) files[i] = -1;
    char file[4200], dataset[160];
    H5Ctx x = {.err = err, .len = len, .file = file};
    for (int i = 0; i < m->n_tensors && !x.failed; i++) {
        const ParamTensor *t = &m->tensors[i];
        if (experts_only && t->expert < 0) continue;
        int owner = t->expert < 0 ? backbone_party * expert_ranks
                                  : pool_owner_rank(t->expert, expert_parties, expert_ranks);
        ckpt_rank_file(file, sizeof file, dir, owner / expert_ranks, owner % expert_ranks);
        snprintf(dataset, sizeof dataset, "/%s/%s", t->expert < 0 ? "backbone" : "experts", t->name);
        if (files[owner] < 0) { // every dataset of a file read from verified, not only the weights
            CkptMeta fm = {0};
            files[owner] = open_file(&x, file);
            if (files[owner] >= 0) verify_file(&x, files[owner], &fm);
        }
        hsize_t dims[2] = {(hsize_t)t->rows, (hsize_t)t->cols};
        read_data(&x, files[owner], dataset, t->cols == 1 ? 1 : 2, dims, H5T_NATIVE_FLOAT, H5T_FLOAT, 4,
                  m->host_params + t->offset, NULL);
    }
    for (int i = 0; i < n_files; i++)
        if (files[i] >= 0) H5Fclose(files[i]);
    free(files);
    return x.failed ? 2 : 0;
}
