// plan.c: `pcmoe plan`: the bytes each party's process would hold, by category, without allocating them.
//
// Each party's model is built by model_create itself, on a backend whose buffers are address space reserved
// with MAP_NORESERVE and never touched (only the RoPE tables and the expert order are written: a few pages),
// so the plan is the allocation code's own arithmetic, not a copy of it. The exchange's buffers grow with the
// rows routed in a step; exchange_plan_bytes gives them for balanced routing and for the worst a step allows.
#define _DEFAULT_SOURCE // MAP_ANONYMOUS, MAP_NORESERVE
#include "plan.h"

#ifdef _OPENMP
#include <omp.h>      // omp_set_num_threads: the CPU attention's scratch has a slot per thread
#endif
#include <stdio.h>    // printf
#include <stdlib.h>   // free
#include <string.h>   // strcmp
#include <sys/mman.h> // mmap, munmap

#include "backend.h"  // Backend, backend_cpu
#include "config.h"   // config_load_shapes
#include "exchange.h" // exchange_plan_bytes
#include "json.h"     // Json
#include "model.h"    // model_create_on, MemStats
#include "pool.h"     // pool_owner_rank
#include "util.h"     // mallocCheck, fail

#define PAGE 4096 // each reservation starts with a page that holds its length (for munmap)

static void *reserve(size_t bytes) {
    size_t len = bytes + PAGE;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        fail("plan: cannot reserve %.1f GiB of address space (is vm.overcommit_memory 2?)", (double)len / (1 << 30));
    *(size_t *)p = len;
    return (char *)p + PAGE;
}
static void unreserve(void *p) {
    if (!p) return;
    char *base = (char *)p - PAGE;
    munmap(base, *(size_t *)base);
}
static void *re_reserve(void *p, size_t old_bytes, size_t bytes) {
    (void)old_bytes;
    unreserve(p);
    return reserve(bytes);
}
// (the CUDA backend keeps the attention probabilities for the backward, as cuda/backend.cu's att_saved)
static size_t cuda_att_saved(int B, int T, int H) { return (size_t)B * H * T * T; }
static size_t cuda_att_work(int T) { (void)T; return 0; }

// One process's plan.
typedef struct {
    const char *what;     // "party 3", "centralized", "whole model"
    int experts;          // experts held per MoE layer
    MemStats mem;         // model_create's bytes (buffers: the exchange's at balanced routing)
    size_t buffers_worst; // the exchange's bytes at the worst routing a step allows
} Plan;

// The exchange of rank s of the pool's P = N R ranks (pcmoe over MPI) at balanced routing (each rank's B*T*k
// rows spread evenly over the m experts) and at the worst (every token of every rank routed to as many of
// s's experts as it may).
static void plan_exchange(Plan *pl, const Config *c, int s, int N, int R) {
    int m = c->n_experts, k = c->top_k, n_local = 0, n_moe = 0, P = N * R;
    for (int e = 0; e < m; e++) n_local += pool_owner_rank(e, N, R) == s;
    ModelConfig mc = model_config_from(c);
    for (int l = 0; l < c->n_layers; l++) n_moe += model_layer_is_moe(&mc, l);
    size_t BT = (size_t)c->batch_size * c->seq_len, BTk = BT * k;
    int staged = c->device == DEVICE_CUDA && c->cuda_aware_mpi != CUDA_AWARE_ON;
    int recompute = c->recompute_experts != RECOMPUTE_OFF;
    size_t mine = (BTk * n_local + m - 1) / m; // rows one party sends p per layer, balanced
    pl->mem.buffers = exchange_plan_bytes(P, m, c->d_model, c->expert_ff, c->n_layers, n_moe, P * mine,
                                          (P - 1) * mine, BTk - (BTk * n_local) / m, staged, recompute);
    size_t most = BT * (k < n_local ? k : n_local), out = BT * (k < m - n_local ? k : m - n_local);
    pl->buffers_worst = exchange_plan_bytes(P, m, c->d_model, c->expert_ff, c->n_layers, n_moe, P * most,
                                            (P - 1) * most, out, staged, recompute);
}

