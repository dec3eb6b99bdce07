// train.c: a training run. train_run() sets up the parties of the configured mode and runs the step
// loop; each mode has one step function, and step_pcmoe() is the product, read top to bottom.
#include "train.h"

#include <errno.h>        // errno
#include <signal.h>       // sigaction, SIGUSR1, SIGTERM
#include <math.h>         // sqrt, isfinite, INFINITY
#include <stdio.h>        // FILE
#include <stdlib.h>       // free
#include <string.h>       // memcpy, memset
#include <sys/resource.h> // getrusage

#ifdef _OPENMP
#include <omp.h>          // omp_set_num_threads
#endif

#include <unistd.h>       // unlink, rmdir

#include "autoconfig.h"   // HAVE_OPENBLAS_*
#include "backend.h"      // Backend, backend_cpu, backend_cuda_open
#include "bench.h"        // BenchTask, bench_load, bench_score, bench_accuracy
#include "ckpt.h"         // ckpt_save, ckpt_load, ckpt_latest, ckpt_read_weights
#include "exchange.h"     // Exchange
#include "pool.h"         // pool_owner, pool_packing_order
#include "generate.h"     // GenerateOptions, generate_text, generate_serve
#include "json.h"         // Json: --json of bench and generate
#include "record.h"       // record_open, record_commit, record_close (the study only)
#include "privacy.h"      // privacy_appearances, privacy_run_epsilon, privacy_noise_for_epsilon
#include "metrics.h"      // Metrics, StepStats
#include "util.h"         // fail, fail_usage, now_seconds, mallocCheck

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

typedef struct {
    int party;
    Dataset data;              // the party's private corpus
    Model model;               // pcmoe: its backbone and expert shard; local, fedavg: a whole model
    uint8_t *tokens, *targets; // (B, T) the step's batch
    StepStats s;               // metrics of the current step
    double dp_noise;           // the DP defence (privacy.h): this party's noise multiplier
    double dp_p;               // the chance that a random training window holds a given byte of its corpus
    long dp_windows;           // training windows it has drawn so far
} Party;

typedef struct {
    const Config *c;
    Comm *comm;
    int simulate;
    int P;                     // parties in the job
    int n;                     // parties computed in this process: 1, or P (simulate, centralized)
    Party *party;              // (n)
    Model pool;                // simulate: every expert, shared by the parties' models
    Model central;             // centralized: the one model, batch P*B
    uint8_t *ctok, *ctgt;      // centralized: (P*B, T)
    Exchange ex;               // pcmoe over MPI
    int *sim_rows;             // simulate: (L, m) rows each expert processed in the step, all parties
    double *sim_seconds;       // simulate: (n) each party's step time
    const Backend *be;         // run.device: where the models live and run
    OptimConfig oc;
    int nan_grad_step;         // test hook (--inject-fault nan-grad): the last party's gradient turns NaN here
    int dp;                    // the DP defence is on: rows crossing parties are clipped and noised (privacy.h)
    long dp_releases;          // rows one appearance of a byte can send: 2 x top_k x MoE layers
} Run;

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

static uint64_t shuffle_seed(const Config *c, int party) {
    if (c->shuffle_seed != 0) return (uint64_t)c->shuffle_seed + (uint64_t)party;
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1) fail("cannot read /dev/urandom for the private shuffle seed (set privacy.shuffle_seed)");
    fclose(f);
    return s;
}

