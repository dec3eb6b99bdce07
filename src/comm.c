// comm.c: the rank -> party map, the expert communicator, and the audited wrappers around every MPI
// call that carries data between parties.
#include "comm.h"

#include <limits.h> // INT_MAX
#include <stdio.h>  // snprintf
#include <stdlib.h> // free
#include <string.h> // memset, strerror
#include <time.h>   // nanosleep

#include "json.h"   // Json: the audit
#include "util.h"   // mpiCheck, mallocCheck, fail, now_seconds

#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h> // MPIX_CUDA_AWARE_SUPPORT, MPIX_Query_cuda_support
#endif

const char *const MSG_KIND_NAMES[] = {"routing_counts", "expert_rows", "expert_outputs", "output_grads",
                                      "input_grads", "metrics", "fedavg_weights", "control", "audit",
                                      "export_experts", "backbone_grads", "party_stats"};

void comm_init(Comm *c) {
    memset(c, 0, sizeof *c);
    c->world = MPI_COMM_WORLD;
    c->expert = c->leaders = c->party_comm = c->met = MPI_COMM_NULL;
    mpiCheck(MPI_Comm_rank(c->world, &c->rank));
    mpiCheck(MPI_Comm_size(c->world, &c->size));
    c->ranks_per_party = 1;
    c->party = c->rank;
    c->n_parties = 1;
}

void comm_setup(Comm *c, int n_parties, int ranks_per_party) {
    int R = ranks_per_party;
    c->n_parties = n_parties;
    c->ranks_per_party = R;
    c->party = c->rank / R;
    c->local = c->rank % R;
    // the pool: the first n_parties x R ranks (a one-process run: rank 0 alone), in rank order
    int in_pool = c->rank < n_parties * R;
    mpiCheck(MPI_Comm_split(c->world, in_pool ? 0 : MPI_UNDEFINED, c->rank, &c->expert));
    mpiCheck(MPI_Comm_split(c->world, in_pool && c->local == 0 ? 0 : MPI_UNDEFINED, c->party, &c->leaders));
    mpiCheck(MPI_Comm_split(c->world, in_pool ? c->party : MPI_UNDEFINED, c->local, &c->party_comm));
    c->counts = mallocCheck(sizeof(int) * 4 * (size_t)n_parties * R);
}

void comm_free(Comm *c) {
    for (int r = 0; c->pongs && r < c->size; r++) // (answers that never came: the job ends without them)
        if (c->pongs[r] != MPI_REQUEST_NULL) {
            mpiCheck(MPI_Cancel(&c->pongs[r]));
            mpiCheck(MPI_Request_free(&c->pongs[r]));
        }
    free(c->pongs);
    free(c->pong_values);
    c->pongs = NULL;
    c->pong_values = NULL;
    MPI_Comm *all[3] = {&c->expert, &c->leaders, &c->party_comm};
    for (int i = 0; i < 3; i++)
        if (*all[i] != MPI_COMM_NULL) mpiCheck(MPI_Comm_free(all[i]));
    free(c->counts);
    c->counts = NULL;
    if (c->met != MPI_COMM_NULL) { // the parties that met (meet.h): their world freed, the meeting disconnected
        mpiCheck(MPI_Comm_free(&c->world));
        mpiCheck(MPI_Comm_free(&c->met));
    }
}

void comm_account(Comm *c, MsgKind kind, int peer, double sent, double recv) {
    c->sent[kind][peer] += sent;
    c->recv[kind][peer] += recv;
}

void comm_account_rank(Comm *c, MsgKind kind, int s, double sent, double recv) {
    int party = s / c->ranks_per_party;
    if (party != c->party) { comm_account(c, kind, party, sent, recv); return; }
    c->intra_sent[kind] += sent;
    c->intra_recv[kind] += recv;
}

