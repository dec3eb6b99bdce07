// run.c: the party session (see run.h): building the parties of the configured mode, checkpoints, the DP
// defence's set-up and accounting, validation, and pcmoe eval.
#include "run.h"

#include <errno.h>        // errno
#include <math.h>         // isfinite, log
#include <stdio.h>        // FILE, printf
#include <stdlib.h>       // free
#include <string.h>       // memcpy, strerror
#include <unistd.h>       // unlink, rmdir

#ifdef _OPENMP
#include <omp.h>          // omp_set_num_threads
#endif

#include "autoconfig.h"   // HAVE_OPENBLAS_*
#include "ckpt.h"         // ckpt_save, ckpt_load, ckpt_latest, ckpt_read_weights, ckpt paths
#include "hf.h"           // hf_is_checkpoint, hf_read_weights: Hugging Face checkpoints
#include "pool.h"         // pool_owner_rank, pool_packing_order
#include "privacy.h"      // privacy_appearances, privacy_run_epsilon, privacy_noise_for_epsilon
#include "record.h"       // record_open, record_close (the study only)
#include "util.h"         // fail, fail_usage, mallocCheck, error_set, mkdir_p, write_file_atomic

#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
void openblas_set_num_threads(int num_threads);
#endif
#ifdef HAVE_OPENBLAS_GET_PARALLEL
int openblas_get_parallel(void); // 0 sequential, 1 pthreads, 2 OpenMP
#endif

// OpenMP threads for the non-GEMM kernels; BLAS threads for the GEMMs. A pthreads OpenBLAS keeps its own
// spinning pool that competes with OpenMP's for the same cores (measured 3x slower on 2 cores), so by
// default it gets one thread; an OpenMP OpenBLAS shares OpenMP's pool and follows run.threads.
static void threads_setup(const Config *c) {
#ifdef _OPENMP
    if (c->threads > 0) omp_set_num_threads(c->threads);
#endif
    int blas = c->blas_threads;
#ifdef HAVE_OPENBLAS_GET_PARALLEL
    if (blas == 0 && openblas_get_parallel() == 1) blas = 1;
#endif
    if (blas == 0) blas = c->threads;
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    if (blas > 0) openblas_set_num_threads(blas);
#else
    (void)blas;
#endif
}

static OptimConfig optim_config_from(const Config *c) {
    OptimConfig o = {
        .lr = c->lr, .min_lr = c->min_lr, .warmup_steps = c->warmup_steps, .total_steps = c->steps,
        .beta1 = c->beta1, .beta2 = c->beta2, .eps = c->adam_eps, .weight_decay = c->weight_decay,
        .grad_clip = c->grad_clip,
    };
    return o;
}

// Backbones: fedavg and centralized start from one model; pcmoe and local parties from their own.
// Experts: one seed, whoever holds them.
static uint64_t backbone_seed(const Config *c, int party) {
    int shared = c->mode == MODE_FEDAVG || c->mode == MODE_CENTRALIZED || c->same_backbone_init;
    return (uint64_t)c->seed + 7919ULL * (uint64_t)(shared ? 1 : party + 1);
}

// The private shuffle's seed of party `party`'s local rank `local`.
static uint64_t shuffle_seed(const Config *c, int party, int local) {
    if (c->shuffle_seed != 0) return (uint64_t)c->shuffle_seed + (uint64_t)party + 1000003ULL * (uint64_t)local;
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1)
        fail("cannot read /dev/urandom for the private shuffle seed (set privacy.shuffle_seed)");
    fclose(f);
    return s;
}