// Sequential schedule: parties take turns in rounds of P steps, each round in an order drawn from the
// shared seed, so every party computes the same order without talking.
static int turn_of(const Config *c, int step) {
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

// pcmoe: whether `party` trains on a batch of its own in `step` (concurrent: always; sequential: on its turn).
static int party_trains(const Config *c, int step, int party) {
    return c->schedule == SCHEDULE_CONCURRENT || turn_of(c, step) == party;
}

double train_step(Model *m, const OptimConfig *oc, const uint8_t *tokens, const uint8_t *targets, int step,
                  int party, float *lr_out) {
    model_zero_grad(m);
    model_forward(m, tokens, targets);
    model_backward(m, tokens, targets);
    double grad_norm = sqrt(m->be->sum_squares(m->grads, m->n_params));
    if (!isfinite(m->loss) || !isfinite(grad_norm))
        fail("step %d, party %d: non-finite %s (loss %g, gradient norm %g); stopping", step + 1, party,
             isfinite(m->loss) ? "gradient" : "loss", m->loss, grad_norm);
    float lr = optim_lr(oc, step);
    m->be->adamw(oc, m->tensors, m->n_tensors, m->active, m->adam_steps, m->params, m->grads, m->adam_m,
                 m->adam_v, lr, optim_clip_scale(oc, grad_norm));
    *lr_out = lr;
    return grad_norm;
}

double train_evaluate(Model *m, const Dataset *ds, int n_batches, uint8_t *tokens, uint8_t *targets) {
    double total = 0.0;
    for (int i = 0; i < n_batches; i++) {
        data_val_batch(ds, tokens, targets, m->B, m->T, i, n_batches);
        model_forward(m, tokens, targets);
        total += m->ce;
    }
    return total / n_batches;
}

// Clips and updates one group of m's tensors that received gradient: its backbone (experts = 0), or the
// experts it holds of owner `owner` (experts = 1; owner < 0: all it holds). Each group is clipped by its
// own gradient norm: a party's backbone gradient is private, and an owner clips the gradients of its
// experts, summed over all parties, without learning anyone's backbone norm. Returns the group's norm.
static double update_group(Run *r, Model *m, float lr, int experts, int owner, int step, int party) {
    unsigned char *sel = m->selected;
    for (int i = 0; i < m->n_tensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        int is_expert = t->expert >= 0;
        sel[i] = m->active[i] && (experts ? is_expert && (owner < 0 || pool_owner(t->expert, r->P) == owner) : !is_expert);
    }
    double norm = optim_update_group(m->be, &r->oc, m->tensors, m->n_tensors, sel, m->adam_steps, m->params, m->grads,
                                     m->adam_m, m->adam_v, lr);
    if (!isfinite(norm)) fail("step %d, party %d: non-finite %s gradient; stopping", step + 1, party, experts ? "expert" : "backbone");
    return norm;
}

static void stats_train(StepStats *s, const Model *m, float lr, double grad_norm, double tokens, double dt) {
    s->has_train = 1;
    s->train_loss = m->loss;
    s->ce = m->ce;
    s->aux = m->aux;
    s->z = m->z;
    s->lr = lr;
    s->grad_norm = grad_norm;
    s->tokens_per_s = tokens / dt;
    s->flops = m->flops;
    if (!isfinite(m->loss)) fail("step %d, party %d: non-finite loss %g; stopping", s->step, s->party, m->loss);
}

// ---------------------------------------------------------------------------------------------------
// pcmoe over MPI: one party per rank. Every party makes the same exchange calls in the same order:
// with a batch it runs forward and backward through the shared experts; without one (sequential
// schedule, not its turn) it only serves its experts to the party whose turn it is.
static void step_pcmoe(Run *r, int step) {
    Party *p = &r->party[0];
    Model *m = &p->model;
    const Config *c = r->c;
    int B = c->batch_size, T = c->seq_len;
    int trains = party_trains(c, step, p->party);
    double t0 = now_seconds();
    model_zero_grad(m);
    m->flops = 0.0;
    // 1. forward and backward through the shared expert pool
    if (trains) {
        data_train_batch(&p->data, p->tokens, p->targets, B, T);
        model_forward(m, p->tokens, p->targets);
        model_backward(m, p->tokens, p->targets);
    } else {
        model_serve_forward(m);
        model_serve_backward(m);
        model_mark_active(m);
    }
    if (trains && step == r->nan_grad_step && p->party == r->P - 1) m->grads[0] = NAN; // test hook
    // 2. the party updates its backbone if it trained; as an owner, the experts that any party's rows reached
    float lr = optim_lr(&r->oc, step);
    double norm = trains ? update_group(r, m, lr, 0, -1, step, p->party) : 0.0;
    update_group(r, m, lr, 1, -1, step, p->party);
    if (trains) stats_train(&p->s, m, lr, norm, (double)B * T, now_seconds() - t0);
}

// pcmoe in one process (--simulate): the same parties' math with every expert local. Each party's model
// holds its backbone and points at the shared pool's experts, whose gradients therefore sum over the
// parties; each owner's experts are then clipped and updated as a group, exactly as the owner does.
static void step_pcmoe_simulate(Run *r, int step) {
    const Config *c = r->c;
    int B = c->batch_size, T = c->seq_len, L = c->n_layers, E = c->n_experts;
    int turn = c->schedule == SCHEDULE_SEQUENTIAL ? turn_of(c, step) : -1;
    int *rows = r->sim_rows; // rows each expert processed, all parties
    double *dt = r->sim_seconds;
    memset(rows, 0, sizeof(int) * L * E);
    memset(dt, 0, sizeof(double) * r->n);
    model_zero_grad(&r->pool);
    for (int q = 0; q < r->n; q++) {
        Party *p = &r->party[q];
        if (turn >= 0 && q != turn) continue;
        double t0 = now_seconds();
        p->model.flops = 0.0;
        model_zero_grad(&p->model);
        data_train_batch(&p->data, p->tokens, p->targets, B, T);
        model_forward(&p->model, p->tokens, p->targets);
        model_backward(&p->model, p->tokens, p->targets);
        for (int l = 0; l < L; l++)
            if (model_layer_is_moe(&p->model.cfg, l))
                for (int e = 0; e < E; e++) rows[l * E + e] += p->model.acts[l].moe.counts[e];
        dt[q] = now_seconds() - t0;
    }
    for (int i = 0; i < r->pool.n_tensors; i++) {
        const ParamTensor *t = &r->pool.tensors[i];
        r->pool.active[i] = t->expert < 0 ? 0 : rows[t->layer * E + t->expert] > 0;
    }
    float lr = optim_lr(&r->oc, step);
    for (int q = 0; q < r->n; q++) {
        Party *p = &r->party[q];
        if (turn >= 0 && q != turn) continue;
        double norm = update_group(r, &p->model, lr, 0, -1, step, q);
        stats_train(&p->s, &p->model, lr, norm, (double)B * T, dt[q]);
    }
    for (int owner = 0; owner < r->P; owner++) update_group(r, &r->pool, lr, 1, owner, step, owner);
}

// local and fedavg: each party trains a whole model on its own data; fedavg averages every weight
// across the parties every fedavg.every steps.
static void step_local(Run *r, int step) {
    Party *p = &r->party[0];
    Model *m = &p->model;
    int B = r->c->batch_size, T = r->c->seq_len;
    double t0 = now_seconds();
    m->flops = 0.0;
    data_train_batch(&p->data, p->tokens, p->targets, B, T);
    float lr;
    double norm = train_step(m, &r->oc, p->tokens, p->targets, step, p->party, &lr);
    if (r->c->mode == MODE_FEDAVG && (step + 1) % r->c->fedavg_every == 0 && r->P > 1) {
        m->be->sync(); // (MPI reads the parameters from the host side)
        comm_allreduce_floats(r->comm, MSG_FEDAVG_WEIGHTS, m->params, m->n_params);
        float inv = 1.0f / (float)r->P;
        for (size_t i = 0; i < m->n_params; i++) m->params[i] *= inv;
    }
    stats_train(&p->s, m, lr, norm, (double)B * T, now_seconds() - t0);
}

// centralized: one model on all parties' data; each step takes batch_size windows from every party
// (the windows concurrent pcmoe would see), so the token budget per step is the same.
static void step_centralized(Run *r, int step) {
    Model *m = &r->central;
    int B = r->c->batch_size, T = r->c->seq_len;
    size_t BT = (size_t)B * T;
    double t0 = now_seconds();
    m->flops = 0.0;
    for (int q = 0; q < r->n; q++)
        data_train_batch(&r->party[q].data, r->ctok + q * BT, r->ctgt + q * BT, B, T);
    float lr;
    double norm = train_step(m, &r->oc, r->ctok, r->ctgt, step, 0, &lr);
    double dt = now_seconds() - t0;
    for (int q = 0; q < r->n; q++) { // each party's share of the loss: the CE of its own windows
        double ce = 0.0;
        for (size_t i = q * BT; i < (q + 1) * BT; i++) ce += m->losses[i];
        stats_train(&r->party[q].s, m, lr, norm, (double)r->n * BT, dt);
        r->party[q].s.ce = ce / (double)BT;
        r->party[q].s.train_loss = m->loss - m->ce + r->party[q].s.ce;
        r->party[q].s.tokens_per_s = (double)BT / dt;
    }
}

// Validation loss of every party in this process on its own held-out split. In pcmoe over MPI every
// party evaluates at once, so the exchange calls of their forward passes line up.
static void evaluate(Run *r) {
    int nb = r->c->eval_batches;
    for (int q = 0; q < r->n; q++) {
        Party *p = &r->party[q];
        Model *m = r->c->mode == MODE_CENTRALIZED ? &r->central : &p->model;
        uint8_t *tok = r->c->mode == MODE_CENTRALIZED ? r->ctok : p->tokens;
        uint8_t *tgt = r->c->mode == MODE_CENTRALIZED ? r->ctgt : p->targets;
        if (r->c->mode == MODE_CENTRALIZED) model_set_batch(m, r->c->batch_size);
        p->s.has_val = 1;
        p->s.val_loss = train_evaluate(m, &p->data, nb, tok, tgt);
        if (r->c->mode == MODE_CENTRALIZED) model_set_batch(m, m->B_alloc);
    }
}

static double rss_peak_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss * 1024.0;
}