static double total(const double t[MSG_KIND_COUNT][CONFIG_MAX_PARTIES + 1], const double *intra) {
    double s = 0.0;
    for (int k = 0; k < MSG_KIND_COUNT; k++) {
        s += intra[k];
        for (int p = 0; p <= CONFIG_MAX_PARTIES; p++) s += t[k][p];
    }
    return s;
}
double comm_total_sent(const Comm *c) { return total(c->sent, c->intra_sent); }
double comm_total_recv(const Comm *c) { return total(c->recv, c->intra_recv); }

// ---------------------------------------------------------------------------------------------------
// Waits with a deadline. Every wait of this file is a non-blocking MPI call completed here: it polls, and
// meanwhile answers the other ranks' pings. When half of parties.peer_timeout has passed without the call
// completing, it pings every other rank; a rank that answers is alive (it waits in a call of its own). When
// the whole timeout has passed, a rank that has not answered is silent (stopped, cut off, gone) and the job
// stops, naming it. Pings and answers are one int each, on world, under tags of their own.
enum { TAG_PING = 32001, TAG_PONG = 32002, SPIN_TESTS = 2000 };

// Answers every ping that has arrived.
static void serve_pings(Comm *c) {
    for (;;) {
        int flag = 0;
        MPI_Status st;
        mpiCheck(MPI_Iprobe(MPI_ANY_SOURCE, TAG_PING, c->world, &flag, &st));
        if (!flag) return;
        int v = 0;
        mpiCheck(MPI_Recv(&v, 1, MPI_INT, st.MPI_SOURCE, TAG_PING, c->world, MPI_STATUS_IGNORE));
        MPI_Request req;
        mpiCheck(MPI_Isend(&c->watch_token, 1, MPI_INT, st.MPI_SOURCE, TAG_PONG, c->world, &req));
        mpiCheck(MPI_Request_free(&req));
        comm_account_rank(c, MSG_CONTROL, st.MPI_SOURCE, sizeof(int), sizeof(int));
    }
}

// Pings every other rank whose answer to an earlier ping is not pending (c->pongs: one receive per rank): an
// answer that came since is taken first, so each round asks again, and a rank that answers nothing of this
// round (or still owes an answer from an earlier one) counts as silent.
static void ping_all(Comm *c) {
    if (!c->pongs) {
        c->pongs = mallocCheck(sizeof(MPI_Request) * (size_t)c->size);
        c->pong_values = mallocCheck(sizeof(int) * (size_t)c->size);
        for (int r = 0; r < c->size; r++) c->pongs[r] = MPI_REQUEST_NULL;
    }
    for (int r = 0; r < c->size; r++) {
        int done = 1;
        if (r != c->rank && c->pongs[r] != MPI_REQUEST_NULL) mpiCheck(MPI_Test(&c->pongs[r], &done, MPI_STATUS_IGNORE));
        if (r == c->rank || !done) continue;
        MPI_Request req;
        mpiCheck(MPI_Isend(&c->watch_token, 1, MPI_INT, r, TAG_PING, c->world, &req));
        mpiCheck(MPI_Request_free(&req));
        mpiCheck(MPI_Irecv(&c->pong_values[r], 1, MPI_INT, r, TAG_PONG, c->world, &c->pongs[r]));
        comm_account_rank(c, MSG_CONTROL, r, sizeof(int), sizeof(int));
    }
}

// The first rank that has not answered the pings (-1: every one has), and how many have not.
static int first_silent(Comm *c, int *n_silent) {
    int first = -1;
    *n_silent = 0;
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank) continue;
        int done = 1;
        if (c->pongs[r] != MPI_REQUEST_NULL) mpiCheck(MPI_Test(&c->pongs[r], &done, MPI_STATUS_IGNORE));
        if (!done && first < 0) first = r;
        *n_silent += !done;
    }
    return first;
}

// The job's end when rank `silent` (and n - 1 more) did not answer within the deadline while `what` waited.
static void stop_silent(Comm *c, int silent, int n, const char *what) {
    int R = c->ranks_per_party;
    char more[48] = "";
    if (n > 1) snprintf(more, sizeof more, " and %d more rank%s", n - 1, n > 2 ? "s" : "");
    if (silent < 0)
        fail("%s has not completed in %g s (parties.peer_timeout), though every rank answers: the ranks wait in "
             "different calls; stopping", what, c->peer_timeout);
    fail("party %d (rank %d)%s: silent for %g s (parties.peer_timeout) while %s waited: stopped, cut off or gone; "
         "stopping (its last complete checkpoint is intact: --resume once it is back)",
         silent / R, silent, more, c->peer_timeout, what);
}

