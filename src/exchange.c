// exchange.c: routed-activation exchange between parties (see exchange.h for the protocol).
#include "exchange.h"

#include <math.h>   // NAN
#include <stdio.h>  // snprintf
#include <stdlib.h> // free
#include <string.h> // memset, strcmp

#include "backend.h" // Backend
#include "comm.h"    // Comm, comm_alltoall_ints, comm_alltoallv_rows, MSG_*
#include "flops.h"   // flops_ffn: the served experts' FLOPs, counted here
#include "pool.h"    // pool_owner, pool_packing_order
#include "privacy.h" // privacy_clip_noise, privacy_clip_backward, privacy_first_nonfinite
#include "record.h"  // record_tap: the study's one tap
#include "util.h"    // mallocCheck, fail

void exchange_create(Exchange *ex, const struct Backend *be, int direct, Comm *comm, int m, int d, int f, int n_layers,
                     int max_rows, int check_finite, int recompute) {
    memset(ex, 0, sizeof *ex);
    ex->be = be;
    ex->recompute = recompute;
    ex->staged = be->device && !direct;
    ex->comm = comm;
    ex->N = comm->n_parties;
    ex->R = comm->ranks_per_party;
    ex->P = ex->N * ex->R;
    ex->peer = comm->rank;
    ex->m = m; ex->d = d; ex->f = f; ex->n_layers = n_layers;
    ex->max_rows = max_rows;
    ex->check_finite = check_finite;
    int P = ex->P;
    for (int s = 0; s < P; s++) {
        int n = 0;
        while (pool_rank_expert(s, n, ex->N, ex->R) < m) n++;
        ex->max_local = n > ex->max_local ? n : ex->max_local;
    }
    ex->local = mallocCheck(sizeof(int) * ex->max_local);
    for (int j = 0, e; (e = pool_rank_expert(ex->peer, j, ex->N, ex->R)) < m; j++) ex->local[ex->n_local++] = e;
    ex->order = mallocCheck(sizeof(int) * m);
    pool_packing_order(ex->order, m, ex->N, ex->R);
    size_t pm = (size_t)P * ex->max_local;
    ex->send_counts = callocCheck(2 * pm, sizeof(int));
    ex->recv_counts = callocCheck(2 * pm, sizeof(int));
    ex->within = callocCheck(pm, sizeof(int));
    ex->send_rows = callocCheck(5 * (size_t)P, sizeof(int));
    ex->send_offs = ex->send_rows + P;
    ex->recv_rows = ex->send_rows + 2 * P;
    ex->recv_offs = ex->send_rows + 3 * P;
    ex->stage_offs = ex->send_rows + 4 * P;
    ex->layers = callocCheck(n_layers, sizeof(ServeLayer));
    for (int l = 0; l < n_layers; l++) ex->layers[l].from = callocCheck(pm, sizeof(int));
    ex->bytes = sizeof(int) * (5 * pm + 5 * P + (size_t)n_layers * pm);
    ex->peak = ex->bytes;
}

size_t exchange_plan_bytes(int P, int m, int d, int f, int n_layers, int n_moe, size_t served, size_t in_transit,
                           size_t going_out, int staged, int recompute) {
    size_t pm = (size_t)P * ((m + P - 1) / P), pass = served < EXCHANGE_PASS_ROWS ? served : EXCHANGE_PASS_ROWS;
    size_t ints = 5 * pm + 5 * (size_t)P + (size_t)n_layers * pm;          // exchange_create's counts
    size_t floats = in_transit * d + (staged ? going_out * d : 0)          // ensure_work, ensure_stage
                    + n_moe * served * (d + (recompute ? 0 : 3 * (size_t)f)) // arena_place, every MoE layer
                    + (recompute ? pass * (d + 6 * (size_t)f) : served * d); // ensure_expert, ensure_outputs
    return sizeof(int) * ints + sizeof(float) * floats;
}

void exchange_set_fault(Exchange *ex, const char *kind, int party) {
    if (!strcmp(kind, "counts")) ex->fault = 1;
    else if (!strcmp(kind, "foreign")) ex->fault = 2;
    else if (!strcmp(kind, "nan")) ex->fault = 3;
    else fail("--inject-fault %s: unknown fault (counts, foreign, nan, nan-grad)", kind);
    ex->fault_party = party;
}