int run_turn_of(const Config *c, int step) {
    int P = c->n_parties, perm[CONFIG_MAX_PARTIES];
    Rng r;
    rng_seed(&r, (uint64_t)c->seed * 1000003ULL + (uint64_t)(step / P) + 0x5EC0ULL);
    for (int i = 0; i < P; i++) perm[i] = i;
    for (int i = P - 1; i > 0; i--) {
        int j = (int)rng_below(&r, (uint64_t)i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    return perm[step % P];
}

int run_party_trains(const Config *c, int step, int party) {
    return c->schedule == SCHEDULE_CONCURRENT || run_turn_of(c, step) == party;
}

// ---------------------------------------------------------------------------------------------------
// Opening and closing

void run_check_ranks(const Config *c, const Comm *comm, int simulate) {
    int R = c->ranks_per_party, one_process = c->mode == MODE_CENTRALIZED || simulate;
    int want = one_process ? 1 : c->n_parties * R;
    if (simulate && R > 1)
        fail_usage(2, 0, "parties.ranks_per_party = %d: --simulate computes each party in one process; give it the "
                   "party's batch instead (train.batch_size = %d x %d)", R, R, c->batch_size);
    if (comm->size != want && R > 1)
        fail_usage(2, 0, "parties.count = %d, parties.ranks_per_party = %d: needs %d MPI ranks (%d x %d), the job has "
                   "%d", c->n_parties, R, want, c->n_parties, R, comm->size);
    if (comm->size != want)
        fail_usage(2, 0, "parties.count = %d, parties.mode = %s%s: needs %d MPI rank%s, the job has %d", c->n_parties,
                   MODE_NAMES[c->mode], simulate ? " with --simulate" : "", want, want > 1 ? "s" : "", comm->size);
}

// model.tokenizer, checked against model.vocab_size: into r->tok. Returns 0, or 2 with err set.
static int load_tokenizer(Run *r, char *err, size_t len) {
    const Config *c = r->c;
    if (!c->tokenizer[0]) return 0;
    r->tok = tokenizer_load(c->tokenizer, err, len);
    if (!r->tok) return 2;
    if (tokenizer_vocab_size(r->tok) > c->vocab_size)
        return error_set(err, len, "model.tokenizer = %s: %d ids; model.vocab_size = %d is smaller", c->tokenizer,
                         tokenizer_vocab_size(r->tok), c->vocab_size);
    if (c->eos_token_id >= tokenizer_vocab_size(r->tok))
        return error_set(err, len, "model.eos_token_id = %d: past the %d ids of model.tokenizer = %s", c->eos_token_id,
                         tokenizer_vocab_size(r->tok), c->tokenizer);
    return 0;
}

static int load_data(Run *r, char *err, size_t len) {
    const Config *c = r->c;
    for (int q = 0; q < r->n; q++) {
        Party *p = &r->party[q];
        char e[1536];
        if (data_load(&p->data, c->data_path[p->party], c->val_fraction, c->seq_len, (uint64_t)c->seed + 1 + p->party,
                      r->tok, c->eos_token_id, e, sizeof e))
            return error_set(err, len, "party %d: data.%d = %s", p->party, p->party, e);
    }
    return 0;
}

// pcmoe --simulate: the pool holds every expert; each party's model holds its backbone and reaches the
// pool's experts directly, so their gradients sum over the parties.
static void build_simulated(Run *r, const ModelConfig *mc) {
    const Config *c = r->c;
    int E = c->n_experts;
    model_create_on(&r->pool, r->be, mc, NULL, 1, 1, c->seq_len); // experts only are used
    r->sim_rows = callocCheck((size_t)c->n_layers * E, sizeof(int));
    r->sim_seconds = callocCheck((size_t)r->n, sizeof(double));
    model_init(&r->pool, 0, (uint64_t)c->seed);
    int *none = callocCheck((size_t)E, sizeof(int));
    for (int q = 0; q < r->n; q++) {
        Model *m = &r->party[q].model;
        model_create_on(m, r->be, mc, none, 1, c->batch_size, c->seq_len);
        model_init(m, backbone_seed(c, q), (uint64_t)c->seed);
        for (int l = 0; l < c->n_layers; l++)
            for (int e = 0; e < E; e++) {
                LayerWeights *w = &m->w.layer[l], *g = &m->g.layer[l];
                const LayerWeights *pw = &r->pool.w.layer[l], *pg = &r->pool.g.layer[l];
                w->exp_gate[e] = pw->exp_gate[e];
                w->exp_up[e] = pw->exp_up[e];
                w->exp_down[e] = pw->exp_down[e];
                g->exp_gate[e] = pg->exp_gate[e];
                g->exp_up[e] = pg->exp_up[e];
                g->exp_down[e] = pg->exp_down[e];
            }
        pool_packing_order(m->expert_order, E, r->P, 1);
        m->shuffle_on = c->shuffle_rows;
        rng_seed(&m->shuffle, shuffle_seed(c, q, 0));
    }
    free(none);
}

// pcmoe over MPI: the party's experts run at their owners, reached through the exchange.
static void build_exchange(Run *r, Party *p) {
    const Config *c = r->c;
    int E = c->n_experts, keys = r->comm->seal != NULL; // (with keys, rows go through host buffers to be sealed)
    int mpi_cuda = comm_cuda_support();
    int direct = c->cuda_aware_mpi == CUDA_AWARE_ON || (c->cuda_aware_mpi == CUDA_AWARE_AUTO && mpi_cuda == 1 && !keys);
    if (keys && direct && r->be->device)
        fail_usage(2, 0, "run.cuda_aware_mpi = on hands device buffers to MPI, unsealed; with parties.keys = %s set "
                   "the rows must be sealed on the host: set run.cuda_aware_mpi = auto or off", c->keys);
    if (direct && r->be->device && !r->be->mpi_reads_device && mpi_cuda == 0) // (it would crash in MPI)
        fail_usage(2, 0, "run.cuda_aware_mpi = on hands device buffers to MPI, but this MPI reports no CUDA support "
                   "(MPIX_Query_cuda_support() = 0): set run.cuda_aware_mpi = auto or off, or use a CUDA-aware MPI");
    if (r->be->device && r->comm->rank == 0)
        fprintf(stderr, "pcmoe: run.device = cuda: rows cross parties %s (run.cuda_aware_mpi = %s)\n",
                direct ? "as device buffers handed to MPI" : "through page-locked host buffers",
                CUDA_AWARE_NAMES[c->cuda_aware_mpi]);
    exchange_create(&r->ex, r->be, direct, r->comm, E, c->d_model, c->expert_ff, c->n_layers,
                    c->batch_size * c->seq_len * c->top_k, c->check_finite,
                    c->recompute_experts != RECOMPUTE_OFF); // (auto: the owner recomputes)
    p->model.ex = &r->ex;
    r->ex.noise_std = c->noise_std;
    rng_seed(&r->ex.noise, shuffle_seed(c, p->party, r->local) ^ 0x9015EULL);
    if (c->record_dir[0]) {
        fprintf(stderr, "pcmoe: WARNING: privacy.record_received = %s: party %d records every row it receives from "
                "other parties (a reconstruction-attack study; never use it with real private data)\n",
                c->record_dir, p->party);
        r->ex.tap = p->model.tap = record_open(c->record_dir, p->party);
    }
    memcpy(p->model.expert_order, r->ex.order, sizeof(int) * E);
    p->model.shuffle_on = c->shuffle_rows;
    rng_seed(&p->model.shuffle, shuffle_seed(c, p->party, r->local));
}

// A party on this rank: pcmoe (its backbone and this rank's expert shard), local and fedavg (a whole model).
static void build_party(Run *r) {
    const Config *c = r->c;
    Party *p = &r->party[0];
    int E = c->n_experts;
    int *owned = mallocCheck(sizeof(int) * E);
    for (int e = 0; e < E; e++)
        owned[e] = c->mode != MODE_PCMOE || pool_owner_rank(e, r->P, r->R) == p->party * r->R + r->local;
    ModelConfig mc = model_config_party(c, r->exchanged);
    model_create_on(&p->model, r->be, &mc, owned, !r->exchanged, c->batch_size, c->seq_len);
    model_init(&p->model, backbone_seed(c, p->party), (uint64_t)c->seed);
    p->model.dp_ranks = r->R;
    if (r->exchanged) build_exchange(r, p); // (one party alone holds every expert: nothing to exchange)
    free(owned);
}

static void build_models(Run *r) {
    const Config *c = r->c;
    ModelConfig mc = model_config_from(c);
    int B = c->batch_size, T = c->seq_len, P = r->P;
    if (c->mode == MODE_CENTRALIZED) {
        model_create_on(&r->central, r->be, &mc, NULL, 1, P * B, T);
        model_init(&r->central, backbone_seed(c, 0), (uint64_t)c->seed);
        r->ctok = mallocCheck(sizeof(Token) * P * B * T);
        r->ctgt = mallocCheck(sizeof(Token) * P * B * T);
    } else if (c->mode == MODE_PCMOE && r->simulate) {
        build_simulated(r, &mc);
    } else {
        build_party(r);
    }
    for (int q = 0; q < r->n; q++) {
        r->party[q].tokens = mallocCheck(sizeof(Token) * r->R * B * T);
        r->party[q].targets = mallocCheck(sizeof(Token) * r->R * B * T);
    }
}

// parties.keys: the exchange between parties sealed from here on (comm_seal_start); without it, when anything
// crosses a party line, rank 0 says that it travels in the clear.
static void seal_or_say(const Config *c, Comm *comm, int one_process) {
    if (one_process || c->n_parties < 2) return;
    if (c->keys[0]) comm_seal_start(comm, c->keys);
    else if (comm->rank == 0)
        fprintf(stderr, "pcmoe: note: parties.keys is not set: what crosses party lines (rows, gradients, counts, "
                "agreements) travels unencrypted and unauthenticated (docs/privacy.md)\n");
}

void run_open(Run *r, const Config *c, Comm *comm, const RunOptions *o, int read_data) {
    threads_setup(c);
    run_check_ranks(c, comm, o->simulate);
    int P = c->n_parties, one_process = c->mode == MODE_CENTRALIZED || o->simulate;
    int R = one_process ? 1 : c->ranks_per_party;
    comm_setup(comm, one_process ? 1 : P, R);
    *r = (Run){.c = c, .comm = comm, .simulate = o->simulate, .P = P, .R = R, .local = comm->local,
               .n = one_process ? P : 1, .one_process = one_process, .be = &backend_cpu, .nan_grad_step = -1};
    r->exchanged = c->mode == MODE_PCMOE && !o->simulate && P * R > 1;
    seal_or_say(c, comm, one_process);
    char err[2048] = "";
    if (c->device == DEVICE_CUDA) { // every rank opens its GPU; any failure ends the job on every rank
        r->be = backend_cuda_open(c->gpu, comm_local_rank(comm), c->tf32, err, sizeof err);
        comm_stop_if_failed(comm, r->be ? 0 : 2, err);
    }
    r->oc = optim_config_from(c);
    r->party = callocCheck((size_t)r->n, sizeof(Party));
    for (int q = 0; q < r->n; q++) r->party[q].party = one_process ? q : comm->party;
    comm_stop_if_failed(comm, load_tokenizer(r, err, sizeof err), err);
    if (read_data) comm_stop_if_failed(comm, load_data(r, err, sizeof err), err); // every rank learns whether all could
    build_models(r);
    if (o->fault && !strcmp(o->fault, "nan-grad")) r->nan_grad_step = 5; // during step 6
    else if (r->exchanged && o->fault) exchange_set_fault(&r->ex, o->fault, P * R - 1);
}

void run_close(Run *r) {
    tokenizer_free(r->tok);
    for (int q = 0; q < r->n; q++) {
        Party *p = &r->party[q];
        if (r->c->mode != MODE_CENTRALIZED) model_free(&p->model);
        data_free(&p->data);
        free(p->tokens);
        free(p->targets);
    }
    if (r->c->mode == MODE_CENTRALIZED) {
        model_free(&r->central);
        free(r->ctok);
        free(r->ctgt);
    }
    if (r->c->mode == MODE_PCMOE && r->simulate) {
        model_free(&r->pool);
        free(r->sim_rows);
        free(r->sim_seconds);
    }
    if (r->exchanged) {
        record_close(r->ex.tap);
        exchange_free(&r->ex);
    }
    free(r->party);
    free(r->party_grads);
    free(r->party_scratch);
    backend_cuda_close(); // (nothing when none was opened)
}

Model *run_party_model(Run *r, int q, Token **tokens, Token **targets) {
    if (r->c->mode != MODE_CENTRALIZED) {
        *tokens = r->party[q].tokens;
        *targets = r->party[q].targets;
        return &r->party[q].model;
    }
    *tokens = r->ctok;
    *targets = r->ctgt;
    model_set_batch(&r->central, r->c->batch_size);
    return &r->central;
}

void run_party_done(Run *r, Model *m) {
    if (r->c->mode == MODE_CENTRALIZED) model_set_batch(m, m->B_alloc);
}

// ---------------------------------------------------------------------------------------------------
// Validation, memory, the DP accountant

// Mean cross-entropy of the model over the party's n_batches validation batches. A party of R ranks draws each
// batch R times as large (tokens, targets: (R B, T)), this rank computes its part `local`, and the party
// averages its ranks' losses.
static double validation_loss(Run *r, Model *m, const Dataset *ds, int n_batches, Token *tokens, Token *targets) {
    double total = 0.0;
    size_t mine = (size_t)r->local * m->B * m->T;
    for (int i = 0; i < n_batches; i++) {
        data_val_batch(ds, tokens, targets, r->R * m->B, m->T, i, n_batches);
        model_forward(m, tokens + mine, targets + mine);
        total += m->ce;
    }
    comm_party_sum_doubles(r->comm, MSG_PARTY_STATS, &total, 1);
    return total / n_batches / r->R;
}

void run_validate(Run *r) {
    for (int q = 0; q < r->n; q++) {
        Party *p = &r->party[q];
        Token *tok, *tgt;
        Model *m = run_party_model(r, q, &tok, &tgt);
        p->s.has_val = 1;
        p->s.val_loss = validation_loss(r, m, &p->data, r->c->eval_batches, tok, tgt);
        p->s.val_bpb = p->s.val_loss / log(2.0) / p->data.val_bytes_per_token;
        run_party_done(r, m);
    }
}

void run_gather_rows(Run *r, double *rows, int width) {
    if (r->one_process) return;
    double *mine = mallocCheck(sizeof(double) * (size_t)width);
    memcpy(mine, rows, sizeof(double) * (size_t)width);
    comm_gather_doubles(r->comm, MSG_METRICS, mine, width, rows);
    free(mine);
}

MemStats run_party_mem(const Run *r, int q) {
    MemStats mem = r->c->mode == MODE_CENTRALIZED ? r->central.mem : r->party[q].model.mem;
    if (r->exchanged) mem.buffers = r->ex.peak;
    return mem;
}

void run_dp_account(Run *r, int q) {
    if (!r->dp) return;
    Party *p = &r->party[q];
    StepStats *s = &p->s;
    if (s->has_train) p->dp_windows += r->c->batch_size * r->R;
    double tail = r->c->dp_delta / 2.0;
    s->has_dp = 1;
    s->noise_multiplier = p->dp_noise;
    s->epsilon =
            privacy_run_epsilon(p->dp_noise, r->dp_releases, privacy_appearances(p->dp_windows, p->dp_p, tail), tail);
}

// The DP defence (privacy.clip_norm, pcmoe over MPI): this party's noise multiplier (given, or the least
// that keeps its planned run within privacy.target_epsilon) goes to the exchange, and the accountant's
// counts start from the windows drawn before `start` (a resumed run). Returns 0, or 2 with err set.
static int dp_setup(Run *r, int start, char *err, size_t len) {
    const Config *c = r->c;
    if (c->clip_norm <= 0 || !r->exchanged) return 0;
    Party *p = &r->party[0];
    int moe = 0, B = c->batch_size * r->R, T = c->seq_len; // (the party's windows, on all its ranks)
    for (int l = 0; l < c->n_layers; l++) moe += model_layer_is_moe(&p->model.cfg, l);
    r->dp = 1;
    r->dp_releases = 2L * c->top_k * moe;
    r->ex.clip_norm = c->clip_norm;
    r->ex.grad_clip_norm = c->grad_clip_norm;
    p->dp_noise = c->noise_multiplier;
    if (!p->data.n_train) { r->ex.noise_multiplier = (float)p->dp_noise; return 0; } // (generate: no corpus read)
    p->dp_p = p->data.n_train > (size_t)T ? (double)T / (double)(p->data.n_train - T) : 1.0;
    long planned = 0;
    p->dp_windows = 0;
    for (int step = 0; step < c->steps; step++)
        if (run_party_trains(c, step, p->party)) {
            planned += B;
            if (step < start) p->dp_windows += B;
        }
    double tail = c->dp_delta / 2.0;
    int appear = privacy_appearances(planned, p->dp_p, tail);
    if (c->target_epsilon > 0) {
        p->dp_noise = privacy_noise_for_epsilon(c->target_epsilon, r->dp_releases, appear, tail);
        if (!isfinite(p->dp_noise))
            return error_set(err, len, "privacy.target_epsilon = %g: out of reach for party %d (a byte in up to %d "
                             "windows, %ld rows each)", c->target_epsilon, p->party, appear, r->dp_releases);
    }
    r->ex.noise_multiplier = (float)p->dp_noise;
    if (r->local == 0)
        fprintf(stderr,
                "pcmoe: party %d: DP defence: rows clipped to %g, gradient rows to %g, noise multiplier %.4g; "
                "planned epsilon %.4g at delta %g (a byte in up to %d of its %ld windows, %ld rows sent per window)\n",
                p->party, c->clip_norm, c->grad_clip_norm, p->dp_noise,
                privacy_run_epsilon(p->dp_noise, r->dp_releases, appear, tail), c->dp_delta, appear, planned,
                r->dp_releases);
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Checkpoints: one file per rank; what goes in it is this rank's model, AdamW state, samplers and
// private shuffle (see ckpt.h). rngs: scratch for P sampler states.

static CkptState ckpt_state(Run *r, Rng *rngs) {
    CkptState s = {.party = r->party[0].party, .local = r->local, .c = r->c, .data_rng = rngs};
    if (r->c->mode == MODE_CENTRALIZED) {
        s.m = &r->central;
        s.party = 0;
        s.first_data = 0;
        s.n_data = r->n;
    } else {
        s.m = &r->party[0].model;
        s.first_data = r->party[0].party;
        s.n_data = 1;
        s.shuffle = s.m->shuffle_on ? &s.m->shuffle : NULL;
    }
    for (int q = 0; q < s.n_data; q++) rngs[q] = r->party[q].data.rng;
    return s;
}

// Keeps the newest checkpoint.keep complete checkpoints: unmark, then delete the files, then the directory.
// Every rank lists them before rank 0 removes a marker: a rank listing later would see fewer, skip the
// agreements below, and the ranks' collectives would no longer match (a hang).
static void checkpoint_prune(Run *r) {
    const Config *c = r->c;
    Comm *comm = r->comm;
    char dir[CONFIG_PATH_LEN + 64], path[CONFIG_PATH_LEN + 96];
    int steps[4096], n = ckpt_list(c->run_dir, steps, 4096);
    n = -comm_max_int(comm, -n); // (parties with run directories of their own see the same checkpoints)
    for (int i = 0; i + c->ckpt_keep < n; i++) {
        ckpt_step_dir(dir, sizeof dir, c->run_dir, steps[i]);
        ckpt_marker_file(path, sizeof path, dir);
        if (comm->rank == 0) unlink(path);
        comm_agree(comm, 1, NULL, NULL);
        if (r->local == 0) unlink(path); // (a party's own marker, where its run directory is its own)
        if (r->local == 0) ckpt_remove_party(dir, c->mode == MODE_CENTRALIZED ? 0 : r->party[0].party);
        comm_agree(comm, 1, NULL, NULL);
        if (r->local == 0) rmdir(dir); // (the last to find it empty removes it)
    }
}

// Every model this process holds (the centralized one; else each party's, and the simulation's pool): its
// parameters and AdamW state to the host's copies (to_host) or from them (model.h).
static void models_state(Run *r, int to_host) {
    void (*move)(Model *, int) = to_host ? model_state_to_host : model_state_to_device;
    if (r->c->mode == MODE_CENTRALIZED) { move(&r->central, 1); return; }
    for (int q = 0; q < r->n; q++) move(&r->party[q].model, 1);
    if (r->pool.n_tensors) move(&r->pool, 1);
}

void run_checkpoint_write(Run *r, int step_done) {
    const Config *c = r->c;
    Comm *comm = r->comm;
    char dir[CONFIG_PATH_LEN + 64], path[CONFIG_PATH_LEN + 96], err[2048] = "";
    ckpt_step_dir(dir, sizeof dir, c->run_dir, step_done);
    Rng *rngs = mallocCheck(sizeof(Rng) * (size_t)r->n);
    CkptState s = ckpt_state(r, rngs);
    s.step = step_done;
    models_state(r, 1); // the writer reads the host's copies of the parameters and AdamW state
    ckpt_rank_file(path, sizeof path, dir, s.party, s.local);
    int rc = mkdir_p(dir) ? error_set(err, sizeof err, "%s: cannot create: %s", dir, strerror(errno))
                          : ckpt_save(path, &s, err, sizeof err);
    free(rngs);
    if (!comm_agree(comm, rc == 0, NULL, NULL)) { // not every party's file: remove this step's files and directory
        unlink(path);
        comm_agree(comm, 1, NULL, NULL);
        if (comm->rank == 0) rmdir(dir);
        char why[2200];
        snprintf(why, sizeof why, "checkpoint of step %d not written: %s (earlier complete checkpoints are intact)",
                 step_done, err);
        comm_stop_if_failed(comm, rc ? 1 : 0, why);
    }
    char text[64];
    int n = snprintf(text, sizeof text, "step %d, %d parties of %d ranks\n", step_done, c->n_parties, r->R);
    ckpt_marker_file(path, sizeof path, dir);
    if (comm->rank == 0) rc = write_file_atomic(path, text, (size_t)n, err, sizeof err); // written last: a directory
    comm_stop_if_failed(comm, rc, err);                                                // without it is never loaded
    // parties in different places (meet.h) may have run directories of their own: each party's rank 0 marks
    // its own when rank 0's marker is not there
    if (r->local == 0 && comm->rank != 0 && !ckpt_is_complete(dir))
        rc = write_file_atomic(path, text, (size_t)n, err, sizeof err);
    comm_stop_if_failed(comm, rc, err);
    checkpoint_prune(r);
}

static int init_weights_from(Run *r, char *err, size_t len);

// The warning for a checkpoint (dir) of a format without checksums, that was read unverified.
static void unverified_note(const char *dir, int version) {
    if (version < 2)
        fprintf(stderr, "pcmoe: warning: %s: written before checkpoints carried checksums (format %d): loaded "
                "unverified\n", dir, version);
}

// The notes of a resume whose parties changed: rank 0 says how the pool was re-sharded, a party that joins
// where its backbone comes from.
static void layout_notes(const Run *r, const CkptState *s) {
    const Config *c = r->c;
    if (r->comm->rank == 0 && (s->stored_parties != c->n_parties || s->stored_ranks != r->R))
        fprintf(stderr, "pcmoe: the checkpoint's %d parties of %d ranks resume as %d parties of %d: experts "
                "re-sharded (expert e on party e mod %d)%s\n", s->stored_parties, s->stored_ranks, c->n_parties, r->R,
                c->n_parties, s->stored_parties > c->n_parties ? "; the parties that left took their backbones" : "");
    if (s->joined && r->local == 0)
        fprintf(stderr, "pcmoe: party %d joins at step %d: its experts from their owners' files, its backbone %s%s\n",
                s->party, s->step, c->init_from[0] ? "from train.init_from = " : "at random (its own seed)",
                c->init_from);
}

// Loads this rank's part of checkpoint directory `dir` into the run (its party's backbone and samplers, the
// experts it holds from whichever rank held them, its private shuffle), and in --simulate the other parties'
// backbones and every expert. A party that joins (pcmoe: more parties than the checkpoint's) starts its
// backbone from train.init_from, or keeps its random one; regroup = 0 (eval, bench, generate) refuses another
// party count. Returns 0, or 2 with err set (*damaged: the failure is a damaged file).
static int checkpoint_load(Run *r, const char *dir, int regroup, int *step, int *damaged, char *err, size_t len) {
    Rng *rngs = mallocCheck(sizeof(Rng) * (size_t)r->n);
    CkptState s = ckpt_state(r, rngs);
    int rc = ckpt_load_party(dir, &s, err, len); // (into the host's copies, current since model_init)
    if (!rc && s.joined && r->c->init_from[0]) { // its backbone from init_from, then its experts again
        rc = init_weights_from(r, err, len);
        if (!rc) rc = ckpt_load_party(dir, &s, err, len);
    }
    if (!rc && (r->simulate || !regroup) && s.stored_parties != r->P)
        rc = error_set(err, len, "%s: written by a run of %d parties, config has parties.count = %d (%s)", dir,
                       s.stored_parties, r->P, r->simulate ? "--simulate reads a checkpoint of the same parties"
                                                           : "only train --resume regroups the parties");
    if (!rc) {
        for (int q = 0; q < s.n_data; q++) r->party[q].data.rng = rngs[q];
        *step = s.step;
        layout_notes(r, &s);
        if (r->comm->rank == 0) unverified_note(dir, s.version);
    }
    *damaged = s.damaged;
    free(rngs);
    if (!rc && r->simulate && r->c->mode == MODE_PCMOE) {
        int R = s.stored_ranks;
        for (int q = 1; q < r->n && !rc; q++)
            rc = ckpt_read_weights(&r->party[q].model, dir, q, 0, r->P, R, err, len);
        if (!rc) rc = ckpt_read_weights(&r->pool, dir, 0, 1, r->P, R, err, len);
    }
    if (!rc) models_state(r, 0);
    return rc;
}

// The run (from train.init_from's checkpoint) whose weights a start takes: its config, checked against
// ours; *step, *version: its step and checkpoint format. *shards: the parties its experts were sharded over
// (1: all in party_0.h5); *pooled: a pcmoe run of several parties (each party then reads its own backbone).
// Returns 0, or 2 with err set.
static int init_source(const Config *c, const char *path, int *step, int *version, int *shards, int *ranks,
                       int *pooled, char *err, size_t len) {
    const char *dir = c->init_from;
    size_t text_len = 1 << 16;
    char *text = mallocCheck(text_len), why[1024];
    CkptMeta meta;
    int rc = ckpt_peek(path, text, text_len, &meta, err, len);
    *step = meta.step;
    *version = meta.version;
    Config *src = mallocCheck(sizeof *src);
    if (!rc && config_load_text(src, text, why, sizeof why))
        rc = error_set(err, len, "train.init_from: %s: %s", path, why);
    if (!rc && config_diff_model(src, c, 0, why, sizeof why))
        rc = error_set(err, len, "train.init_from = %s: another model: %s", dir, why);
    int Ps = src->n_parties;
    *pooled = src->mode == MODE_PCMOE && Ps > 1;
    *shards = *pooled ? Ps : 1;
    *ranks = *pooled ? src->ranks_per_party : 1;
    if (!rc && !*pooled && src->mode != MODE_CENTRALIZED && Ps > 1)
        rc = error_set(err, len, "train.init_from = %s: a %s run of %d parties holds one model per party; start "
                       "from a centralized, single-party or pcmoe checkpoint", dir, MODE_NAMES[src->mode], Ps);
    if (!rc && *pooled && Ps != c->n_parties)
        rc = error_set(err, len, "train.init_from = %s: a pcmoe checkpoint of %d parties gives each party its own "
                       "backbone; this run has parties.count = %d", dir, Ps, c->n_parties);
    free(text);
    free(src);
    return rc;
}

// A Hugging Face checkpoint in DIR (hf.h): every model of this process reads the tensors it holds (the party's
// backbone; the experts it owns, or in the simulation's pool all of them). Returns 0, or 2 with err set.
static int hf_weights_from(Run *r, const char *dir, char *err, size_t len) {
    int rc = 0; // (the reads go into the host's copies, current since model_init)
    if (r->c->mode == MODE_CENTRALIZED) rc = hf_read_weights(&r->central, dir, err, len);
    else {
        if (r->pool.n_tensors) rc = hf_read_weights(&r->pool, dir, err, len);
        for (int q = 0; q < r->n && !rc; q++) rc = hf_read_weights(&r->party[q].model, dir, err, len);
    }
    if (!rc) models_state(r, 0);
    return rc;
}

// train.init_from: this process's models start from the weights of the checkpoint in DIR, whose run had
// the same model keys: a centralized or single-party run (every party from party 0's file), or a pcmoe run
// of the same parties (each party from its own backbone; each expert from the party that held it). Only
// the tensors a model holds are read. AdamW state and the step count stay fresh.
static int init_weights_from(Run *r, char *err, size_t len) {
    const Config *c = r->c;
    const char *dir = c->init_from;
    char path[CONFIG_PATH_LEN + 96];
    if (hf_is_checkpoint(dir)) {
        if (hf_weights_from(r, dir, err, len)) return 2;
        if (r->comm->rank == 0) fprintf(stderr, "pcmoe: starting from the Hugging Face weights of %s\n", dir);
        return 0;
    }
    if (!ckpt_is_complete(dir))
        return error_set(err, len, "train.init_from = %s: not a complete checkpoint directory (no %s marker)", dir,
                         CKPT_MARKER);
    ckpt_party_file(path, sizeof path, dir, 0);
    int step, version, shards, ranks, pooled;
    if (init_source(c, path, &step, &version, &shards, &ranks, &pooled, err, len)) return 2;
    int rc = 0; // (the reads go into the host's copies, current since model_init)
    if (c->mode == MODE_CENTRALIZED) rc = ckpt_read_weights(&r->central, dir, 0, 0, shards, ranks, err, len);
    else {
        if (r->pool.n_tensors) rc = ckpt_read_weights(&r->pool, dir, 0, 1, shards, ranks, err, len);
        for (int q = 0; q < r->n && !rc; q++)
            rc = ckpt_read_weights(&r->party[q].model, dir, pooled ? r->party[q].party : 0, 0, shards, ranks, err,
                                   len);
    }
    if (rc) return 2;
    models_state(r, 0);
    if (r->comm->rank == 0) unverified_note(dir, version);
    if (r->comm->rank == 0)
        fprintf(stderr, "pcmoe: starting from the weights of %s (its step %d); AdamW state fresh\n", dir, step);
    return 0;
}

int run_load_checkpoint(Run *r, const char *dir) {
    char err[2048] = "";
    int step = 0, rc = 0;
    if (hf_is_checkpoint(dir)) rc = hf_weights_from(r, dir, err, sizeof err); // (step 0: no training of ours)
    else if (!ckpt_is_complete(dir))
        rc = error_set(err, sizeof err, "%s: not a complete checkpoint directory (no %s marker)", dir, CKPT_MARKER);
    else {
        int damaged;
        rc = checkpoint_load(r, dir, 0, &step, &damaged, err, sizeof err);
    }
    comm_stop_if_failed(r->comm, rc, err);
    comm_stop_if_failed(r->comm, dp_setup(r, step, err, sizeof err), err);
    return step;
}

// The step a resume starts from: resume_step (>= 0: it must be a complete checkpoint), else the newest complete
// one. Returns it, or -1 with err set.
static int resume_pick(const Config *c, int resume_step, char *ignored, size_t ignored_len, char *err, size_t len) {
    int latest = ckpt_latest(c->run_dir, ignored, ignored_len);
    if (resume_step < 0 && latest < 0)
        error_set(err, len, "run.dir = %s: no complete checkpoint to resume from%s%s", c->run_dir,
                  ignored[0] ? "; incomplete: " : "", ignored);
    if (resume_step < 0) return latest;
    ignored[0] = '\0';
    int steps[4096], n = ckpt_list(c->run_dir, steps, 4096);
    for (int i = 0; i < n; i++)
        if (steps[i] == resume_step) return resume_step;
    Text list = {0};
    for (int i = 0; i < n && i < 32; i++) text_printf(&list, "%s%d", i ? ", " : "", steps[i]);
    error_set(err, len, "--resume=%d: run.dir = %s has no complete checkpoint of step %d (complete: %s)", resume_step,
              c->run_dir, resume_step, n ? list.s : "none");
    text_free(&list);
    return -1;
}

// A load of checkpoint `step` that failed because a file is damaged: err gains the newest older checkpoint that
// verifies, the one to resume from instead (nothing is deleted).
static void damaged_hint(const Config *c, int step, char *err, size_t len) {
    int good = ckpt_newest_verified(c->run_dir, step);
    size_t n = strlen(err);
    if (good >= 0)
        snprintf(err + n, len - n, "; the newest checkpoint that verifies is step %d: --resume=%d", good, good);
    else snprintf(err + n, len - n, "; no older complete checkpoint verifies either");
}

// After a resume from an older checkpoint than the newest (--resume=STEP): the newer complete ones are moved
// aside to step_NNNNNNNN.set-aside (never deleted), so the run's own checkpoints take their places and pruning
// counts those. Rank 0 moves them in run.dir, then each party's rank 0 in its own run directory, if it has one.
static void set_aside_newer(Run *r, int start) {
    const Config *c = r->c;
    int steps[4096], n = ckpt_list(c->run_dir, steps, 4096);
    comm_agree(r->comm, 1, NULL, NULL); // (every rank has listed them before any moves)
    for (int pass = 0; pass < 2; pass++) {
        int mine = pass == 0 ? r->comm->rank == 0 : r->local == 0 && r->comm->rank != 0;
        for (int i = 0; mine && i < n; i++) {
            char dir[CONFIG_PATH_LEN + 64], to[CONFIG_PATH_LEN + 96];
            ckpt_step_dir(dir, sizeof dir, c->run_dir, steps[i]);
            if (steps[i] <= start || !ckpt_is_complete(dir)) continue;
            snprintf(to, sizeof to, "%s.set-aside", dir);
            for (int k = 2; access(to, F_OK) == 0; k++) snprintf(to, sizeof to, "%s.set-aside.%d", dir, k);
            if (rename(dir, to) == 0)
                fprintf(stderr, "pcmoe: --resume=%d: a newer checkpoint set aside, not deleted: %s -> %s\n", start,
                        dir, to);
        }
        comm_agree(r->comm, 1, NULL, NULL);
    }
}

int run_start(Run *r, int resume, int resume_step) {
    const Config *c = r->c;
    char err[2048] = "", dir[CONFIG_PATH_LEN + 64], ignored[1024] = "";
    int start = 0;
    if (resume) {
        int rc = 0, damaged = 0, from = resume_pick(c, resume_step, ignored, sizeof ignored, err, sizeof err);
        if (from < 0) rc = 2;
        ckpt_step_dir(dir, sizeof dir, c->run_dir, from);
        if (!rc) rc = checkpoint_load(r, dir, 1, &start, &damaged, err, sizeof err);
        if (rc && damaged) damaged_hint(c, from, err, sizeof err);
        comm_stop_if_failed(r->comm, rc, err);
        if (r->comm->rank == 0 && ignored[0])
            fprintf(stderr, "pcmoe: ignoring incomplete checkpoint(s): %s\n", ignored);
        if (r->comm->rank == 0) fprintf(stderr, "pcmoe: resuming from %s (step %d of %d)\n", dir, start, c->steps);
        if (resume_step >= 0) set_aside_newer(r, start);
    } else if (c->init_from[0]) {
        comm_stop_if_failed(r->comm, init_weights_from(r, err, sizeof err), err);
    }
    comm_stop_if_failed(r->comm, dp_setup(r, start, err, sizeof err), err);
    return start;
}

// ---------------------------------------------------------------------------------------------------

int run_eval(const Config *c, Comm *comm, const RunOptions *o) {
    Run run, *r = &run;
    run_open(r, c, comm, o, 1);
    int step = run_load_checkpoint(r, o->checkpoint), P = r->P;
    run_validate(r);
    double *all = mallocCheck(sizeof(double) * 2 * (size_t)P); // (P, 2) party, val_loss
    for (int q = 0; q < r->n; q++) {
        all[2 * q] = r->party[q].party;
        all[2 * q + 1] = r->party[q].s.val_loss;
    }
    run_gather_rows(r, all, 2);
    if (comm->rank == 0)
        for (int q = 0; q < P; q++)
            printf("party %d: val_loss %.6f nats/byte (%.4f bits/byte), step %d\n", (int)all[2 * q], all[2 * q + 1],
                   all[2 * q + 1] / log(2.0), step);
    free(all);
    run_close(r);
    return 0;
}
