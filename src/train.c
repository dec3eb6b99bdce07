// train.c: pcmoe train. train_run() opens the party session (run.h), then runs the step loop: each mode
// has one step function, and step_pcmoe() is the product, read top to bottom; then validation, metrics
// (train_log_*), checkpoints and preemption.
#include "train.h"

#include <math.h>         // sqrt, isfinite, INFINITY, NAN
#include <signal.h>       // sigaction, SIGUSR1, SIGTERM
#include <stdio.h>        // fprintf
#include <stdlib.h>       // free
#include <string.h>       // memset
#include <sys/resource.h> // getrusage

#include "pool.h"         // pool_owner
#include "record.h"       // record_commit (the study only)
#include "util.h"         // fail, now_seconds, mallocCheck, callocCheck

double train_step(Model *m, const OptimConfig *oc, const Token *tokens, const Token *targets, int step,
                  int party, float *lr_out) {
    model_zero_grad(m);
    model_forward_train(m, tokens, targets);
    model_backward(m, tokens, targets);
    const float *g = m->grads;
    double ss;
    m->be->sum_squares(&ss, &g, &m->n_params, 1);
    double grad_norm = sqrt(ss);
    model_finish_loss(m); // (its losses are at hand after the wait for the norm)
    if (!isfinite(m->loss) || !isfinite(grad_norm))
        fail("step %d, party %d: non-finite %s (loss %g, gradient norm %g); stopping", step + 1, party,
             isfinite(m->loss) ? "gradient" : "loss", m->loss, grad_norm);
    float lr = optim_lr(oc, step);
    m->be->adamw(oc, m->tensors, m->n_tensors, m->active, m->adam_steps, m->params, m->grads, m->adam_m,
                 m->adam_v, lr, optim_clip_scale(oc, grad_norm));
    *lr_out = lr;
    return grad_norm;
}

// Clips and updates groups of m's tensors: tensor i in group group[i] (1 .. n_groups; 0: not updated), each
// group clipped by its own gradient norm: a party's backbone gradient is private, and an owner clips the
// gradients of its experts, summed over all parties, without learning anyone's backbone norm. Every norm
// comes from one wait, which also brings the step's losses. A non-finite norm stops the job, naming the
// group: what[g] ("backbone", "expert") of party who[g]. norms (n_groups): the groups' norms.
// party_group (1 .. n_groups; 0: none): a group split across the ranks of the party, whose norm is taken over
// all of them.
static void update_groups(Run *r, Model *m, const unsigned char *group, int n_groups, const char *const *what,
                          const int *who, float lr, int step, double *norms, int party_group) {
    optim_group_norms(m->be, m->tensors, m->n_tensors, group, n_groups, m->grads, norms);
    model_finish_loss(m);
    if (party_group) {
        double ss = norms[party_group - 1] * norms[party_group - 1];
        comm_party_sum_doubles(r->comm, MSG_PARTY_STATS, &ss, 1);
        norms[party_group - 1] = sqrt(ss);
    }
    for (int g = 0; g < n_groups; g++)
        if (!isfinite(norms[g])) fail("step %d, party %d: non-finite %s gradient; stopping", step + 1, who[g], what[g]);
    unsigned char *sel = mallocCheck((size_t)(m->n_tensors ? m->n_tensors : 1));
    for (int g = 1; g <= n_groups; g++) {
        for (int i = 0; i < m->n_tensors; i++) sel[i] = group[i] == g;
        m->be->adamw(&r->oc, m->tensors, m->n_tensors, sel, m->adam_steps, m->params, m->grads, m->adam_m, m->adam_v,
                     lr, optim_clip_scale(&r->oc, norms[g - 1]));
    }
    free(sel);
}