// Memory of party q as held in this process (bytes by category; exchange buffers at their peak).
static MemStats party_mem(const Run *r, int q) {
    MemStats mem = r->c->mode == MODE_CENTRALIZED ? r->central.mem : r->party[q].model.mem;
    if (r->c->mode == MODE_PCMOE && !r->simulate && r->P > 1) mem.buffers = r->ex.peak;
    return mem;
}

// ---------------------------------------------------------------------------------------------------
// Preemption: SIGUSR1 (Slurm's --signal warning before the time limit) or SIGTERM asks the job to stop.
// The handler only records it; every step, the ranks agree whether any rank got one, and if so all
// write a checkpoint and exit with TRAIN_EXIT_PREEMPTED.
static volatile sig_atomic_t stop_signal = 0;

static void on_stop_signal(int sig) { stop_signal = sig; }

static void signals_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

// ---------------------------------------------------------------------------------------------------
// Set-up helpers

static int load_data(Run *r, char *err, size_t len) {
    const Config *c = r->c;
    for (int q = 0; q < r->n; q++) {
        Party *p = &r->party[q];
        char e[1536];
        if (data_load(&p->data, c->data_path[p->party], c->val_fraction, c->seq_len, (uint64_t)c->seed + 1 + p->party, e, sizeof e))
            return error_set(err, len, "party %d: data.%d = %s", p->party, p->party, e);
    }
    return 0;
}

static void build_models(Run *r) {
    const Config *c = r->c;
    ModelConfig mc = model_config_from(c);
    int B = c->batch_size, T = c->seq_len, E = c->n_experts, P = r->P;
    int *owned = mallocCheck(sizeof(int) * E);
    if (c->mode == MODE_CENTRALIZED) {
        model_create_on(&r->central, r->be, &mc, NULL, 1, P * B, T);
        model_init(&r->central, backbone_seed(c, 0), (uint64_t)c->seed);
        r->ctok = mallocCheck((size_t)P * B * T);
        r->ctgt = mallocCheck((size_t)P * B * T);
    } else if (c->mode == MODE_PCMOE && r->simulate) {
        model_create_on(&r->pool, r->be, &mc, NULL, 1, 1, T); // experts only are used
        r->sim_rows = callocCheck((size_t)c->n_layers * E, sizeof(int));
        r->sim_seconds = callocCheck((size_t)r->n, sizeof(double));
        model_init(&r->pool, 0, (uint64_t)c->seed);
        for (int e = 0; e < E; e++) owned[e] = 0;
        for (int q = 0; q < r->n; q++) {
            Model *m = &r->party[q].model;
            model_create_on(m, r->be, &mc, owned, 1, B, T);
            model_init(m, backbone_seed(c, q), (uint64_t)c->seed);
            for (int l = 0; l < c->n_layers; l++) // the party's model reaches the pool's experts directly
                for (int e = 0; e < E; e++) {
                    LayerWeights *w = &m->w.layer[l], *g = &m->g.layer[l];
                    w->exp_gate[e] = r->pool.w.layer[l].exp_gate[e];
                    w->exp_up[e] = r->pool.w.layer[l].exp_up[e];
                    w->exp_down[e] = r->pool.w.layer[l].exp_down[e];
                    g->exp_gate[e] = r->pool.g.layer[l].exp_gate[e];
                    g->exp_up[e] = r->pool.g.layer[l].exp_up[e];
                    g->exp_down[e] = r->pool.g.layer[l].exp_down[e];
                }
            pool_packing_order(m->expert_order, E, P);
            m->shuffle_on = c->shuffle_rows;
            rng_seed(&m->shuffle, shuffle_seed(c, q));
        }
    } else {
        Party *p = &r->party[0];
        for (int e = 0; e < E; e++) owned[e] = c->mode != MODE_PCMOE || pool_owner(e, P) == p->party;
        int exchanged = c->mode == MODE_PCMOE && P > 1; // experts run at their owners
        if (exchanged && c->recompute_attention == RECOMPUTE_AUTO) mc.recompute_attention = 1; // (a pcmoe party: memory first)
        model_create_on(&p->model, r->be, &mc, owned, !exchanged, B, T);
        model_init(&p->model, backbone_seed(c, p->party), (uint64_t)c->seed);
        if (exchanged) { // (one party alone holds every expert: nothing to exchange)
            int direct = c->cuda_aware_mpi == CUDA_AWARE_ON || (c->cuda_aware_mpi == CUDA_AWARE_AUTO && comm_cuda_aware());
            if (r->be->device && p->party == 0)
                fprintf(stderr, "pcmoe: run.device = cuda: rows cross parties %s (run.cuda_aware_mpi = %s)\n",
                        direct ? "as device buffers handed to MPI" : "through page-locked host buffers", CUDA_AWARE_NAMES[c->cuda_aware_mpi]);
            exchange_create(&r->ex, r->be, direct, r->comm, E, c->d_model, c->expert_ff, c->n_layers, B * T * c->top_k, c->check_finite,
                            c->recompute_experts != RECOMPUTE_OFF); // (auto: the owner recomputes)
            p->model.ex = &r->ex;
            r->ex.noise_std = c->noise_std;
            rng_seed(&r->ex.noise, shuffle_seed(c, p->party) ^ 0x9015EULL);
            if (c->record_dir[0]) {
                fprintf(stderr, "pcmoe: WARNING: privacy.record_received = %s: party %d records every row it receives from "
                        "other parties (a reconstruction-attack study; never use it with real private data)\n", c->record_dir, p->party);
                r->ex.tap = p->model.tap = record_open(c->record_dir, p->party);
            }
            memcpy(p->model.expert_order, r->ex.order, sizeof(int) * E);
            p->model.shuffle_on = c->shuffle_rows;
            rng_seed(&p->model.shuffle, shuffle_seed(c, p->party));
        }
    }
    for (int q = 0; q < r->n; q++) {
        r->party[q].tokens = mallocCheck((size_t)B * T);
        r->party[q].targets = mallocCheck((size_t)B * T);
    }
    free(owned);
}