void comm_wait(Comm *c, MPI_Request *req, int n, const char *what) {
    double t0 = 0.0;
    int pinged = 0;
    for (long i = 0;; i++) {
        int done = 0;
        mpiCheck(MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE));
        if (done) return;
        if (i < SPIN_TESTS) continue; // (most waits end here)
        if (i == SPIN_TESTS) t0 = now_seconds();
        serve_pings(c);
        double waited = now_seconds() - t0;
        if (c->peer_timeout > 0 && !pinged && waited > c->peer_timeout / 2) { ping_all(c); pinged = 1; }
        if (c->peer_timeout > 0 && waited > c->peer_timeout) {
            int n_silent, silent = first_silent(c, &n_silent);
            stop_silent(c, silent, n_silent, what);
        }
        struct timespec ts = {0, 50000}; // 50 us: a silent wait does not spin a core
        nanosleep(&ts, NULL);
    }
}

int comm_agree(Comm *c, int ok, int *first_bad, int *n_bad) {
    int mine[2] = {ok ? INT_MAX : c->rank, ok ? 0 : -1}, all[2]; // min of (rank, -count)
    MPI_Request req;
    mpiCheck(MPI_Iallreduce(mine, all, 2, MPI_INT, MPI_MIN, c->world, &req));
    comm_wait(c, &req, 1, "an agreement");
    if (!ok || all[0] != INT_MAX) { // how many failed: only when someone did
        int bad = !ok, total = 0;
        mpiCheck(MPI_Iallreduce(&bad, &total, 1, MPI_INT, MPI_SUM, c->world, &req));
        comm_wait(c, &req, 1, "an agreement");
        comm_account(c, MSG_CONTROL, COMM_COLLECTIVE, sizeof(int), sizeof(int));
        all[1] = total;
    }
    comm_account(c, MSG_CONTROL, COMM_COLLECTIVE, 2 * sizeof(int), 2 * sizeof(int));
    if (first_bad) *first_bad = all[0] == INT_MAX ? -1 : all[0];
    if (n_bad) *n_bad = all[0] == INT_MAX ? 0 : all[1];
    return all[0] == INT_MAX;
}

int comm_cuda_aware(void) {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
    return MPIX_Query_cuda_support() == 1;
#else
    return 0;
#endif
}

int comm_local_rank(Comm *c) {
    MPI_Comm node;
    int rank = 0;
    mpiCheck(MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node));
    mpiCheck(MPI_Comm_rank(node, &rank));
    mpiCheck(MPI_Comm_free(&node));
    return rank;
}

int comm_max_int(Comm *c, int v) {
    int all = v;
    MPI_Request req;
    mpiCheck(MPI_Iallreduce(&v, &all, 1, MPI_INT, MPI_MAX, c->world, &req));
    comm_wait(c, &req, 1, "an agreement");
    comm_account(c, MSG_CONTROL, COMM_COLLECTIVE, sizeof(int), sizeof(int));
    return all;
}

void comm_stop_if_failed(Comm *c, int rc, const char *err) {
    int first = -1, n_bad = 0;
    if (comm_agree(c, rc == 0, &first, &n_bad)) return;
    int code = comm_max_int(c, rc);
    int print = rc && (n_bad < c->size || c->rank == first);
    fail_usage(code, print ? 1 : -1, "%s", rc ? err : "stopping");
}

void comm_alltoall_ints(Comm *c, MsgKind kind, const int *send, int *recv, int per_peer) {
    MPI_Request req;
    mpiCheck(MPI_Ialltoall(send, per_peer, MPI_INT, recv, per_peer, MPI_INT, c->expert, &req));
    comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    double bytes = (double)per_peer * sizeof(int);
    for (int s = 0; s < c->n_parties * c->ranks_per_party; s++)
        if (s != c->rank) comm_account_rank(c, kind, s, bytes, bytes);
}