void exchange_free(Exchange *ex) {
    void (*release)(void *) = ex->be->release;
    for (int l = 0; l < ex->n_layers; l++) {
        ServeLayer *sl = &ex->layers[l];
        free(sl->from);
    }
    free(ex->layers);
    free(ex->local); free(ex->order); free(ex->send_counts); free(ex->recv_counts); free(ex->within);
    free(ex->send_rows);
    release(ex->inputs);
    for (int i = 0; i < 3; i++) release(ex->hidden[i]);
    if (ex->work) (ex->staged ? ex->be->release_pinned : release)(ex->work);
    if (ex->stage) ex->be->release_pinned(ex->stage);
    if (ex->h) { release(ex->h); release(ex->u); release(ex->a); }
    release(ex->yp); release(ex->dh); release(ex->du); release(ex->da);
    release(ex->outputs);
    memset(ex, 0, sizeof *ex);
}

// Kinds of exchange buffer (see exchange.h): where each is allocated.
typedef enum { BUF_BACKEND, BUF_TRANSIT, BUF_PINNED } BufKind;

// Replaces *p by a zeroed buffer of `rows` rows of `width` floats, keeping the byte count of exchange
// buffers. The contents are not kept: every caller fills the buffer anew.
static void grow(Exchange *ex, float **p, size_t old_rows, size_t rows, int width, BufKind kind) {
    int pinned = kind == BUF_PINNED || (kind == BUF_TRANSIT && ex->staged);
    if (*p) (pinned ? ex->be->release_pinned : ex->be->release)(*p);
    *p = (pinned ? ex->be->alloc_pinned : ex->be->alloc_device)(sizeof(float) * rows * width);
    ex->bytes += sizeof(float) * (rows - old_rows) * width;
    if (ex->bytes > ex->peak) ex->peak = ex->bytes;
}

// The rows in transit to and from the other parties, shared by all layers.
static void ensure_work(Exchange *ex, size_t rows) {
    if (rows <= ex->work_cap) return;
    grow(ex, &ex->work, ex->work_cap, rows, ex->d, BUF_TRANSIT);
    ex->work_cap = rows;
}

static void ensure_stage(Exchange *ex, size_t rows) {
    if (!ex->staged || rows <= ex->stage_cap) return;
    grow(ex, &ex->stage, ex->stage_cap, rows, ex->d, BUF_PINNED);
    ex->stage_cap = rows;
}

// What layer `layer` keeps from its forward to its backward (its rows' inputs, and without recompute their
// hidden activations) goes in the arenas after the layers before it in this step's forward. The arenas
// grow when a step needs more than any before it, keeping the earlier layers' rows.
static void arena_place(Exchange *ex, int layer) {
    ServeLayer *sl = &ex->layers[layer];
    sl->at = 0;
    for (int l = 0; l < layer; l++) sl->at += (size_t)ex->layers[l].rows; // (0 for dense layers)
    size_t need = sl->at + (size_t)sl->rows;
    if (need <= ex->arena_cap) return;
    size_t d = (size_t)ex->d, f = (size_t)ex->f, old = ex->arena_cap;
    ex->inputs = ex->be->resize(ex->inputs, sizeof(float) * sl->at * d, sizeof(float) * need * d);
    ex->bytes += sizeof(float) * (need - old) * d;
    if (!ex->recompute)
        for (int i = 0; i < 3; i++) {
            ex->hidden[i] = ex->be->resize(ex->hidden[i], sizeof(float) * sl->at * f, sizeof(float) * need * f);
            ex->bytes += sizeof(float) * (need - old) * f;
        }
    if (ex->bytes > ex->peak) ex->peak = ex->bytes;
    ex->arena_cap = need;
}

// Layer sl's inputs in the arena.
static float *layer_inputs(const Exchange *ex, const ServeLayer *sl) { return ex->inputs + sl->at * ex->d; }

// With recompute, one pack's buffers (passes of experts' rows, at most EXCHANGE_PASS_ROWS rows in all): their
// hidden activations, their outputs or their gradients, the backward's hidden-width gradients.
static void ensure_expert(Exchange *ex, size_t rows) {
    if (rows <= ex->expert_cap) return;
    grow(ex, &ex->h, ex->expert_cap, rows, ex->f, BUF_BACKEND);
    grow(ex, &ex->u, ex->expert_cap, rows, ex->f, BUF_BACKEND);
    grow(ex, &ex->a, ex->expert_cap, rows, ex->f, BUF_BACKEND);
    grow(ex, &ex->yp, ex->expert_cap, rows, ex->d, BUF_BACKEND);
    grow(ex, &ex->dh, ex->expert_cap, rows, ex->f, BUF_BACKEND);
    grow(ex, &ex->du, ex->expert_cap, rows, ex->f, BUF_BACKEND);
    grow(ex, &ex->da, ex->expert_cap, rows, ex->f, BUF_BACKEND);
    ex->expert_cap = rows;
}