// A pcmoe party's update (update_groups): its backbone if it trained (backbone = 1), and the experts it holds
// that any party's rows reached (on several ranks: clipped by their norm over all the party's ranks).
// Returns the backbone's norm (0 without it).
static double update_party(Run *r, Model *m, float lr, int backbone, int step, int party) {
    unsigned char *group = m->selected;
    for (int i = 0; i < m->n_tensors; i++) // 1: backbone, 2: experts, 0: neither
        group[i] = !m->active[i] ? 0 : m->tensors[i].expert >= 0 ? 2 : backbone ? 1 : 0;
    const char *what[2] = {"backbone", "expert"};
    int who[2] = {party, party};
    double norms[2];
    update_groups(r, m, group, 2, what, who, lr, step, norms, r->R > 1 ? 2 : 0);
    return backbone ? norms[0] : 0.0;
}

static void stats_train(StepStats *s, Model *m, float lr, double grad_norm, double tokens, double dt) {
    model_finish_loss(m);
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

// A party of several ranks: the sum of its ranks' backbone gradients on each of them (the same bits on all, so
// the replicas stay equal), through a host copy of them. Experts are not summed: each lives on one rank.
static void party_sum_backbone(Run *r, Model *m) {
    if (!r->party_grads) { // (once: the backbone's size does not change)
        for (int i = 0; i < m->n_tensors; i++) r->party_floats += m->tensors[i].expert < 0 ? m->tensors[i].numel : 0;
        r->party_grads = mallocCheck(sizeof(float) * (r->party_floats ? r->party_floats : 1));
        r->party_scratch = mallocCheck(sizeof(float) * (r->party_floats ? r->party_floats : 1));
    }
    float *g = r->party_grads;
    m->be->sync();
    for (size_t i = 0, at = 0; i < (size_t)m->n_tensors; i++) // (at: its place in g)
        if (m->tensors[i].expert < 0) {
            m->be->copy(g + at, m->grads + m->tensors[i].offset, sizeof(float) * m->tensors[i].numel);
            at += m->tensors[i].numel;
        }
    m->be->sync();
    comm_party_sum_floats(r->comm, MSG_BACKBONE_GRADS, g, r->party_floats, r->party_scratch);
    for (size_t i = 0, at = 0; i < (size_t)m->n_tensors; i++)
        if (m->tensors[i].expert < 0) {
            m->be->copy(m->grads + m->tensors[i].offset, g + at, sizeof(float) * m->tensors[i].numel);
            at += m->tensors[i].numel;
        }
    m->be->sync();
}

// A party of several ranks: its stats from its ranks' (losses: their mean; FLOPs and tokens/s: their sum).
static void party_stats(Run *r, StepStats *s) {
    double v[6] = {s->train_loss, s->ce, s->aux, s->z, s->flops, s->tokens_per_s};
    comm_party_sum_doubles(r->comm, MSG_PARTY_STATS, v, 6);
    s->train_loss = v[0] / r->R;
    s->ce = v[1] / r->R;
    s->aux = v[2] / r->R;
    s->z = v[3] / r->R;
    s->flops = v[4];
    s->tokens_per_s = v[5];
}

// ---------------------------------------------------------------------------------------------------
// pcmoe over MPI: each party on its R ranks. Every rank makes the same exchange calls in the same order:
// with a batch it runs forward and backward through the shared experts; without one (sequential
// schedule, not its party's turn) it only serves its experts to the party whose turn it is. A party's
// ranks draw its R batches together, each computes one, and they sum their backbone gradients.
static void step_pcmoe(Run *r, int step) {
    Party *p = &r->party[0];
    Model *m = &p->model;
    const Config *c = r->c;
    int B = c->batch_size, T = c->seq_len;
    int trains = run_party_trains(c, step, p->party);
    double t0 = now_seconds();
    model_zero_grad(m);
    m->flops = 0.0;
    // 1. forward and backward through the shared expert pool
    if (trains) {
        size_t mine = (size_t)r->local * B * T;
        data_train_batch(&p->data, p->tokens, p->targets, r->R * B, T);
        model_forward_train(m, p->tokens + mine, p->targets + mine);
        model_backward(m, p->tokens + mine, p->targets + mine);
        if (r->R > 1) party_sum_backbone(r, m);
    } else {
        model_serve_forward(m);
        model_serve_backward(m);
        model_mark_active(m);
    }
    if (trains && step == r->nan_grad_step && p->party == r->P - 1) { // test hook (the gradients are device memory)
        static const float nan_value = NAN;
        m->be->copy(m->grads, &nan_value, sizeof nan_value);
    }
    // 2. the party updates its backbone if it trained; as an owner, the experts that any party's rows reached
    float lr = optim_lr(&r->oc, step);
    double norm = update_party(r, m, lr, trains, step, p->party);
    if (trains) stats_train(&p->s, m, lr, norm, (double)B * T, now_seconds() - t0);
    if (trains && r->R > 1) party_stats(r, &p->s);
}

// pcmoe in one process (--simulate): the same parties' math with every expert local. Each party's model
// holds its backbone and points at the shared pool's experts, whose gradients therefore sum over the
// parties; each owner's experts are then clipped and updated as a group, exactly as the owner does.
static void step_pcmoe_simulate(Run *r, int step) {
    const Config *c = r->c;
    int B = c->batch_size, T = c->seq_len, L = c->n_layers, E = c->n_experts;
    int turn = c->schedule == SCHEDULE_SEQUENTIAL ? run_turn_of(c, step) : -1;
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
        model_forward_train(&p->model, p->tokens, p->targets);
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
        double norm = update_party(r, &p->model, lr, 1, step, q); // (its model holds no experts)
        stats_train(&p->s, &p->model, lr, norm, (double)B * T, dt[q]);
    }
    // the pool: each owner's experts a group of their own (owner o's in group o + 1)
    unsigned char *group = r->pool.selected;
    for (int i = 0; i < r->pool.n_tensors; i++)
        group[i] = r->pool.active[i] ? (unsigned char)(pool_owner(r->pool.tensors[i].expert, r->P) + 1) : 0;
    const char **what = mallocCheck(sizeof(char *) * r->P);
    int *who = mallocCheck(sizeof(int) * r->P);
    double *norms = mallocCheck(sizeof(double) * r->P);
    for (int o = 0; o < r->P; o++) { what[o] = "expert"; who[o] = o; }
    update_groups(r, &r->pool, group, r->P, what, who, lr, step, norms, 0);
    free(what); free(who); free(norms);
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
        model_state_to_host(m, 0); // (MPI reads the host's copy)
        comm_allreduce_floats(r->comm, MSG_FEDAVG_WEIGHTS, m->host_params, m->n_params);
        float inv = 1.0f / (float)r->P;
        for (size_t i = 0; i < m->n_params; i++) m->host_params[i] *= inv;
        model_state_to_device(m, 0);
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
        for (size_t i = q * BT; i < (q + 1) * BT; i++) ce += m->row_losses[i];
        stats_train(&r->party[q].s, m, lr, norm, (double)r->n * BT, dt);
        r->party[q].s.ce = ce / (double)BT;
        r->party[q].s.train_loss = m->loss - m->ce + r->party[q].s.ce;
        r->party[q].s.tokens_per_s = (double)BT / dt;
    }
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