void comm_alltoallv_rows(Comm *c, MsgKind kind, const float *send, const int *send_rows, const int *send_offs,
                         float *recv, const int *recv_rows, const int *recv_offs, int width) {
    int P = c->n_parties * c->ranks_per_party;
    int *sc = c->counts, *sd = sc + P, *rc = sd + P, *rd = rc + P;
    for (int p = 0; p < P; p++) {
        if (p == c->rank && (send_rows[p] || recv_rows[p]))
            fail("internal: rows addressed to oneself in %s", MSG_KIND_NAMES[kind]);
        long s = (long)send_rows[p] * width, so = (long)send_offs[p] * width;
        long r = (long)recv_rows[p] * width, ro = (long)recv_offs[p] * width;
        if (s > INT_MAX || so > INT_MAX || r > INT_MAX || ro > INT_MAX)
            fail("exchange of %s larger than 2^31 floats", MSG_KIND_NAMES[kind]);
        sc[p] = (int)s; sd[p] = (int)so; rc[p] = (int)r; rd[p] = (int)ro;
        if (p != c->rank) comm_account_rank(c, kind, p, 4.0 * s, 4.0 * r);
    }
    MPI_Request req;
    mpiCheck(MPI_Ialltoallv(send, sc, sd, MPI_FLOAT, recv, rc, rd, MPI_FLOAT, c->expert, &req));
    comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
}

void comm_allreduce_floats(Comm *c, MsgKind kind, float *buf, size_t n) {
    for (size_t done = 0; done < n;) { // in pieces of at most 2^30 floats (MPI counts are int)
        int piece = n - done > (1u << 30) ? (1 << 30) : (int)(n - done);
        MPI_Request req;
        mpiCheck(MPI_Iallreduce(MPI_IN_PLACE, buf + done, piece, MPI_FLOAT, MPI_SUM, c->leaders, &req));
        comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
        done += (size_t)piece;
    }
    comm_account(c, kind, COMM_COLLECTIVE, 4.0 * n, 4.0 * n);
}

// Local rank i's slice of n floats shared by R ranks: [lo, hi).
static void party_slice(size_t n, int R, int i, size_t *lo, size_t *hi) {
    *lo = n * (size_t)i / (size_t)R;
    *hi = n * (size_t)(i + 1) / (size_t)R;
}

void comm_party_sum_floats(Comm *c, MsgKind kind, float *buf, size_t n, float *scratch) {
    int R = c->ranks_per_party, me = c->local;
    if (R == 1) return;
    if (n / R + 1 > (size_t)INT_MAX) fail("party sum of %zu floats: more than 2^31 per rank", n);
    int *cnt = mallocCheck(sizeof(int) * 2 * R), *off = cnt + R;
    size_t lo, hi, mlo, mhi;
    for (int i = 0; i < R; i++) {
        party_slice(n, R, i, &lo, &hi);
        cnt[i] = (int)(hi - lo);
        off[i] = (int)lo;
    }
    party_slice(n, R, me, &mlo, &mhi);
    int mine = (int)(mhi - mlo);
    // 1. rank i gets every rank's copy of slice i (scratch: R copies of it, local rank order) ...
    int *rcnt = mallocCheck(sizeof(int) * 2 * R), *roff = rcnt + R;
    for (int i = 0; i < R; i++) { rcnt[i] = mine; roff[i] = i * mine; }
    MPI_Request req;
    mpiCheck(MPI_Ialltoallv(buf, cnt, off, MPI_FLOAT, scratch, rcnt, roff, MPI_FLOAT, c->party_comm, &req));
    comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    // 2. ... sums them in that order ...
    for (int j = 0; j < mine; j++) {
        float s = scratch[j];
        for (int i = 1; i < R; i++) s += scratch[(size_t)i * mine + j];
        buf[mlo + j] = s;
    }
    // 3. ... and every rank gathers the sums
    mpiCheck(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, buf, cnt, off, MPI_FLOAT, c->party_comm, &req));
    comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    double out = 4.0 * (double)(n - (size_t)mine);
    c->intra_sent[kind] += out + 4.0 * (double)mine * (R - 1);
    c->intra_recv[kind] += 4.0 * (double)mine * (R - 1) + out;
    free(cnt);
    free(rcnt);
}