// The model of rank s (-1: a whole model) of N parties of R ranks for batches of B sequences, as run.c builds
// it.
static Plan plan_model(const Config *c, const Backend *be, int s, int N, int R, int B, const char *what) {
    int E = c->n_experts, exchanged = s >= 0 && N * R > 1;
    int *owned = mallocCheck(sizeof(int) * E);
    Plan pl = {.what = what};
    for (int e = 0; e < E; e++) {
        owned[e] = !exchanged || pool_owner_rank(e, N, R) == s;
        pl.experts += owned[e];
    }
    ModelConfig mc = model_config_party(c, exchanged);
    Model m;
    model_create_on(&m, be, &mc, owned, !exchanged, B, c->seq_len);
    pl.mem = m.mem;
    model_free(&m);
    free(owned);
    if (exchanged) plan_exchange(&pl, c, s, N, R);
    return pl;
}

static size_t total(const Plan *pl, int worst) {
    const MemStats *m = &pl->mem;
    return m->params + m->grads + m->optim + m->acts + (worst ? pl->buffers_worst : m->buffers);
}

static const char *size_text(char *buf, size_t len, size_t bytes) {
    double b = (double)bytes;
    if (b >= 10.0 * (1 << 30)) snprintf(buf, len, "%.1f GiB", b / (1 << 30));
    else if (b >= 1 << 30) snprintf(buf, len, "%.2f GiB", b / (1 << 30));
    else snprintf(buf, len, "%.1f MiB", b / (1 << 20));
    return buf;
}

static void print_plan(const Plan *pl, int E) {
    char s[8][32];
    printf("%-12s %3d/%-4d %11s %11s %11s %12s %11s / %-11s %11s / %s\n", pl->what, pl->experts, E,
           size_text(s[0], 32, pl->mem.params), size_text(s[1], 32, pl->mem.grads),
           size_text(s[2], 32, pl->mem.optim), size_text(s[3], 32, pl->mem.acts),
           size_text(s[4], 32, pl->mem.buffers), size_text(s[5], 32, pl->buffers_worst),
           size_text(s[6], 32, total(pl, 0)), size_text(s[7], 32, total(pl, 1)));
}

static void json_plan(Json *j, const Plan *pl, int party) {
    json_open_object(j);
    if (party >= 0) json_member_int(j, "party", party);
    json_member_string(j, "what", pl->what);
    json_member_int(j, "experts", pl->experts);
    json_member_uint(j, "params", pl->mem.params);
    json_member_uint(j, "grads", pl->mem.grads);
    json_member_uint(j, "optim", pl->mem.optim);
    json_member_uint(j, "acts", pl->mem.acts);
    json_member_uint(j, "buffers", pl->mem.buffers);
    json_member_uint(j, "buffers_worst", pl->buffers_worst);
    json_member_uint(j, "total", total(pl, 0));
    json_member_uint(j, "total_worst", total(pl, 1));
    json_close_object(j);
}