// Without recompute, a layer's outputs (or gradients) in the serve layout: rows of them
static void ensure_outputs(Exchange *ex, size_t rows) {
    if (rows <= ex->outputs_cap) return;
    grow(ex, &ex->outputs, ex->outputs_cap, rows, ex->d, BUF_BACKEND);
    ex->outputs_cap = rows;
}

// Sender layout from this party's routing (a), and owner layout from the counts in sl->from: how many
// rows go to / come from each party and where their blocks start (in the packed rows, in work, and in
// stage, where the blocks bound for other parties sit back to back).
static void layouts(Exchange *ex, const ServeLayer *sl, const MoeActs *a) {
    int P = ex->P, K = ex->max_local;
    for (int p = 0; p < P; p++) {
        ex->send_rows[p] = 0;
        ex->send_offs[p] = a ? a->offsets[pool_rank_expert(p, 0, ex->N, ex->R)] : 0; // p's first expert opens
        for (int j = 0, e; a && p != ex->peer && (e = pool_rank_expert(p, j, ex->N, ex->R)) < ex->m; j++) // its block
            ex->send_rows[p] += a->counts[e];
    }
    int off = 0;
    for (int q = 0; q < P; q++) {
        int rows = 0;
        for (int j = 0; j < ex->n_local; j++) { ex->within[q * K + j] = rows; rows += sl->from[q * K + j]; }
        ex->recv_rows[q] = q == ex->peer ? 0 : rows;
        ex->recv_offs[q] = off;
        off += ex->recv_rows[q];
    }
    for (int p = 0, at = 0; p < P; p++) { ex->stage_offs[p] = at; at += ex->send_rows[p]; }
}

// Moves the rows [r0, r0 + n) of the serve layout between `serve` (which holds row r0 first) and their
// homes: rows from party q in ex->work (block q), this party's own rows in `own` at their packed
// positions. to_serve: homes -> serve, else serve -> homes.
static void serve_copy(Exchange *ex, const ServeLayer *sl, size_t r0, size_t n, float *serve, float *own,
                       const MoeActs *a, int to_serve) {
    int P = ex->P, K = ex->max_local, d = ex->d;
    size_t seg = 0; // the serve row where the segment (expert j, party q) starts
    for (int j = 0; j < ex->n_local; j++)
        for (int q = 0; q < P; q++) {
            size_t len = (size_t)sl->from[q * K + j], lo = seg > r0 ? seg : r0, hi = seg + len;
            if (hi > r0 + n) hi = r0 + n;
            if (lo < hi) {
                float *home = q == ex->peer
                                      ? own + ((size_t)a->offsets[ex->local[j]] + lo - seg) * d
                                      : ex->work + ((size_t)ex->recv_offs[q] + ex->within[q * K + j] + lo - seg) * d;
                float *at = serve + (lo - r0) * d;
                if (to_serve) ex->be->copy(at, home, sizeof(float) * (hi - lo) * d);
                else ex->be->copy(home, at, sizeof(float) * (hi - lo) * d);
            }
            seg += len;
        }
}

// Rows local expert j serves in layer sl: its own party's and every other party's.
static int served_rows(const Exchange *ex, const ServeLayer *sl, int j) {
    int n = 0;
    for (int q = 0; q < ex->P; q++) n += sl->from[q * ex->max_local + j];
    return n;
}

// Without recompute: pass k of every owned expert with rows in layer sl, as groups (at most n_local; returns
// their number): expert j's served rows [k P, (k + 1) P) (P = EXCHANGE_PASS_ROWS), in the layout of sl's inputs
// x, of ex->outputs and of the hidden arenas. The passes are those of recompute's, so the sums (the weight
// gradients, pass after pass) are the same; one group per expert in a call, so no two write one gradient.
// With dw, the backward's: the outputs' gradients in ex->outputs, replaced by the inputs', and the hidden
// gradients over the activations.
static int served_groups(const Exchange *ex, const ServeLayer *sl, int k, const float *x, ExpertSet w,
                         const ExpertSet *dw, FfnGroup *g) {
    int n = 0;
    size_t d = (size_t)ex->d, f = (size_t)ex->f, r0 = 0;
    for (int j = 0; j < ex->n_local; j++) {
        int e = ex->local[j], rows = served_rows(ex, sl, j) - k * EXCHANGE_PASS_ROWS;
        size_t first = r0 + (size_t)k * EXCHANGE_PASS_ROWS, at = (sl->at + first) * f;
        r0 += (size_t)served_rows(ex, sl, j);
        if (rows <= 0) continue;
        FfnGroup q = {.rows = rows < EXCHANGE_PASS_ROWS ? rows : EXCHANGE_PASS_ROWS, .wg = w.gate[e], .wu = w.up[e],
                      .wd = w.down[e], .x = x + first * d, .y = ex->outputs + first * d, .h = ex->hidden[0] + at,
                      .u = ex->hidden[1] + at, .a = ex->hidden[2] + at};
        if (dw) {
            q.dy = q.dx = q.y;
            q.dwg = dw->gate[e]; q.dwu = dw->up[e]; q.dwd = dw->down[e];
            q.dh = q.h; q.du = q.u; q.da = q.a;
        }
        g[n++] = q;
    }
    return n;
}