static void train_mode_step(Run *r, int step) {
    if (r->c->mode == MODE_PCMOE) r->simulate ? step_pcmoe_simulate(r, step) : step_pcmoe(r, step);
    else if (r->c->mode == MODE_CENTRALIZED) step_centralized(r, step);
    else step_local(r, step);
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
    double tokens_seen;  // training tokens of the parties this process computes
    int io_failed;       // a metrics line could not be written: io_err says why
    char io_err[2048];
} Log;

// Opens the run's metrics files (metrics_open) where they are written; every rank learns whether they could.
static void train_log_open(Log *lg, Run *r, const TrainOptions *o, int start) {
    const Config *c = r->c;
    Comm *comm = r->comm;
    int P = r->P, own_files = !r->one_process && !c->share_metrics;
    char err[2048] = "", suffix[32] = "";
    memset(lg, 0, sizeof *lg);
    lg->gather = !r->one_process && P > 1 && c->share_metrics;
    lg->writes = comm->rank == 0 || (own_files && r->local == 0); // (a party's rank 0 logs for all its ranks)
    if (own_files && P > 1) snprintf(suffix, sizeof suffix, ".party_%d", comm->party);
    int rc = lg->writes ? metrics_open(&lg->mt, c, suffix, o->force, comm->rank == 0, o->resume ? start : -1, err,
                                       sizeof err) : 0;
    comm_stop_if_failed(comm, rc, err);
    lg->n_shown = lg->gather || r->one_process ? P : 1;
    lg->shown = callocCheck((size_t)lg->n_shown, sizeof(StepStats));
    lg->last = callocCheck((size_t)lg->n_shown, sizeof(StepStats));
    lg->best = mallocCheck(sizeof(double) * lg->n_shown);
    for (int i = 0; i < lg->n_shown; i++) lg->best[i] = INFINITY;
    lg->packed = mallocCheck(sizeof(double) * STEP_STATS_DOUBLES * (size_t)P);
}