// The processes a run of c starts: one per party, or in pcmoe R per party (a centralized run: one), each
// planned.
static int plan_config(const Config *c, const char *path, const char *json_path) {
#ifdef _OPENMP
    if (c->threads > 0) omp_set_num_threads(c->threads); // (as a run does; else OMP_NUM_THREADS decides)
#endif
    Backend be = backend_cpu;
    be.alloc_device = be.alloc_pinned = reserve;
    be.release = be.release_pinned = unreserve;
    be.resize = re_reserve;
    if (c->device == DEVICE_CUDA) {
        be.attention_saved_floats = cuda_att_saved;
        be.attention_work_floats = cuda_att_work;
    }
    int P = c->n_parties, R = c->ranks_per_party, E = c->n_experts, central = c->mode == MODE_CENTRALIZED;
    int pcmoe = c->mode == MODE_PCMOE, n = central ? 1 : P * R;
    Plan *pl = mallocCheck(sizeof(Plan) * (size_t)n);
    char (*names)[32] = mallocCheck(32 * (size_t)n);
    for (int s = 0; s < n; s++) {
        if (central) snprintf(names[s], 32, "centralized");
        else if (R > 1) snprintf(names[s], 32, "party %d.%d", s / R, s % R);
        else snprintf(names[s], 32, "party %d", s);
        pl[s] = plan_model(c, &be, pcmoe ? s : -1, P, R, central ? P * c->batch_size : c->batch_size, names[s]);
    }
    Plan whole = plan_model(c, &be, -1, 1, 1, c->batch_size, "whole model");
    printf("pcmoe plan: %s: mode %s, %d part%s, batch %d x %d tokens per %s, run.device = %s\n", path,
           MODE_NAMES[c->mode], P, P == 1 ? "y" : "ies", c->batch_size, c->seq_len, R > 1 ? "rank" : "party",
           DEVICE_NAMES[c->device]);
    if (R > 1) printf("%d ranks per party: party P.L is party P's rank L\n", R);
    printf("bytes each process allocates (fp32; the exchange's buffers at balanced routing / at the worst a step "
           "allows; the program, its libraries and the corpora come on top)\n");
    printf("%-12s %8s %11s %11s %11s %12s %25s %25s\n", "process", "experts", "parameters", "gradients", "AdamW",
           "activations", "exchange buffers", "total");
    for (int p = 0; p < n; p++) print_plan(&pl[p], E);
    print_plan(&whole, E);
    size_t most = 0;
    for (int p = 0; p < n; p++) most = total(&pl[p], 0) > most ? total(&pl[p], 0) : most;
    printf("the largest process holds %.3fx the bytes of one whole model at batch %d (balanced routing)\n",
           (double)most / (double)total(&whole, 0), c->batch_size);
    int rc = 0;
    if (json_path) {
        Json j = {0};
        json_open_object(&j);
        json_member_string(&j, "mode", MODE_NAMES[c->mode]);
        json_member_int(&j, "parties", P);
        json_member_int(&j, "ranks_per_party", R);
        json_key(&j, "processes");
        json_open_array(&j);
        for (int s = 0; s < n; s++) json_plan(&j, &pl[s], central ? -1 : s / R);
        json_close_array(&j);
        json_key(&j, "whole");
        json_plan(&j, &whole, -1);
        json_close_object(&j);
        char err[1024];
        if (json_write_option(&j, "--json", json_path, err, sizeof err)) {
            fprintf(stderr, "pcmoe: error: %s\n", err);
            rc = 2;
        }
    }
    free(pl);
    free(names);
    return rc;
}

int plan_main(int argc, char **argv) {
    const char *path = NULL, *json_path = NULL;
    char **sets = mallocCheck(sizeof(char *) * (size_t)argc);
    int n_sets = 0, rc = 0;
    for (int i = 2; i < argc && !rc; i++) {
        const char *o = argv[i];
        int valued = !strcmp(o, "--set") || !strcmp(o, "--json");
        if (valued && i + 1 >= argc) {
            fprintf(stderr, "pcmoe: error: %s needs %s\n", o, !strcmp(o, "--set") ? "section.key=value" : "a FILE");
            rc = 2;
        } else if (!strcmp(o, "--set")) sets[n_sets++] = argv[++i];
        else if (!strncmp(o, "--set=", 6)) sets[n_sets++] = argv[i] + 6;
        else if (!strcmp(o, "--json")) json_path = argv[++i];
        else if (o[0] == '-') { fprintf(stderr, "pcmoe: error: unknown option '%s' for plan\n", o); rc = 2; }
        else if (!path) path = o;
        else { fprintf(stderr, "pcmoe: error: unexpected argument '%s' (one CONFIG.ini only)\n", o); rc = 2; }
    }
    if (!rc && !path) { fprintf(stderr, "pcmoe: error: plan needs a CONFIG.ini (try pcmoe --help)\n"); rc = 2; }
    Config *c = mallocCheck(sizeof(Config));
    char err[2048];
    if (!rc && config_load_shapes(c, path, sets, n_sets, err, sizeof err)) {
        fprintf(stderr, "pcmoe: error: %s\n", err);
        rc = 2;
    }
    if (!rc) rc = plan_config(c, path, json_path);
    free(c);
    free(sets);
    return rc;
}