// Without recompute: every owned expert on all its served rows, forward (dw NULL) or backward, pass k of
// every expert in one call (ffn_*_groups). Returns the FLOPs.
static double serve_grouped(Exchange *ex, const ServeLayer *sl, const float *x, ExpertSet w, const ExpertSet *dw) {
    FfnGroup *g = mallocCheck(sizeof(FfnGroup) * (size_t)(ex->n_local ? ex->n_local : 1));
    double flops = 0.0;
    for (int k = 0, n; (n = served_groups(ex, sl, k, x, w, dw, g)) > 0; k++) {
        if (dw) ex->be->ffn_backward_groups(g, n, ex->d, ex->f);
        else ex->be->ffn_forward_groups(g, n, ex->d, ex->f);
        for (int i = 0; i < n; i++) flops += (dw ? 2.0 : 1.0) * flops_ffn(g[i].rows, ex->d, ex->f);
    }
    free(g);
    return flops;
}

// Peer q as the messages name it: "party 2", or with several ranks per party "party 2 (rank 5)". buf: 48.
static const char *peer_name(const Exchange *ex, int q, char *buf) {
    if (ex->R == 1) snprintf(buf, 48, "party %d", q);
    else snprintf(buf, 48, "party %d (rank %d)", q / ex->R, q);
    return buf;
}

// Whether rows to or from peer q cross a party line (the DP defence acts on those only).
static int crosses(const Exchange *ex, int q) { return q / ex->R != ex->peer / ex->R; }

// Everything read from a peer is checked before use; a violation names the peer and stops the job.
static void check_counts(Exchange *ex, ServeLayer *sl) {
    int P = ex->P, K = ex->max_local;
    for (int q = 0; q < P; q++) {
        if (q == ex->peer) continue;
        const int *ids = ex->recv_counts + (size_t)q * 2 * K, *n = ids + K;
        long total = 0;
        char who[48], me[48];
        for (int j = 0; j < K; j++) {
            int want = j < ex->n_local ? ex->local[j] : -1;
            if (ids[j] != want)
                fail("%s sent rows for expert %d, which is not this party's (%s expected expert %d in slot "
                     "%d); aborting",
                     peer_name(ex, q, who), ids[j], peer_name(ex, ex->peer, me), want, j);
            if (n[j] < 0 || n[j] > ex->max_rows || (want < 0 && n[j] != 0))
                fail("%s announced %d rows for expert %d (allowed: 0 to %d); aborting", peer_name(ex, q, who), n[j],
                     ids[j], want < 0 ? 0 : ex->max_rows);
            total += n[j];
            sl->from[q * K + j] = n[j];
        }
        if (total > ex->max_rows)
            fail("%s announced %ld rows in all (at most %d); aborting", peer_name(ex, q, who), total, ex->max_rows);
    }
}

// With privacy.check_finite: the rows received from each peer (rows[q] at row offs[q] of buf) are finite.
// Staged, buf is host memory that MPI wrote, scanned here; else it is the backend's (device memory on cuda,
// scanned there: one wait).
static void check_rows(const Exchange *ex, const float *buf, const int *rows, const int *offs, MsgKind kind) {
    if (!ex->check_finite || !buf) return;
    long *first = mallocCheck(sizeof(long) * ex->P);
    float *value = mallocCheck(sizeof(float) * ex->P);
    if (ex->staged) privacy_first_nonfinite(first, value, buf, rows, offs, ex->P, ex->d);
    else ex->be->first_nonfinite(first, value, buf, rows, offs, ex->P, ex->d);
    char who[48];
    for (int q = 0; q < ex->P; q++)
        if (first[q] >= 0)
            fail("%s sent a non-finite value (%g) in %s, row %ld; aborting", peer_name(ex, q, who), value[q],
                 MSG_KIND_NAMES[kind], first[q] / ex->d);
    free(first);
    free(value);
}