static void free_run(Run *r) {
    for (int q = 0; q < r->n; q++) {
        Party *p = &r->party[q];
        if (r->c->mode != MODE_CENTRALIZED) model_free(&p->model);
        data_free(&p->data);
        free(p->tokens);
        free(p->targets);
    }
    if (r->c->mode == MODE_CENTRALIZED) { model_free(&r->central); free(r->ctok); free(r->ctgt); }
    if (r->c->mode == MODE_PCMOE && r->simulate) { model_free(&r->pool); free(r->sim_rows); free(r->sim_seconds); }
    if (r->c->mode == MODE_PCMOE && !r->simulate && r->P > 1) {
        record_close(r->ex.tap);
        exchange_free(&r->ex);
    }
    free(r->party);
    backend_cuda_close(); // (nothing when none was opened)
}

// ---------------------------------------------------------------------------------------------------
// Metrics: rank 0 logs every party's stats (gathered with privacy.share_metrics, or all in this process),
// or each party logs its own.
typedef struct {
    Metrics mt;
    int gather;          // every party's stats go to rank 0
    int writes;          // this rank writes a metrics file
    int n_shown;         // parties this rank logs and shows
    StepStats *shown;    // (n_shown) this step's
    StepStats *last;     // (n_shown) each party's latest train and validation numbers, for the summary
    double *best;        // (n_shown) best validation loss
    double *packed;      // (P, STEP_STATS_DOUBLES) gather buffer
    int io_failed;       // a metrics line could not be written: io_err says why
    char io_err[2048];
} Log;

static void log_step(Run *r, Log *lg, int log_now) {
    Comm *comm = r->comm;
    if (!log_now) { // a progress redraw on a terminal only
        if (comm->rank == 0 && lg->writes && lg->mt.tty) {
            int n = r->n < lg->n_shown ? r->n : lg->n_shown;
            for (int q = 0; q < n; q++) lg->shown[q] = r->party[q].s;
            metrics_progress(&lg->mt, lg->shown, n, r->c->steps, 0);
        }
        return;
    }
    if (lg->gather) {
        step_stats_pack(&r->party[0].s, lg->packed);
        comm_gather_doubles(comm, MSG_METRICS, lg->packed, STEP_STATS_DOUBLES, lg->packed);
        if (comm->rank == 0)
            for (int q = 0; q < r->P; q++) step_stats_unpack(&lg->shown[q], lg->packed + (size_t)q * STEP_STATS_DOUBLES);
    } else {
        for (int q = 0; q < lg->n_shown; q++) lg->shown[q] = r->party[q].s;
    }
    if (!lg->writes) return;
    for (int q = 0; q < lg->n_shown; q++) {
        const StepStats *s = &lg->shown[q];
        StepStats *last = &lg->last[q];
        if (!lg->io_failed && metrics_log(&lg->mt, s, lg->io_err, sizeof lg->io_err)) lg->io_failed = 1;
        if (s->has_val && s->val_loss < lg->best[q]) lg->best[q] = s->val_loss;
        StepStats keep = *last;
        *last = *s;
        if (!s->has_train) { last->has_train = keep.has_train; last->train_loss = keep.train_loss; last->flops = keep.flops; }
        if (!s->has_val) { last->has_val = keep.has_val; last->val_loss = keep.val_loss; }
    }
    if (comm->rank == 0) metrics_progress(&lg->mt, lg->shown, lg->n_shown, r->c->steps, 1);
}

// ---------------------------------------------------------------------------------------------------
// Ends the job when any rank failed (rc != 0 there: 2 bad input, 1 a file that could not be written),
// every rank with the worst status. A collective: every rank calls it at the same point, so MPI shuts
// down cleanly, without a hang. The failing ranks print their messages; when every rank failed (the same
// cause everywhere), only the lowest does.
static void stop_if_any_failed(Comm *comm, int rc, const char *err) {
    int first = -1, n_bad = 0;
    if (comm_agree(comm, rc == 0, &first, &n_bad)) return;
    int code = comm_max_int(comm, rc);
    int print = rc && (n_bad < comm->size || comm->rank == first);
    fail_usage(code, print ? 1 : -1, "%s", rc ? err : "stopping");
}

// ---------------------------------------------------------------------------------------------------
// Checkpoints: one file per rank; what goes in it is this rank's model, AdamW state, samplers and
// private shuffle (see ckpt.h). rngs: scratch for P sampler states.