static double rss_peak_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss * 1024.0;
}

// The step's traffic (since sent0, recv0), memory and epsilon into the stats of this process's parties.
static void train_log_stats(Run *r, Log *lg, double sent0, double recv0) {
    for (int q = 0; q < r->n; q++) {
        StepStats *s = &r->party[q].s;
        if (s->has_train) lg->tokens_seen += (double)r->R * r->c->batch_size * r->c->seq_len;
        s->bytes_sent = comm_total_sent(r->comm) - sent0;
        s->bytes_recv = comm_total_recv(r->comm) - recv0;
        s->mem = run_party_mem(r, q);
        s->rss_peak = rss_peak_bytes();
        s->device_peak = (double)r->be->peak_bytes();
        run_dp_account(r, q); // the accountant: every window this party has drawn (privacy.h)
    }
}

// Logs the step: a metrics line per party shown (log_now), the progress line; between logged steps only a
// progress redraw on a terminal.
static void train_log_step(Run *r, Log *lg, int log_now) {
    Comm *comm = r->comm;
    if (!log_now) {
        if (comm->rank == 0 && lg->writes && lg->mt.tty) {
            int n = r->n < lg->n_shown ? r->n : lg->n_shown;
            for (int q = 0; q < n; q++) lg->shown[q] = r->party[q].s;
            metrics_progress(&lg->mt, lg->shown, n, r->c->steps, 0);
        }
        return;
    }
    if (lg->gather && r->local == 0) { // (the parties' rank 0s)
        step_stats_pack(&r->party[0].s, lg->packed);
        comm_gather_doubles(comm, MSG_METRICS, lg->packed, STEP_STATS_DOUBLES, lg->packed);
        if (comm->rank == 0)
            for (int q = 0; q < r->P; q++)
                step_stats_unpack(&lg->shown[q], lg->packed + (size_t)q * STEP_STATS_DOUBLES);
    } else {
        for (int q = 0; q < lg->n_shown; q++) lg->shown[q] = r->party[q].s;
    }
    if (!lg->writes) return;
    for (int q = 0; q < lg->n_shown; q++) {
        const StepStats *s = &lg->shown[q];
        StepStats *last = &lg->last[q], keep = lg->last[q];
        if (!lg->io_failed && metrics_log(&lg->mt, s, lg->io_err, sizeof lg->io_err)) lg->io_failed = 1;
        if (s->has_val && s->val_loss < lg->best[q]) lg->best[q] = s->val_loss;
        *last = *s;
        if (!s->has_train) {
            last->has_train = keep.has_train;
            last->train_loss = keep.train_loss;
            last->flops = keep.flops;
        }
        if (!s->has_val) {
            last->has_val = keep.has_val;
            last->val_loss = keep.val_loss;
        }
    }
    if (comm->rank == 0) metrics_progress(&lg->mt, lg->shown, lg->n_shown, r->c->steps, 1);
}

// Every rank learns whether any failed to write its files (then all stop, the failing ones saying why) or
// got a stop signal. Returns 0 (go on) or 1 (stop after a checkpoint).
static int train_agree(Run *r, Log *lg) {
    int io_rc = lg->io_failed;
    if (!io_rc && r->ex.tap) io_rc = record_commit(r->ex.tap, lg->io_err, sizeof lg->io_err);
    int status = comm_max_int(r->comm, io_rc ? 2 : stop_signal != 0);
    if (status == 2) comm_stop_if_failed(r->comm, io_rc, lg->io_err);
    return status;
}