// Copies the blocks of packed rows bound for other parties between `own` and stage (to_stage: own ->
// stage). Staged exchanges only.
static void stage_copy(Exchange *ex, float *own, int to_stage) {
    size_t d = (size_t)ex->d;
    for (int p = 0; p < ex->P; p++) {
        size_t bytes = sizeof(float) * ex->send_rows[p] * d;
        float *home = own + (size_t)ex->send_offs[p] * d, *staged = ex->stage + (size_t)ex->stage_offs[p] * d;
        if (bytes) ex->be->copy(to_stage ? staged : home, to_stage ? home : staged, bytes);
    }
}

// Rows travel from the senders' packed buffers (`own`: this party's) to their owners: through MPI into
// ex->work, one block per sending party (checked). A party's rows for its own experts stay where they are.
static void to_owners(Exchange *ex, MsgKind kind, float *own) {
    if (ex->staged && own) stage_copy(ex, own, 1);
    ex->be->sync(); // MPI reads what the device wrote
    if (ex->staged)
        comm_alltoallv_rows(ex->comm, kind, ex->stage, ex->send_rows, ex->stage_offs, ex->work, ex->recv_rows,
                            ex->recv_offs, ex->d);
    else {
        ex->be->mpi_access(1);
        comm_alltoallv_rows(ex->comm, kind, own, ex->send_rows, ex->send_offs, ex->work, ex->recv_rows, ex->recv_offs,
                            ex->d);
        ex->be->mpi_access(0);
    }
    check_rows(ex, ex->work, ex->recv_rows, ex->recv_offs, kind);
}

// And back: the blocks in ex->work return to their senders' packed positions in `own` (checked).
static void to_senders(Exchange *ex, MsgKind kind, float *own) {
    ex->be->sync();
    if (ex->staged) {
        comm_alltoallv_rows(ex->comm, kind, ex->work, ex->recv_rows, ex->recv_offs, ex->stage, ex->send_rows,
                            ex->stage_offs, ex->d);
        check_rows(ex, ex->stage, ex->send_rows, ex->stage_offs, kind);
        if (own) stage_copy(ex, own, 0);
    } else {
        ex->be->mpi_access(1);
        comm_alltoallv_rows(ex->comm, kind, ex->work, ex->recv_rows, ex->recv_offs, own, ex->send_rows, ex->send_offs,
                            ex->d);
        ex->be->mpi_access(0);
        check_rows(ex, own, ex->send_rows, ex->send_offs, kind);
    }
}

// With recompute: the group of the pass of expert e on serve rows [r0, r0 + rows) of sl's inputs x, at row `at`
// of the pass scratch (ex->yp, ex->h, ...). With dw, the backward's: its outputs' gradients in yp, replaced by
// the inputs'.
static FfnGroup pass_group(const Exchange *ex, const float *x, ExpertSet w, const ExpertSet *dw, int e, size_t r0,
                           int rows, size_t at) {
    size_t d = (size_t)ex->d, f = (size_t)ex->f;
    FfnGroup g = {.rows = rows, .wg = w.gate[e], .wu = w.up[e], .wd = w.down[e], .x = x + r0 * d,
                  .y = ex->yp + at * d, .h = ex->h + at * f, .u = ex->u + at * f, .a = ex->a + at * f};
    if (dw) {
        g.dy = g.dx = g.y;
        g.dwg = dw->gate[e]; g.dwu = dw->up[e]; g.dwd = dw->down[e];
        g.dh = ex->dh + at * f; g.du = ex->du + at * f; g.da = ex->da + at * f;
    }
    return g;
}

// With recompute: a pack of n passes (groups g, on serve rows [r0, r0 + rows) and scratch rows [0, rows)) in one
// grouped call. Forward (dw NULL): the outputs go from the scratch to `to` (the rows' homes). Backward: the
// hidden activations again (the forward's calls on the kept inputs, so the same values; not counted as FLOPs),
// the outputs' gradients gathered from `from`, replaced by the inputs', which go to `to`. Returns the FLOPs.
static double serve_pack(Exchange *ex, const ServeLayer *sl, const FfnGroup *g, int n, size_t r0, size_t rows,
                         int backward, const MoeActs *a, float *from, float *to) {
    double flops = 0.0;
    ex->be->ffn_forward_groups(g, n, ex->d, ex->f);
    if (backward) {
        serve_copy(ex, sl, r0, rows, ex->yp, from, a, 1);
        ex->be->ffn_backward_groups(g, n, ex->d, ex->f);
    }
    serve_copy(ex, sl, r0, rows, ex->yp, to, a, 0);
    for (int i = 0; i < n; i++) flops += (backward ? 2.0 : 1.0) * flops_ffn(g[i].rows, ex->d, ex->f);
    return flops;
}