static CkptState ckpt_state(Run *r, Rng *rngs) {
    CkptState s = {.party = r->party[0].party, .c = r->c, .data_rng = rngs};
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

// Writes this step's checkpoint on every rank, then rank 0 marks it complete, then old ones are pruned.
static void checkpoint_write(Run *r, int step_done) {
    const Config *c = r->c;
    Comm *comm = r->comm;
    char dir[CONFIG_PATH_LEN + 64], path[CONFIG_PATH_LEN + 96], err[2048] = "";
    ckpt_step_dir(dir, sizeof dir, c->run_dir, step_done);
    Rng *rngs = mallocCheck(sizeof(Rng) * (size_t)r->n);
    CkptState s = ckpt_state(r, rngs);
    s.step = step_done;
    r->be->sync(); // the writer reads the parameters and AdamW state from the host side
    ckpt_party_file(path, sizeof path, dir, s.party);
    int rc = mkdir_p(dir) ? error_set(err, sizeof err, "%s: cannot create: %s", dir, strerror(errno)) : ckpt_save(path, &s, err, sizeof err);
    free(rngs);
    if (!comm_agree(comm, rc == 0, NULL, NULL)) { // not every party's file: remove this step's files and directory
        unlink(path);
        comm_agree(comm, 1, NULL, NULL);
        if (comm->rank == 0) rmdir(dir);
        char why[2200];
        snprintf(why, sizeof why, "checkpoint of step %d not written: %s (earlier complete checkpoints are intact)", step_done, err);
        stop_if_any_failed(comm, rc ? 1 : 0, why);
    }
    if (comm->rank == 0) { // the marker: written last, so a directory without it is never loaded
        char marker[CONFIG_PATH_LEN + 96], text[64];
        ckpt_marker_file(marker, sizeof marker, dir);
        int n = snprintf(text, sizeof text, "step %d, %d parties\n", step_done, c->n_parties);
        rc = write_file_atomic(marker, text, (size_t)n, err, sizeof err);
    }
    stop_if_any_failed(comm, rc, err);
    // keep the newest checkpoint.keep complete checkpoints: unmark, then delete the files, then the directory.
    // Every rank lists them before rank 0 removes a marker: a rank listing later would see fewer, skip
    // the agreements below, and the ranks' collectives would no longer match (a hang).
    int steps[4096], n = ckpt_list(c->run_dir, steps, 4096);
    comm_agree(comm, 1, NULL, NULL);
    for (int i = 0; i + c->ckpt_keep < n; i++) {
        ckpt_step_dir(dir, sizeof dir, c->run_dir, steps[i]);
        char marker[CONFIG_PATH_LEN + 96];
        ckpt_marker_file(marker, sizeof marker, dir);
        if (comm->rank == 0) unlink(marker);
        comm_agree(comm, 1, NULL, NULL);
        ckpt_party_file(path, sizeof path, dir, r->c->mode == MODE_CENTRALIZED ? 0 : r->party[0].party);
        unlink(path);
        comm_agree(comm, 1, NULL, NULL);
        if (comm->rank == 0) rmdir(dir);
    }
}

// Loads this rank's file of checkpoint directory `dir` into the run. Returns 0, or 2 with err set.
static int checkpoint_load(Run *r, const char *dir, int *step, char *err, size_t len) {
    Rng *rngs = mallocCheck(sizeof(Rng) * (size_t)r->n);
    CkptState s = ckpt_state(r, rngs);
    char path[CONFIG_PATH_LEN + 96];
    ckpt_party_file(path, sizeof path, dir, s.party);
    int rc = ckpt_load(path, &s, err, len);
    if (!rc) {
        for (int q = 0; q < s.n_data; q++) r->party[q].data.rng = rngs[q];
        *step = s.step;
    }
    free(rngs);
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
    if (!ckpt_is_complete(dir))
        return error_set(err, len, "train.init_from = %s: not a complete checkpoint directory (no %s marker)", dir, CKPT_MARKER);
    ckpt_party_file(path, sizeof path, dir, 0);
    size_t text_len = 1 << 16;
    char *text = mallocCheck(text_len), why[1024];
    int step, party, rc = ckpt_peek(path, text, text_len, &step, &party, err, len);
    Config *src = mallocCheck(sizeof *src);
    if (!rc && config_load_text(src, text, why, sizeof why)) rc = error_set(err, len, "train.init_from: %s: %s", path, why);
    if (!rc && config_diff_model(src, c, 0, why, sizeof why))
        rc = error_set(err, len, "train.init_from = %s: another model: %s", dir, why);
    int Ps = src->n_parties, pooled = src->mode == MODE_PCMOE && Ps > 1;
    if (!rc && !pooled && src->mode != MODE_CENTRALIZED && Ps > 1)
        rc = error_set(err, len, "train.init_from = %s: a %s run of %d parties holds one model per party; start from a centralized, single-party or pcmoe checkpoint",
                       dir, MODE_NAMES[src->mode], Ps);
    if (!rc && pooled && Ps != c->n_parties)
        rc = error_set(err, len, "train.init_from = %s: a pcmoe checkpoint of %d parties gives each party its own backbone; this run has parties.count = %d",
                       dir, Ps, c->n_parties);
    free(text);
    free(src);
    if (rc) return rc;
    r->be->sync(); // (the host writes the models' buffers)
    int shards = pooled ? Ps : 1; // (the source's experts: in party_0.h5, or with their owners)
    if (c->mode == MODE_CENTRALIZED) return ckpt_read_weights(&r->central, dir, 0, 0, shards, err, len);
    if (r->pool.n_tensors && ckpt_read_weights(&r->pool, dir, 0, 1, shards, err, len)) return 2;
    for (int q = 0; q < r->n; q++)
        if (ckpt_read_weights(&r->party[q].model, dir, pooled ? r->party[q].party : 0, 0, shards, err, len)) return 2;
    if (r->comm->rank == 0) fprintf(stderr, "pcmoe: starting from the weights of %s (its step %d); AdamW state fresh\n", dir, step);
    return 0;
}

// --json OUT: j written whole or not at all; frees it. Returns 0, or 1 with "--json OUT: cannot write: why"
// in err.
static int json_write_option(Json *j, const char *path, char *err, size_t len) {
    char why[CONFIG_PATH_LEN + 256] = "";
    int rc = json_write(j, path, why, sizeof why);
    if (rc) error_set(err, len, "--json %s", why);
    return rc ? 1 : 0;
}

// pcmoe bench: every party of this process scores the task with its model (pcmoe over MPI: the exchange
// runs, every party making the same passes); rank 0 prints each party's acc and acc_norm and, with
// --json, writes them, with the log-likelihood of every (item, choice) of the parties in its process.
static int bench_run(Run *r, const TrainOptions *opt, int step) {
    const Config *c = r->c;
    Comm *comm = r->comm;
    BenchTask t;
    char err[2048] = "";
    stop_if_any_failed(comm, bench_load(&t, opt->bench_task, err, sizeof err), err);
    int P = r->P, one_process = r->n == P && (c->mode == MODE_CENTRALIZED || r->simulate);
    double *ll = mallocCheck(sizeof(double) * (size_t)t.n_pairs * r->n), *all = mallocCheck(sizeof(double) * 3 * (size_t)P);
    for (int q = 0; q < r->n; q++) {
        Party *p = &r->party[q];
        Model *m = c->mode == MODE_CENTRALIZED ? &r->central : &p->model;
        if (c->mode == MODE_CENTRALIZED) model_set_batch(m, c->batch_size);
        bench_score(m, &t, c->mode == MODE_CENTRALIZED ? r->ctok : p->tokens, c->mode == MODE_CENTRALIZED ? r->ctgt : p->targets,
                    ll + (size_t)q * t.n_pairs);
        double acc, acc_norm;
        bench_accuracy(&t, ll + (size_t)q * t.n_pairs, &acc, &acc_norm);
        double mine[3] = {p->party, acc, acc_norm};
        memcpy(all + 3 * (size_t)q, mine, sizeof mine);
    }
    if (!one_process) {
        double mine[3];
        memcpy(mine, all, sizeof mine);
        comm_gather_doubles(comm, MSG_METRICS, mine, 3, all);
    }
    int rc = 0;
    if (comm->rank == 0) {
        for (int q = 0; q < P; q++)
            printf("party %d: acc %.4f acc_norm %.4f (%d items of %s), step %d\n", (int)all[3 * q], all[3 * q + 1], all[3 * q + 2],
                   t.n_items, opt->bench_task, step);
        if (opt->bench_json) {
            Json j = {0};
            json_open_object(&j);
            json_member_string(&j, "task", opt->bench_task);
            json_member_int(&j, "items", t.n_items);
            json_member_int(&j, "step", step);
            json_key(&j, "parties");
            json_open_array(&j);
            for (int q = 0; q < P; q++) {
                json_open_object(&j);
                json_member_int(&j, "party", (int)all[3 * q]);
                json_member_number(&j, "acc", all[3 * q + 1]);
                json_member_number(&j, "acc_norm", all[3 * q + 2]);
                json_close_object(&j);
            }
            json_close_array(&j);
            json_key(&j, "loglik");
            json_open_object(&j);
            for (int q = 0; q < r->n; q++) {
                char key[16];
                snprintf(key, sizeof key, "%d", r->party[q].party);
                json_key(&j, key);
                json_open_array(&j);
                for (int i = 0; i < t.n_items; i++) {
                    json_open_array(&j);
                    for (int c = t.first[i]; c < t.first[i + 1]; c++) json_number(&j, ll[(size_t)q * t.n_pairs + c]);
                    json_close_array(&j);
                }
                json_close_array(&j);
            }
            json_close_object(&j);
            json_close_object(&j);
            json_end_line(&j);
            rc = json_write_option(&j, opt->bench_json, err, sizeof err);
        }
    }
    free(ll);
    free(all);
    bench_free(&t);
    if (rc) fprintf(stderr, "pcmoe: error: %s\n", err);
    return rc ? 1 : 0;
}

// The DP defence (privacy.clip_norm, pcmoe over MPI): this party's noise multiplier (given, or the least
// that keeps its planned run within privacy.target_epsilon) goes to the exchange, and the accountant's
// counts start from the windows drawn before `start` (a resumed run). Returns 0, or 2 with err set.
static int dp_setup(Run *r, int start, char *err, size_t len) {
    const Config *c = r->c;
    if (c->clip_norm <= 0 || c->mode != MODE_PCMOE || r->simulate || r->P < 2) return 0;
    Party *p = &r->party[0];
    int moe = 0, B = c->batch_size, T = c->seq_len;
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
        if (party_trains(c, step, p->party)) {
            planned += B;
            if (step < start) p->dp_windows += B;
        }
    double tail = c->dp_delta / 2.0;
    int appear = privacy_appearances(planned, p->dp_p, tail);
    if (c->target_epsilon > 0) {
        p->dp_noise = privacy_noise_for_epsilon(c->target_epsilon, r->dp_releases, appear, tail);
        if (!isfinite(p->dp_noise))
            return error_set(err, len, "privacy.target_epsilon = %g: out of reach for party %d (a byte in up to %d windows, %ld rows each)",
                             c->target_epsilon, p->party, appear, r->dp_releases);
    }
    r->ex.noise_multiplier = (float)p->dp_noise;
    fprintf(stderr, "pcmoe: party %d: DP defence: rows clipped to %g, gradient rows to %g, noise multiplier %.4g; planned epsilon %.4g at "
            "delta %g (a byte in up to %d of its %ld windows, %ld rows sent per window)\n", p->party, c->clip_norm, c->grad_clip_norm,
            p->dp_noise, privacy_run_epsilon(p->dp_noise, r->dp_releases, appear, tail), c->dp_delta, appear, planned, r->dp_releases);
    return 0;
}

// pcmoe generate: the prompting party's process samples the text (its backbone and router; in pcmoe over MPI
// its experts' owners serve them, pass for pass); it prints the prompt and the text on stdout.
static int generate_run(Run *r, const TrainOptions *opt, int step) {
    const Config *c = r->c;
    const GenerateOptions *o = opt->gen;
    Comm *comm = r->comm;
    int P = r->P, one_process = r->n == P && (c->mode == MODE_CENTRALIZED || r->simulate);
    int mine = one_process || comm->party == o->party;
    Model *m = c->mode == MODE_CENTRALIZED ? &r->central : &r->party[one_process ? o->party : 0].model;
    char err[2048] = "";
    // the prompt, read by the prompting party only
    uint8_t *text = NULL;
    int prompt_len = 0, rc = 0;
    if (mine) {
        size_t len = o->prompt ? strlen(o->prompt) : 0, cap = 0;
        if (o->prompt_file) {
            int frc = file_append(o->prompt_file, &text, &len, &cap);
            if (frc == FILE_CANNOT_OPEN) rc = error_set(err, sizeof err, "--prompt-file %s: cannot read: %s", o->prompt_file, strerror(errno));
            else if (frc == FILE_READ_ERROR) rc = error_set(err, sizeof err, "--prompt-file %s: read error", o->prompt_file);
            else if (frc == FILE_NO_MEMORY) fail("out of memory reading the prompt");
            else if (len >= (1u << 30)) rc = error_set(err, sizeof err, "--prompt-file %s: over 1 GiB", o->prompt_file);
        }
        if (!rc && len == 0) rc = error_set(err, sizeof err, "%s: empty prompt; give at least one byte", o->prompt_file ? o->prompt_file : "--prompt");
        if (!rc) {
            uint8_t *all = mallocCheck(len + (size_t)o->max_new);
            memcpy(all, o->prompt_file ? text : (const uint8_t *)o->prompt, len);
            free(text);
            text = all;
            prompt_len = (int)len;
        }
    }
    stop_if_any_failed(comm, rc, err);
    if (mine) {
        GenerateStep *steps = mallocCheck(sizeof(GenerateStep) * (size_t)o->max_new);
        double t0 = now_seconds(), positions = generate_text(m, o, text, prompt_len, steps), dt = now_seconds() - t0;
        fwrite(text, 1, (size_t)prompt_len + o->max_new, stdout);
        printf("\n");
        fflush(stdout);
        fprintf(stderr, "pcmoe: party %d generated %d bytes from the checkpoint of step %d in %.2f s (%.1f bytes/s); %.0f positions "
                "through the model (%s)\n", o->party, o->max_new, step, dt, o->max_new / (dt > 0 ? dt : 1e-9), positions,
                o->no_cache ? "--no-cache: every context whole" : "KV cache");
        if (o->json) {
            Json j = {0};
            json_open_object(&j);
            json_member_int(&j, "party", o->party);
            json_member_int(&j, "step", step);
            json_member_int(&j, "prompt_bytes", prompt_len);
            json_member_int(&j, "max_new", o->max_new);
            json_member_number(&j, "temperature", o->temperature);
            json_member_int(&j, "top_k", o->top_k);
            json_member_uint(&j, "seed", o->seed);
            json_member_bool(&j, "kv_cache", !o->no_cache);
            json_member_fixed(&j, "positions", positions, 0);
            json_member_fixed(&j, "seconds", dt, 6);
            json_key(&j, "bytes");
            json_open_array(&j);
            for (int i = 0; i < o->max_new; i++) json_int(&j, steps[i].byte);
            json_close_array(&j);
            json_key(&j, "logprobs");
            json_open_array(&j);
            for (int i = 0; i < o->max_new; i++) json_number(&j, steps[i].logprob);
            json_close_array(&j);
            json_key(&j, "contexts");
            json_open_array(&j);
            for (int i = 0; i < o->max_new; i++) json_int(&j, steps[i].context);
            json_close_array(&j);
            json_close_object(&j);
            json_end_line(&j);
            rc = json_write_option(&j, o->json, err, sizeof err);
        }
        free(steps);
    } else if (c->mode == MODE_PCMOE && P > 1) {
        generate_serve(m, o); // (local, fedavg: the other parties' models take no part)
    }
    free(text);
    stop_if_any_failed(comm, rc, err);
    return 0;
}

// ---------------------------------------------------------------------------------------------------

int train_run(const Config *c, Comm *comm, const TrainOptions *opt) {
    threads_setup(c);
    int P = c->n_parties;
    int one_process = c->mode == MODE_CENTRALIZED || opt->simulate;
    int want_ranks = one_process ? 1 : P;
    if (comm->size != want_ranks) // every rank sees this: rank 0 says it
        fail_usage(2, 0, "parties.count = %d, parties.mode = %s%s: needs %d MPI rank%s, the job has %d", P, MODE_NAMES[c->mode],
                   opt->simulate ? " with --simulate" : "", want_ranks, want_ranks > 1 ? "s" : "", comm->size);
    if (opt->gen && opt->gen->party >= P)
        fail_usage(2, 0, "--party %d: parties.count = %d: give a party from 0 to %d", opt->gen->party, P, P - 1);
    if (opt->gen && opt->simulate && c->mode != MODE_PCMOE)
        fail_usage(2, 0, "--simulate: parties.mode = %s has no expert exchange to simulate; run generate as training ran", MODE_NAMES[c->mode]);
    comm_setup(comm, one_process ? 1 : P);

    Run run = {.c = c, .comm = comm, .simulate = opt->simulate, .P = P, .n = one_process ? P : 1, .be = &backend_cpu};
    Run *r = &run;
    char err[2048] = "";
    if (c->device == DEVICE_CUDA) { // every rank opens its GPU; any failure ends the job on every rank
        r->be = backend_cuda_open(c->gpu, comm_local_rank(comm), c->tf32, err, sizeof err);
        stop_if_any_failed(comm, r->be ? 0 : 2, err);
    }
    r->oc = optim_config_from(c);
    r->party = callocCheck((size_t)r->n, sizeof(Party));
    for (int q = 0; q < r->n; q++) r->party[q].party = one_process ? q : comm->party;

    // 1. each party reads its own corpus; every rank learns whether all could
    if (!opt->gen || (c->clip_norm > 0 && c->target_epsilon > 0)) // (generate reads no corpus, unless for the DP noise)
        stop_if_any_failed(comm, load_data(r, err, sizeof err), err);
    build_models(r);
    r->nan_grad_step = -1;
    if (opt->fault && !strcmp(opt->fault, "nan-grad")) r->nan_grad_step = 5; // during step 6
    else if (c->mode == MODE_PCMOE && !opt->simulate && P > 1 && opt->fault) exchange_set_fault(&r->ex, opt->fault, P - 1);

    // 2. a checkpoint to evaluate, or to resume from
    int start = 0;
    if (opt->eval_dir || opt->resume) {
        char dir[CONFIG_PATH_LEN + 64], ignored[1024] = "";
        int rc = 0;
        if (opt->eval_dir) {
            snprintf(dir, sizeof dir, "%s", opt->eval_dir);
            if (!ckpt_is_complete(dir)) rc = error_set(err, sizeof err, "%s: not a complete checkpoint directory (no %s marker)", dir, CKPT_MARKER);
        } else {
            int latest = ckpt_latest(c->run_dir, ignored, sizeof ignored);
            if (latest < 0) rc = error_set(err, sizeof err, "run.dir = %s: no complete checkpoint to resume from%s%s", c->run_dir, ignored[0] ? "; incomplete: " : "", ignored);
            ckpt_step_dir(dir, sizeof dir, c->run_dir, latest);
        }
        if (!rc) rc = checkpoint_load(r, dir, &start, err, sizeof err);
        if (!rc && r->simulate && c->mode == MODE_PCMOE) { // the other parties' backbones, and every expert
            for (int q = 1; q < r->n && !rc; q++) rc = ckpt_read_weights(&r->party[q].model, dir, q, 0, P, err, sizeof err);
            if (!rc) rc = ckpt_read_weights(&r->pool, dir, 0, 1, P, err, sizeof err);
        }
        stop_if_any_failed(comm, rc, err);
        if (comm->rank == 0 && ignored[0]) fprintf(stderr, "pcmoe: ignoring incomplete checkpoint(s): %s\n", ignored);
        if (comm->rank == 0 && !opt->eval_dir) fprintf(stderr, "pcmoe: resuming from %s (step %d of %d)\n", dir, start, c->steps);
    }
    else if (c->init_from[0]) stop_if_any_failed(comm, init_weights_from(r, err, sizeof err), err);
    stop_if_any_failed(comm, dp_setup(r, start, err, sizeof err), err);
    if (opt->gen) {
        int rc = generate_run(r, opt, start);
        if (!rc && opt->audit_path) stop_if_any_failed(comm, comm_write_audit(comm, opt->audit_path, err, sizeof err), err);
        free_run(r);
        return rc;
    }
    if (opt->bench_task) {
        int rc = bench_run(r, opt, start);
        free_run(r);
        return rc;
    }
    if (opt->eval_dir) { // pcmoe eval: every party's validation loss, then stop
        evaluate(r);
        double mine[2] = {r->party[0].party, r->party[0].s.val_loss};
        double *all = mallocCheck(sizeof(double) * 2 * (size_t)P);
        if (one_process) for (int q = 0; q < r->n; q++) { all[2 * q] = q; all[2 * q + 1] = r->party[q].s.val_loss; }
        else comm_gather_doubles(comm, MSG_METRICS, mine, 2, all);
        if (comm->rank == 0)
            for (int q = 0; q < (one_process ? r->n : P); q++)
                printf("party %d: val_loss %.6f nats/byte (%.4f bits/byte), step %d\n", (int)all[2 * q], all[2 * q + 1], all[2 * q + 1] / log(2.0), start);
        free(all);
        free_run(r);
        return 0;
    }
    int checkpoints = c->ckpt_every > 0 && !opt->simulate;
    if (c->ckpt_every > 0 && opt->simulate && comm->rank == 0) fprintf(stderr, "pcmoe: note: --simulate writes no checkpoints\n");

    // 3. outputs: the job's metrics on rank 0, or, with privacy.share_metrics = false, one file per party
    Log lg = {.gather = !one_process && P > 1 && c->share_metrics};
    lg.writes = comm->rank == 0 || (!one_process && !c->share_metrics);
    char suffix[32] = "";
    if (!one_process && P > 1 && !c->share_metrics) snprintf(suffix, sizeof suffix, ".party_%d", comm->party);
    int rc = lg.writes ? metrics_open(&lg.mt, c, suffix, opt->force, comm->rank == 0, opt->resume ? start : -1, err, sizeof err) : 0;
    stop_if_any_failed(comm, rc, err);
    lg.n_shown = lg.gather || one_process ? P : 1;
    lg.shown = callocCheck((size_t)lg.n_shown, sizeof(StepStats));
    lg.last = callocCheck((size_t)lg.n_shown, sizeof(StepStats));
    lg.best = mallocCheck(sizeof(double) * lg.n_shown);
    for (int i = 0; i < lg.n_shown; i++) lg.best[i] = INFINITY;
    lg.packed = mallocCheck(sizeof(double) * STEP_STATS_DOUBLES * (size_t)P);
    double tokens_seen = 0.0;
    int exit_status = 0;
    signals_install();

    // step -1: the untrained model's validation loss (not when resuming)
    for (int step = start > 0 ? start : -1; step < c->steps; step++) {
        int stop_here = opt->stop_after > 0 && step + 1 == opt->stop_after;
        int last_step = step + 1 == c->steps || stop_here;
        int eval_now = step < 0 ? c->eval_every > 0 : last_step || (c->eval_every > 0 && (step + 1) % c->eval_every == 0);
        if (step < 0 && !eval_now) continue;
        double sent0 = comm_total_sent(comm), recv0 = comm_total_recv(comm);
        for (int q = 0; q < r->n; q++) r->party[q].s = (StepStats){.step = step + 1, .party = r->party[q].party};

        // 1. one training step of the configured mode
        if (step >= 0) {
            if (c->mode == MODE_PCMOE) opt->simulate ? step_pcmoe_simulate(r, step) : step_pcmoe(r, step);
            else if (c->mode == MODE_CENTRALIZED) step_centralized(r, step);
            else step_local(r, step);
        }
        // 2. validation on eval steps
        if (eval_now) evaluate(r);

        // 3. metrics: this process's parties, then (share_metrics) every party's, gathered to rank 0
        for (int q = 0; q < r->n; q++) {
            StepStats *s = &r->party[q].s;
            if (s->has_train) tokens_seen += (double)c->batch_size * c->seq_len;
            s->bytes_sent = comm_total_sent(comm) - sent0;
            s->bytes_recv = comm_total_recv(comm) - recv0;
            s->mem = party_mem(r, q);
            s->rss_peak = rss_peak_bytes();
            s->device_peak = (double)r->be->peak_bytes();
            if (r->dp) { // the accountant: every window this party has drawn (privacy.h)
                Party *p = &r->party[q];
                if (s->has_train) p->dp_windows += c->batch_size;
                double tail = c->dp_delta / 2.0;
                s->has_dp = 1;
                s->noise_multiplier = p->dp_noise;
                s->epsilon = privacy_run_epsilon(p->dp_noise, r->dp_releases, privacy_appearances(p->dp_windows, p->dp_p, tail), tail);
            }
        }
        log_step(r, &lg, step < 0 || last_step || eval_now || (step + 1) % c->log_every == 0);

        // 4. every rank learns whether any failed to write its files (then all stop) or got a stop signal
        int io_rc = lg.io_failed;
        if (!io_rc && r->ex.tap) io_rc = record_commit(r->ex.tap, lg.io_err, sizeof lg.io_err);
        int status = comm_max_int(comm, io_rc ? 2 : stop_signal != 0);
        if (status == 2) stop_if_any_failed(comm, io_rc, lg.io_err);
        // 5. a checkpoint every checkpoint.every steps and after the last one, or when asked to stop
        int preempt = step >= 0 && !last_step && status == 1;
        if (checkpoints && step >= 0 && (last_step || preempt || (step + 1) % c->ckpt_every == 0)) checkpoint_write(r, step + 1);
        if (preempt) {
            if (comm->rank == 0)
                fprintf(stderr, "\npcmoe: stopped by a signal after step %d%s; continue with --resume\n", step + 1,
                        checkpoints ? ", checkpoint written" : " (checkpoint.every = 0: no checkpoint)");
            exit_status = TRAIN_EXIT_PREEMPTED;
            break;
        }
        if (stop_here) break;
    }
    if (lg.gather) // every party's tokens: one batch per party and step, or one per step when taking turns
        tokens_seen = (double)(c->steps - start) * c->batch_size * c->seq_len *
                      (c->mode == MODE_PCMOE && c->schedule == SCHEDULE_SEQUENTIAL ? 1 : P);
    rc = 0;
    if (lg.writes) {
        rc = metrics_summary(&lg.mt, c, lg.last, lg.best, lg.n_shown, c->steps, tokens_seen, err, sizeof err);
        if (metrics_close(&lg.mt, rc ? NULL : err, rc ? 0 : sizeof err)) rc = 1;
    }
    stop_if_any_failed(comm, rc, err);
    if (opt->audit_path) stop_if_any_failed(comm, comm_write_audit(comm, opt->audit_path, err, sizeof err), err);
    free(lg.shown); free(lg.last); free(lg.best); free(lg.packed);
    free_run(r);
    return exit_status;
}
