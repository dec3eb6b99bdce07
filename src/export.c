// export.c: pcmoe export (see export.h).
#include "export.h"

#include <errno.h>    // errno
#include <stdio.h>    // snprintf, fprintf
#include <stdlib.h>   // free
#include <string.h>   // strcmp, strerror
#include <dirent.h>   // opendir
#include <sys/stat.h> // stat

#include "hf.h"          // hf_config_read, hf_pieces
#include "json.h"        // Json: the shard index
#include "safetensors.h" // st_write
#include "util.h"        // error_set, mkdir_p, write_file_atomic, file_append

// Copies file src to dst (whole, through dst.tmp). Returns 0, or 1 with err set.
static int copy_file(const char *src, const char *dst, char *err, size_t len) {
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0;
    if (file_append(src, &buf, &n, &cap)) {
        free(buf);
        error_set(err, len, "%s: cannot read", src);
        return 1;
    }
    int rc = write_file_atomic(dst, buf ? buf : (unsigned char *)"", n, err, len);
    free(buf);
    return rc;
}

// The Hugging Face tensors of the export: party's backbone (m) and every expert (e: m itself, or the pool).
// Fills w (names into names); returns their count.
static int export_tensors(int arch, const Model *m, const Model *e, StWrite *w, char (*names)[ST_NAME_LEN]) {
    int n = 0;
    for (int pass = 0; pass < 2; pass++) {
        const Model *src = pass ? e : m;
        for (int i = 0; i < src->n_tensors; i++) {
            const ParamTensor *t = &src->tensors[i];
            if ((t->expert >= 0) != pass) continue;
            HfPiece p[3];
            int np = hf_pieces(arch, &src->cfg, t, p);
            for (int k = 0; k < np; k++, n++) {
                snprintf(names[n], ST_NAME_LEN, "%.250s", p[k].name);
                w[n] = (StWrite){.name = names[n], .ndim = t->cols == 1 ? 1 : 2, .shape = {p[k].rows, t->cols},
                                 .data = src->params + t->offset + (size_t)p[k].row0 * t->cols};
            }
        }
    }
    return n;
}

// The tensors into files of at most max_bytes each: model.safetensors, or model-0000i-of-0000n.safetensors and
// model.safetensors.index.json. Returns 0, or 1 with err set.
static int write_shards(const char *dir, const StWrite *w, int n, int dtype, size_t max_bytes, char *err, size_t len) {
    int *file = mallocCheck(sizeof(int) * (size_t)(n ? n : 1)), files = 0;
    size_t in_file = 0, total = 0;
    for (int i = 0; i < n; i++) {
        size_t b = st_write_bytes(&w[i], dtype);
        if (i > 0 && in_file + b > max_bytes) { files++; in_file = 0; }
        file[i] = files;
        in_file += b;
        total += b;
    }
    files++;
    char path[2048];
    int rc = 0;
    for (int f = 0, first = 0; f < files && !rc; f++) {
        int last = first;
        while (last < n && file[last] == f) last++;
        if (files == 1) snprintf(path, sizeof path, "%s/model.safetensors", dir);
        else snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dir, f + 1, files);
        rc = st_write(path, w + first, last - first, dtype, err, len);
        first = last;
    }
    if (!rc && files > 1) {
        Json j = {0};
        json_open_object(&j);
        json_key(&j, "metadata");
        json_open_object(&j);
        json_member_uint(&j, "total_size", total);
        json_close_object(&j);
        json_key(&j, "weight_map");
        json_open_object(&j);
        for (int i = 0; i < n; i++) {
            char shard[64];
            snprintf(shard, sizeof shard, "model-%05d-of-%05d.safetensors", file[i] + 1, files);
            json_member_string(&j, w[i].name, shard);
        }
        json_close_object(&j);
        json_close_object(&j);
        json_end_line(&j);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        rc = json_write(&j, path, err, len);
    }
    free(file);
    return rc;
}

