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
#include "pool.h"        // pool_owner
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

// The pool's expert tensors as the export writes them, in the order of a model that holds every expert (by
// layer, expert, then gate, up, down): their descriptions (t) and fp32 values (data).
typedef struct {
    int n;
    ParamTensor *t;     // (n)
    const float **data; // (n)
    float *received;    // over MPI, at the exporter: the other owners' values (data points into it)
} ExpertList;

static void experts_alloc(ExpertList *x, const Config *c) {
    int cap = 3 * c->n_layers * c->n_experts;
    x->n = 0;
    x->t = callocCheck((size_t)cap, sizeof *x->t);
    x->data = callocCheck((size_t)cap, sizeof *x->data);
    x->received = NULL;
}

static void experts_free(ExpertList *x) { free(x->t); free(x->data); free(x->received); }

// Every expert tensor of model e (the pool, or a model that holds every expert).
static void experts_of(ExpertList *x, const Model *e) {
    for (int i = 0; i < e->n_tensors; i++)
        if (e->tensors[i].expert >= 0) {
            x->t[x->n] = e->tensors[i];
            x->data[x->n++] = e->host_params + e->tensors[i].offset;
        }
}

// pcmoe over MPI: every owner sends its experts to the exporter, a tensor at a time in the list's order, and the
// exporter keeps its own and receives the others' (x is filled at the exporter only). Nothing else moves: no
// party's backbone leaves it.
static void experts_gather(ExpertList *x, const Config *c, Comm *comm, const Model *m, int exporter) {
    int P = c->n_parties, me = comm->party;
    ModelConfig mc = model_config_from(c);
    size_t foreign = 0, at = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int e = 0; model_layer_is_moe(&mc, l) && e < c->n_experts; e++)
            if (pool_owner(e, P) != exporter) foreign += 3 * (size_t)c->d_model * c->expert_ff;
    if (me == exporter) x->received = mallocCheck(sizeof(float) * (foreign ? foreign : 1));
    for (int l = 0; l < c->n_layers; l++)
        for (int e = 0; model_layer_is_moe(&mc, l) && e < c->n_experts; e++)
            for (TensorKind k = T_EXP_GATE; k <= T_EXP_DOWN; k++) {
                ParamTensor t = model_expert_tensor(&mc, l, e, k);
                int owner = pool_owner(e, P);
                const ParamTensor *mine = owner == me ? model_find_tensor(m, t.name) : NULL;
                if (owner == me && !mine) fail("internal: party %d lacks its expert tensor %s", me, t.name);
                if (owner == me && me != exporter)
                    comm_send_floats(comm, MSG_EXPORT_EXPERTS, exporter, m->host_params + mine->offset, t.numel);
                if (me != exporter) continue;
                x->t[x->n] = t;
                if (owner == me) {
                    x->data[x->n++] = m->host_params + mine->offset;
                    continue;
                }
                comm_recv_floats(comm, MSG_EXPORT_EXPERTS, owner, x->received + at, t.numel);
                x->data[x->n++] = x->received + at;
                at += t.numel;
            }
}

// The Hugging Face tensors of the export: the party's backbone (m) and the experts (x). Fills w (names into
// names); returns their count.
static int export_tensors(int arch, const Model *m, const ExpertList *x, StWrite *w, char (*names)[ST_NAME_LEN]) {
    int n = 0;
    for (int i = 0; i < m->n_tensors + x->n; i++) {
        int backbone = i < m->n_tensors;
        const ParamTensor *t = backbone ? &m->tensors[i] : &x->t[i - m->n_tensors];
        if (backbone && t->expert >= 0) continue;
        const float *data = backbone ? m->host_params + t->offset : x->data[i - m->n_tensors];
        HfPiece p[3];
        int np = hf_pieces(arch, &m->cfg, t, p);
        for (int k = 0; k < np; k++, n++) {
            snprintf(names[n], ST_NAME_LEN, "%.250s", p[k].name);
            w[n] = (StWrite){.name = names[n], .ndim = t->cols == 1 ? 1 : 2, .shape = {p[k].rows, t->cols},
                             .data = data + (size_t)p[k].row0 * t->cols};
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

// The files of the export at the exporter: party o->party's backbone (m) and the experts (x), config.json
// (model.hf's), the tokenizer. Returns 0, or nonzero with err set.
static int export_write(const Config *c, const Model *m, const ExpertList *x, const ExportOptions *o, int arch,
                        char *err, size_t len) {
    int cap = 3 * (m->n_tensors + x->n);
    StWrite *w = callocCheck((size_t)cap, sizeof *w);
    char (*names)[ST_NAME_LEN] = callocCheck((size_t)cap, ST_NAME_LEN);
    int n = export_tensors(arch, m, x, w, names);
    int rc = write_shards(o->out, w, n, o->bf16 ? ST_BF16 : ST_F32, (size_t)o->max_shard_mb * 1000000, err, len);
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

// The command line's checks, on every rank. Returns 0, or 2 with err set.
static int export_check(const Config *c, const ExportOptions *o, HfConfig *h, char *err, size_t len) {
    if (!c->hf[0])
        return error_set(err, len, "export writes a Hugging Face checkpoint: the config needs model.hf (its "
                         "architecture and config.json)");
    if (hf_config_read(h, c->hf, err, len)) return 2;
    if (o->party >= c->n_parties) return error_set(err, len, "--party %d: parties.count = %d", o->party, c->n_parties);
    return 0;
}

int export_run(Config *c, Comm *comm, const RunOptions *ro, const ExportOptions *o) {
    char err[2048] = "";
    HfConfig h;
    if (export_check(c, o, &h, err, sizeof err)) fail_usage(2, 0, "%s", err);
    c->device = DEVICE_CPU;
    c->batch_size = 1;
    c->record_dir[0] = '\0';
    run_check_ranks(c, comm, ro->simulate);
    // over MPI every party runs the export (its consent to send its experts), and all name the same exporter
    int hi = comm_max_int(comm, o->party), lo = -comm_max_int(comm, -o->party);
    if (hi != lo)
        fail_usage(2, 0, "--party differs between the parties' exports (%d and %d): every "
                   "party runs the same export, naming the one party that writes it", lo, hi);
    Run run, *r = &run;
    run_open(r, c, comm, ro, 0);
    int writer = r->one_process || comm->party == o->party;
    int rc = writer ? out_dir(o->out, err, sizeof err) : 0;
    comm_stop_if_failed(comm, rc, err);
    run_load_checkpoint(r, ro->checkpoint);
    const Model *m = c->mode == MODE_CENTRALIZED ? &r->central : &r->party[r->one_process ? o->party : 0].model;
    ExpertList x;
    experts_alloc(&x, c);
    if (r->exchanged) experts_gather(&x, c, comm, m, o->party);
    else experts_of(&x, r->pool.n_tensors ? &r->pool : m);
    if (writer) rc = export_write(c, m, &x, o, h.arch, err, sizeof err);
    experts_free(&x);
    comm_stop_if_failed(comm, rc, err);
    if (ro->audit_path) comm_stop_if_failed(comm, comm_write_audit(comm, ro->audit_path, err, sizeof err), err);
    run_close(r);
    return 0;
}