// summary.json (every party's tokens when gathered: one batch per party and step, or one per step when
// taking turns), then the metrics file closed; every rank learns whether that worked.
static void train_log_close(Log *lg, Run *r, int start) {
    const Config *c = r->c;
    char err[2048] = "";
    if (lg->gather)
        lg->tokens_seen = (double)(c->steps - start) * r->R * c->batch_size * c->seq_len *
                          (c->mode == MODE_PCMOE && c->schedule == SCHEDULE_SEQUENTIAL ? 1 : r->P);
    int rc = 0;
    if (lg->writes) {
        rc = metrics_summary(&lg->mt, c, lg->last, lg->best, lg->n_shown, c->steps, lg->tokens_seen, err, sizeof err);
        if (metrics_close(&lg->mt, rc ? NULL : err, rc ? 0 : sizeof err)) rc = 1;
    }
    comm_stop_if_failed(r->comm, rc, err);
    free(lg->shown);
    free(lg->last);
    free(lg->best);
    free(lg->packed);
}

// ---------------------------------------------------------------------------------------------------

int train_run(const Config *c, Comm *comm, const RunOptions *ro, const TrainOptions *o) {
    Run run, *r = &run;
    run_open(r, c, comm, ro, 1);
    int start = run_start(r, o->resume, o->resume_step);
    int checkpoints = c->ckpt_every > 0 && !r->simulate;
    if (c->ckpt_every > 0 && r->simulate && comm->rank == 0)
        fprintf(stderr, "pcmoe: note: --simulate writes no checkpoints\n");
    Log lg;
    train_log_open(&lg, r, o, start);
    signals_install();
    int exit_status = 0;
    for (int step = start > 0 ? start : -1; step < c->steps; step++) { // step -1: the untrained model's validation
        int stop_here = o->stop_after > 0 && step + 1 == o->stop_after;
        int last_step = step + 1 == c->steps || stop_here;
        int eval_now =
                step < 0 ? c->eval_every > 0 : last_step || (c->eval_every > 0 && (step + 1) % c->eval_every == 0);
        if (step < 0 && !eval_now) continue;
        double sent0 = comm_total_sent(comm), recv0 = comm_total_recv(comm);
        for (int q = 0; q < r->n; q++) r->party[q].s = (StepStats){.step = step + 1, .party = r->party[q].party};
        comm->step = step + 1; // (what the messages sealed now belong to: step 0 is the evaluation before training)
        // 1. one training step of the configured mode; 2. validation on eval steps
        if (step >= 0) train_mode_step(r, step);
        if (eval_now) run_validate(r);
        // 3. metrics: this process's parties, then (share_metrics) every party's, gathered to rank 0
        train_log_stats(r, &lg, sent0, recv0);
        train_log_step(r, &lg, step < 0 || last_step || eval_now || (step + 1) % c->log_every == 0);
        // 4. every rank learns whether any failed to write its files or got a stop signal
        int status = train_agree(r, &lg);
        // 5. a checkpoint every checkpoint.every steps and after the last one, or when asked to stop
        int preempt = step >= 0 && !last_step && status == 1;
        if (checkpoints && step >= 0 && (last_step || preempt || (step + 1) % c->ckpt_every == 0))
            run_checkpoint_write(r, step + 1);
        if (preempt) {
            if (comm->rank == 0)
                fprintf(stderr, "\npcmoe: stopped by a signal after step %d%s; continue with --resume\n", step + 1,
                        checkpoints ? ", checkpoint written" : " (checkpoint.every = 0: no checkpoint)");
            exit_status = TRAIN_EXIT_PREEMPTED;
            break;
        }
        if (stop_here) break;
    }
    train_log_close(&lg, r, start);
    char err[2048] = "";
    if (ro->audit_path) comm_stop_if_failed(comm, comm_write_audit(comm, ro->audit_path, err, sizeof err), err);
    run_close(r);
    return exit_status;
}