// With recompute: each owned expert on its served rows in passes of at most EXCHANGE_PASS_ROWS rows (those of
// served_groups, so the weight gradients' sums are the same), consecutive passes packed while they fit the
// EXCHANGE_PASS_ROWS rows of the pass scratch, a pack in one grouped call (serve_pack). Only an expert's last
// pass is short, so no pack holds two passes of one expert. Returns the FLOPs.
static double serve_passes(Exchange *ex, const ServeLayer *sl, const float *x, ExpertSet w, const ExpertSet *dw,
                           const MoeActs *a, float *from, float *to) {
    FfnGroup *g = mallocCheck(sizeof(FfnGroup) * (size_t)(ex->n_local ? ex->n_local : 1)); // (a pass an expert)
    size_t r0 = 0, pack_r0 = 0, used = 0;                            // serve rows; the pack's first, its rows
    int n = 0;
    double flops = 0.0;
    for (int j = 0; j < ex->n_local; j++)
        for (int left = served_rows(ex, sl, j); left > 0;) {
            int rows = left < EXCHANGE_PASS_ROWS ? left : EXCHANGE_PASS_ROWS;
            if (used + (size_t)rows > EXCHANGE_PASS_ROWS) {
                flops += serve_pack(ex, sl, g, n, pack_r0, used, dw != NULL, a, from, to);
                n = 0, used = 0, pack_r0 = r0;
            }
            g[n++] = pass_group(ex, x, w, dw, ex->local[j], r0, rows, used);
            used += (size_t)rows;
            r0 += (size_t)rows;
            left -= rows;
        }
    if (n) flops += serve_pack(ex, sl, g, n, pack_r0, used, dw != NULL, a, from, to);
    free(g);
    return flops;
}

// The study features (the DP defence, the recorder, the fault hook) read and write rows on the host. view_get:
// `bytes` of p as host memory, once the work queued before has run: p itself, or when dev (p is device memory)
// a copy. view_put, after: a copy goes back to p (bytes of it; 0: it was only read) and is freed.
static void *view_get(const Exchange *ex, void *p, size_t bytes, int dev) {
    ex->be->sync();
    if (!dev || !p) return p;
    void *h = mallocCheck(bytes ? bytes : 1);
    ex->be->copy(h, p, bytes);
    ex->be->sync();
    return h;
}

static void view_put(const Exchange *ex, void *p, void *h, size_t bytes, int dev) {
    if (!dev || !p) return;
    if (bytes) {
        ex->be->copy(p, h, bytes);
        ex->be->sync();
    }
    free(h);
}

// Before this party's rows leave (forward): the DP defence clips them and adds noise (privacy.h), the recorder
// takes the byte each row stands for, and the fault hook (nan_to: a party, or -1) spoils the first row for it.
static void study_rows_out(Exchange *ex, int layer, MoeActs *a, int nan_to) {
    int defended = ex->noise_std > 0.0f || ex->clip_norm > 0.0f, d = ex->d, dev = ex->be->device;
    int spoil = nan_to >= 0 && ex->send_rows[nan_to] > 0, write = defended || spoil;
    if (!a || !(write || ex->tap)) return;
    size_t Nk = (size_t)a->N * a->k, bytes = sizeof(float) * Nk * d;
    float *xe = write ? view_get(ex, a->xe, bytes, dev) : NULL;
    for (int p = 0; defended && p < ex->P; p++) {
        if (!crosses(ex, p)) continue;
        float *x = xe + (size_t)ex->send_offs[p] * d;
        if (ex->clip_norm > 0.0f)
            privacy_clip_noise(x, ex->send_rows[p], d, ex->clip_norm, ex->noise_multiplier, &ex->noise);
        else
            for (size_t i = 0; i < (size_t)ex->send_rows[p] * d; i++) x[i] += ex->noise_std * rng_normal(&ex->noise);
    }
    if (spoil) xe[(size_t)ex->send_offs[nan_to] * d] = NAN;
    if (write) view_put(ex, a->xe, xe, bytes, dev);
    if (!ex->tap) return;
    int *row_choice = view_get(ex, a->row_choice, sizeof(int) * Nk, dev);
    record_tap(ex->tap, TAP_ROWS_SENT, ex, layer, row_choice, a->k, NULL);
    view_put(ex, a->row_choice, row_choice, 0, dev);
}