void comm_party_sum_doubles(Comm *c, MsgKind kind, double *buf, int n) {
    int R = c->ranks_per_party;
    if (R == 1) return;
    double *all = mallocCheck(sizeof(double) * (size_t)n * R);
    MPI_Request req;
    mpiCheck(MPI_Iallgather(buf, n, MPI_DOUBLE, all, n, MPI_DOUBLE, c->party_comm, &req));
    comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    for (int j = 0; j < n; j++) {
        double s = all[j];
        for (int i = 1; i < R; i++) s += all[(size_t)i * n + j];
        buf[j] = s;
    }
    c->intra_sent[kind] += 8.0 * n * (R - 1);
    c->intra_recv[kind] += 8.0 * n * (R - 1);
    free(all);
}

#define COMM_MSG_FLOATS ((size_t)1 << 30) // (MPI counts are ints)

void comm_send_floats(Comm *c, MsgKind kind, int to, const float *buf, size_t n) {
    for (size_t i = 0; i < n; i += COMM_MSG_FLOATS) {
        int k = (int)(n - i < COMM_MSG_FLOATS ? n - i : COMM_MSG_FLOATS);
        MPI_Request req;
        mpiCheck(MPI_Isend(buf + i, k, MPI_FLOAT, to, (int)kind, c->leaders, &req));
        comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    }
    comm_account(c, kind, to, 4.0 * (double)n, 0.0);
}

void comm_recv_floats(Comm *c, MsgKind kind, int from, float *buf, size_t n) {
    for (size_t i = 0; i < n; i += COMM_MSG_FLOATS) {
        int k = (int)(n - i < COMM_MSG_FLOATS ? n - i : COMM_MSG_FLOATS);
        MPI_Request req;
        mpiCheck(MPI_Irecv(buf + i, k, MPI_FLOAT, from, (int)kind, c->leaders, &req));
        comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    }
    comm_account(c, kind, from, 0.0, 4.0 * (double)n);
}

void comm_gather_doubles(Comm *c, MsgKind kind, const double *send, int n, double *recv) {
    MPI_Request req;
    mpiCheck(MPI_Igather(send, n, MPI_DOUBLE, recv, n, MPI_DOUBLE, 0, c->leaders, &req));
    comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    if (c->party != 0) comm_account(c, kind, 0, 8.0 * n, 0.0);
    else
        for (int p = 1; p < c->n_parties; p++) comm_account(c, kind, p, 0.0, 8.0 * n);
}

// One message kind's bytes: {"total", "collective", "per_party": [...]}, t (CONFIG_MAX_PARTIES + 1).
static void json_kind_table(Json *j, const double *t, int n_parties) {
    double sum = 0.0;
    for (int p = 0; p <= CONFIG_MAX_PARTIES; p++) sum += t[p];
    json_open_object(j);
    json_member_fixed(j, "total", sum, 0);
    json_member_fixed(j, "collective", t[COMM_COLLECTIVE], 0);
    json_key(j, "per_party");
    json_open_array(j);
    for (int p = 0; p < n_parties; p++) json_fixed(j, t[p], 0);
    json_close_array(j);
    json_close_object(j);
}

// One audit row (doubles): sent and received per (kind, peer party), rows routed per party, then the bytes
// sent and received inside the party per kind.
enum { AUDIT_TABLE = MSG_KIND_COUNT * (CONFIG_MAX_PARTIES + 1),
       AUDIT_ROW = 2 * AUDIT_TABLE + CONFIG_MAX_PARTIES + 2 * MSG_KIND_COUNT };