// --out: a new directory, or an empty one (an export never overwrites anything). Returns 0, or 2 with err set.
static int out_dir(const char *dir, char *err, size_t len) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        int used = 0;
        while ((e = readdir(d)))
            used |= strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
        closedir(d);
        if (used) return error_set(err, len, "--out %s: not empty; an export writes a new directory", dir);
        return 0;
    }
    if (mkdir_p(dir)) return error_set(err, len, "--out %s: cannot create: %s", dir, strerror(errno));
    return 0;
}

// The files of the export: the tensors, config.json (model.hf's), the tokenizer. Returns 0, or nonzero with err.
static int export_write(const Config *c, const Run *r, const ExportOptions *o, int arch, char *err, size_t len) {
    const Model *m = c->mode == MODE_CENTRALIZED ? &r->central : &r->party[r->one_process ? o->party : 0].model;
    const Model *e = r->pool.n_tensors ? &r->pool : m;
    int cap = 3 * (m->n_tensors + e->n_tensors);
    StWrite *w = callocCheck((size_t)cap, sizeof *w);
    char (*names)[ST_NAME_LEN] = callocCheck((size_t)cap, ST_NAME_LEN);
    int n = export_tensors(arch, m, e, w, names);
    int rc = out_dir(o->out, err, len);
    if (!rc) rc = write_shards(o->out, w, n, o->bf16 ? ST_BF16 : ST_F32, (size_t)o->max_shard_mb * 1000000, err, len);
    char src[2048], dst[2048];
    snprintf(src, sizeof src, "%s/config.json", c->hf);
    snprintf(dst, sizeof dst, "%s/config.json", o->out);
    if (!rc) rc = copy_file(src, dst, err, len);
    snprintf(src, sizeof src, "%s/generation_config.json", c->hf);
    snprintf(dst, sizeof dst, "%s/generation_config.json", o->out);
    struct stat st;
    if (!rc && stat(src, &st) == 0) rc = copy_file(src, dst, err, len);
    snprintf(dst, sizeof dst, "%s/tokenizer.json", o->out);
    if (!rc && c->tokenizer[0]) rc = copy_file(c->tokenizer, dst, err, len);
    if (!rc)
        fprintf(stderr, "pcmoe: exported party %d's backbone and %d experts a layer (%d tensors, %s) to %s\n", o->party,
                c->n_experts, n, o->bf16 ? "BF16" : "F32", o->out);
    free(w);
    free(names);
    return rc;
}

int export_run(Config *c, Comm *comm, const RunOptions *ro, const ExportOptions *o) {
    char err[2048] = "";
    HfConfig h;
    int rc = 0;
    if (!c->hf[0])
        rc = error_set(err, sizeof err, "export writes a Hugging Face checkpoint: the config needs model.hf (its "
                       "architecture and config.json)");
    else if (hf_config_read(&h, c->hf, err, sizeof err)) rc = 2;
    else if (o->party >= c->n_parties)
        rc = error_set(err, sizeof err, "--party %d: parties.count = %d", o->party, c->n_parties);
    else if (c->mode == MODE_PCMOE && c->n_parties > 1 && !ro->simulate)
        rc = error_set(err, sizeof err, "export of a pcmoe run of %d parties: run it with --simulate (one process "
                       "reads every party's file); over MPI, each owner sending its experts, is not built yet",
                       c->n_parties);
    else if ((c->mode == MODE_LOCAL || c->mode == MODE_FEDAVG) && c->n_parties > 1)
        rc = error_set(err, sizeof err, "export of a %s run of %d parties: not built yet", MODE_NAMES[c->mode],
                       c->n_parties);
    if (rc) fail_usage(2, 0, "%s", err);
    c->device = DEVICE_CPU;
    c->batch_size = 1;
    c->record_dir[0] = '\0';
    run_check_ranks(c, comm, ro->simulate);
    Run run, *r = &run;
    run_open(r, c, comm, ro, 0);
    run_load_checkpoint(r, ro->checkpoint);
    rc = export_write(c, r, o, h.arch, err, sizeof err);
    run_close(r);
    if (rc) fail_usage(2, 0, "%s", err);
    return 0;
}