// Before the output-gradient rows leave (backward): the defence clips them and adds noise, the recorder takes
// each row's target byte.
static void study_grads_out(Exchange *ex, int layer, const MoeActs *a, MoeScratch *s) {
    int d = ex->d, dev = ex->be->device;
    if (!s || !(ex->clip_norm > 0.0f || ex->tap)) return;
    size_t Nk = (size_t)a->N * a->k, bytes = sizeof(float) * Nk * d;
    if (ex->clip_norm > 0.0f) {
        float *dye = view_get(ex, s->dye, bytes, dev);
        for (int p = 0; p < ex->P; p++)
            if (crosses(ex, p))
                privacy_clip_noise(dye + (size_t)ex->send_offs[p] * d, ex->send_rows[p], d, ex->grad_clip_norm,
                                   ex->noise_multiplier, &ex->noise);
        view_put(ex, s->dye, dye, bytes, dev);
    }
    if (!ex->tap) return;
    int *row_choice = view_get(ex, a->row_choice, sizeof(int) * Nk, dev);
    record_tap(ex->tap, TAP_GRADS_SENT, ex, layer, row_choice, a->k, NULL);
    view_put(ex, a->row_choice, row_choice, 0, dev);
}

// The recorder at an owner: the rows that arrived in ex->work (host memory when staged).
static void study_rows_in(Exchange *ex, TapPoint at, int layer) {
    if (!ex->tap) return;
    int dev = ex->be->device && !ex->staged;
    size_t rows = 0;
    for (int q = 0; q < ex->P; q++) rows += (size_t)ex->recv_rows[q];
    float *work = view_get(ex, ex->work, sizeof(float) * rows * ex->d, dev);
    record_tap(ex->tap, at, ex, layer, NULL, 0, work);
    view_put(ex, ex->work, work, 0, dev);
}

void exchange_forward(Exchange *ex, int layer, MoeActs *a, ExpertSet w, double *flops) {
    int P = ex->P, K = ex->max_local;
    ServeLayer *sl = &ex->layers[layer];
    ex->comm->layer = layer; // (what the messages sealed now belong to)
    // 1. routing counts: each owner learns how many rows of each of its experts will come from each party,
    //    as (expert id, count) pairs it checks against the experts it owns
    for (int p = 0; p < P; p++) {
        int *ids = ex->send_counts + (size_t)p * 2 * K, *n = ids + K;
        for (int j = 0; j < K; j++) {
            int e = pool_rank_expert(p, j, ex->N, ex->R);
            ids[j] = e < ex->m ? e : -1;
            n[j] = a && p != ex->peer && e < ex->m ? a->counts[e] : 0;
        }
    }
    int bad = ex->fault && ex->peer == ex->fault_party ? (ex->peer + 1) % P : -1; // test hook
    if (bad >= 0 && ex->fault == 1) ex->send_counts[(size_t)bad * 2 * K + K] = ex->max_rows + 1;
    if (bad >= 0 && ex->fault == 2) // the first expert of the rank after bad: not bad's
        ex->send_counts[(size_t)bad * 2 * K] = pool_rank_expert((bad + 1) % P, 0, ex->N, ex->R);
    comm_alltoall_ints(ex->comm, MSG_ROUTING_COUNTS, ex->send_counts, ex->recv_counts, 2 * K);
    check_counts(ex, sl);
    for (int j = 0; j < ex->n_local; j++) sl->from[ex->peer * K + j] = a ? a->counts[ex->local[j]] : 0;
    layouts(ex, sl, a);
    size_t in_transit = 0, going_out = 0;
    sl->rows = 0;
    for (int q = 0; q < P; q++) {
        in_transit += ex->recv_rows[q];
        going_out += ex->send_rows[q];
        for (int j = 0; j < ex->n_local; j++) sl->rows += sl->from[q * K + j];
        if (crosses(ex, q)) ex->comm->rows_routed[q / ex->R] += ex->send_rows[q];
    }
    ensure_work(ex, in_transit);
    ensure_stage(ex, going_out);
    arena_place(ex, layer);
    if (ex->recompute) ensure_expert(ex, (size_t)(sl->rows < EXCHANGE_PASS_ROWS ? sl->rows : EXCHANGE_PASS_ROWS));
    else ensure_outputs(ex, (size_t)sl->rows);
    study_rows_out(ex, layer, a, ex->fault == 3 ? bad : -1);
    // 2. rows to their owners, which keep them in the serve layout; own rows are copied, never sent
    to_owners(ex, MSG_EXPERT_ROWS, a ? a->xe : NULL);
    study_rows_in(ex, TAP_ROWS_RECEIVED, layer);
    float *x = layer_inputs(ex, sl);
    serve_copy(ex, sl, 0, sl->rows, x, a ? a->xe : NULL, a, 1);
    // 3. each owned expert runs on all its rows, its outputs going where their rows came from: all experts at
    //    once (one grouped call), or with recompute in passes of at most EXCHANGE_PASS_ROWS rows (a pass's
    //    hidden activations are scratch)
    if (ex->recompute) *flops += serve_passes(ex, sl, x, w, NULL, a, NULL, a ? a->ye : NULL);
    else {
        *flops += serve_grouped(ex, sl, x, w, NULL);
        serve_copy(ex, sl, 0, (size_t)sl->rows, ex->outputs, a ? a->ye : NULL, a, 0);
    }
    // 4. outputs back to the senders
    to_senders(ex, MSG_EXPERT_OUTPUTS, a ? a->ye : NULL);
}