// {kind: bytes, ...} of one direction of a rank's traffic inside its party.
static void json_intra(Json *j, const double *t) {
    json_open_object(j);
    for (int k = 0; k < MSG_KIND_COUNT; k++) json_member_fixed(j, MSG_KIND_NAMES[k], t[k], 0);
    json_close_object(j);
}

// The audit of every rank: its routed rows, then its bytes sent and received per kind across party lines,
// then inside its party. all (n_ranks, AUDIT_ROW doubles).
static void json_audit(Json *j, const double *all, int P, int R) {
    json_open_object(j);
    json_member_int(j, "n_parties", P);
    json_member_int(j, "ranks_per_party", R);
    json_member_string(j, "peer_index", "per_party[i] is party i; collective counts reductions over all parties; "
                       "intra_party counts traffic between the ranks of the rank's own party");
    json_key(j, "ranks");
    json_open_array(j);
    for (int r = 0; r < P * R; r++) {
        const double *v = all + (size_t)r * AUDIT_ROW;
        json_break(j, "\n");
        json_open_object(j);
        json_member_int(j, "rank", r);
        json_member_int(j, "party", r / R);
        json_member_int(j, "local_rank", r % R);
        json_key(j, "rows_routed_to");
        json_open_array(j);
        for (int p = 0; p < P; p++) json_fixed(j, v[2 * AUDIT_TABLE + p], 0);
        json_close_array(j);
        for (int dir = 0; dir < 2; dir++) {
            json_key(j, dir ? "recv" : "sent");
            json_open_object(j);
            for (int k = 0; k < MSG_KIND_COUNT; k++) {
                json_key(j, MSG_KIND_NAMES[k]);
                json_kind_table(j, v + dir * AUDIT_TABLE + k * (CONFIG_MAX_PARTIES + 1), P);
            }
            json_close_object(j);
        }
        json_key(j, "intra_party");
        json_open_object(j);
        json_key(j, "sent");
        json_intra(j, v + 2 * AUDIT_TABLE + CONFIG_MAX_PARTIES);
        json_key(j, "recv");
        json_intra(j, v + 2 * AUDIT_TABLE + CONFIG_MAX_PARTIES + MSG_KIND_COUNT);
        json_close_object(j);
        json_close_object(j);
    }
    json_space(j, "\n");
    json_close_array(j);
    json_close_object(j);
    json_end_line(j);
}

int comm_write_audit(Comm *c, const char *path, char *err, size_t len) {
    int n = c->n_parties * c->ranks_per_party;
    // the audit's own gather is counted before the totals are taken
    if (c->rank != 0) comm_account_rank(c, MSG_AUDIT, 0, 8.0 * AUDIT_ROW, 0.0);
    else for (int s = 1; s < n; s++) comm_account_rank(c, MSG_AUDIT, s, 0.0, 8.0 * AUDIT_ROW);
    double *mine = mallocCheck(sizeof(double) * AUDIT_ROW), *at = mine;
    memcpy(at, c->sent, sizeof c->sent);
    memcpy(at += AUDIT_TABLE, c->recv, sizeof c->recv);
    memcpy(at += AUDIT_TABLE, c->rows_routed, sizeof c->rows_routed);
    memcpy(at += CONFIG_MAX_PARTIES, c->intra_sent, sizeof c->intra_sent);
    memcpy(at += MSG_KIND_COUNT, c->intra_recv, sizeof c->intra_recv);
    double *all = mallocCheck(sizeof(double) * AUDIT_ROW * n);
    if (n > 1) {
        MPI_Request req;
        mpiCheck(MPI_Igather(mine, AUDIT_ROW, MPI_DOUBLE, all, AUDIT_ROW, MPI_DOUBLE, 0, c->expert, &req));
        comm_wait(c, &req, 1, "the audit");
    }
    else memcpy(all, mine, sizeof(double) * AUDIT_ROW);
    int rc = 0;
    if (c->rank == 0) {
        Json j = {0};
        json_audit(&j, all, c->n_parties, c->ranks_per_party);
        rc = json_write(&j, path, err, len);
    }
    free(mine);
    free(all);
    return rc;
}