// The defence's backward: through the clipping of the rows this party sent, to its rows before it (s->dxe).
static void clip_backward(Exchange *ex, const MoeActs *a, MoeScratch *s) {
    int d = ex->d, dev = ex->be->device;
    size_t Nk = (size_t)a->N * a->k;
    float *dxe = view_get(ex, s->dxe, sizeof(float) * Nk * d, dev);
    const float *inp = view_get(ex, (float *)a->inp, sizeof(float) * (size_t)a->N * d, dev);
    const int *row_choice = view_get(ex, a->row_choice, sizeof(int) * Nk, dev);
    for (int p = 0; p < ex->P; p++)
        for (int i = 0; crosses(ex, p) && i < ex->send_rows[p]; i++) {
            int r = ex->send_offs[p] + i;
            privacy_clip_backward(dxe + (size_t)r * d, inp + (size_t)(row_choice[r] / a->k) * d, d, ex->clip_norm);
        }
    view_put(ex, s->dxe, dxe, sizeof(float) * Nk * d, dev);
    view_put(ex, (float *)a->inp, (float *)inp, 0, dev);
    view_put(ex, a->row_choice, (int *)row_choice, 0, dev);
}

void exchange_backward(Exchange *ex, int layer, const MoeActs *a, MoeScratch *s, ExpertSet w, ExpertSet dw,
                       double *flops) {
    ServeLayer *sl = &ex->layers[layer];
    ex->comm->layer = layer;
    float *x = layer_inputs(ex, sl);
    layouts(ex, sl, a);
    study_grads_out(ex, layer, a, s);
    // 1. gradients w.r.t. the outputs go to the owners
    to_owners(ex, MSG_OUTPUT_GRADS, s ? s->dye : NULL);
    study_rows_in(ex, TAP_GRADS_RECEIVED, layer);
    // 2. owners accumulate their experts' weight gradients and compute input gradients, pass by pass as in the
    //    forward: all experts' outputs' gradients gathered into the serve layout, replaced there by the inputs',
    //    then back where the rows came from; or with recompute each pass alone, its hidden activations first
    //    (from the kept inputs: the same calls as the forward's, so the same values; not counted as FLOPs)
    if (ex->recompute) *flops += serve_passes(ex, sl, x, w, &dw, a, s ? s->dye : NULL, s ? s->dxe : NULL);
    else {
        serve_copy(ex, sl, 0, (size_t)sl->rows, ex->outputs, s ? s->dye : NULL, a, 1);
        *flops += serve_grouped(ex, sl, x, w, &dw);
        serve_copy(ex, sl, 0, (size_t)sl->rows, ex->outputs, s ? s->dxe : NULL, a, 0);
    }
    // 3. input gradients back to the senders
    to_senders(ex, MSG_INPUT_GRADS, s ? s->dxe : NULL);
    if (s && ex->clip_norm > 0.0f) clip_backward(ex, a, s);
}

int exchange_expert_rows(const Exchange *ex, int layer, int e) {
    if (pool_owner_rank(e, ex->N, ex->R) != ex->peer) return 0;
    return served_rows(ex, &ex->layers[layer], (e / ex->N - ex->peer % ex->R) / ex->R);
}

void exchange_party_route(Exchange *ex, MoeActs *a) {
    int m = a->m;
    double *v = mallocCheck(sizeof(double) * 2 * (size_t)m); // counts, then probability sums
    for (int e = 0; e < m; e++) { v[e] = a->counts[e]; v[m + e] = a->psum[e]; }
    comm_party_sum_doubles(ex->comm, MSG_PARTY_STATS, v, 2 * m);
    for (int e = 0; e < m; e++) a->party_counts[e] = (int)v[e];
    a->party_rows = a->N * ex->R; // (every rank of the party has a batch of the same size)
    a->aux = moe_aux_loss(a->party_counts, v + m, a->party_rows, m, a->k);
    free(v);
}
