// comm.c: the rank -> party map, the expert communicator, and the audited wrappers around every MPI
// call that carries data between parties.
#include "comm.h"

#include <limits.h> // INT_MAX
#include <stdio.h>  // snprintf
#include <stdlib.h> // free
#include <string.h> // memset, strerror
#include <time.h>   // nanosleep

#include "json.h"   // Json: the audit
#include "seal.h"   // Seal, seal_box, seal_open: parties.keys
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
    c->step = c->layer = -1;
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

// comm_seal_start's key check: every rank seals SEAL_ID_BYTES of the session id for every rank of the other
// parties, and opens what they sealed for it, with plain MPI (c->seal is not set yet). Returns the first world
// rank whose message did not open, or -1.
static int check_keys(Comm *c, const Seal *k, const unsigned char *id) {
    size_t piece = SEAL_ID_BYTES + SEAL_TAG_BYTES;
    unsigned char *out = mallocCheck(piece * (size_t)c->size), *in = mallocCheck(piece * (size_t)c->size);
    int R = c->ranks_per_party, bad = -1;
    for (int w = 0; w < c->size; w++) {
        SealMsg m = {MSG_CONTROL, c->party, c->local, w / R, w % R, -1, -1, 0};
        if (w / R != c->party) seal_box(k, &m, id, SEAL_ID_BYTES, out + piece * w);
        else memset(out + piece * w, 0, piece);
    }
    MPI_Request req;
    mpiCheck(MPI_Ialltoall(out, (int)piece, MPI_BYTE, in, (int)piece, MPI_BYTE, c->world, &req));
    comm_wait(c, &req, 1, "the key check");
    for (int w = 0; w < c->size && bad < 0; w++) {
        SealMsg m = {MSG_CONTROL, w / R, w % R, c->party, c->local, -1, -1, 0};
        unsigned char got[SEAL_ID_BYTES];
        if (w / R != c->party && (seal_open(k, &m, in + piece * w, SEAL_ID_BYTES, got) || memcmp(got, id, sizeof got)))
            bad = w;
    }
    comm_account(c, MSG_CONTROL, COMM_COLLECTIVE, (double)piece * c->size, (double)piece * c->size);
    free(out);
    free(in);
    return bad;
}

void comm_seal_start(Comm *c, const char *keys_path) {
    Seal *k = mallocCheck(sizeof(Seal));
    char err[2048] = "";
    int rc = seal_load(k, keys_path, c->party, c->n_parties, err, sizeof err);
    comm_stop_if_failed(c, rc, err);
    // the session: every rank's random share, in world rank order
    unsigned char *shares = mallocCheck((size_t)SEAL_ID_BYTES * c->size), id[SEAL_ID_BYTES];
    seal_random_share(shares + (size_t)SEAL_ID_BYTES * c->rank);
    MPI_Request req;
    mpiCheck(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_BYTE, shares, SEAL_ID_BYTES, MPI_BYTE, c->world, &req));
    comm_wait(c, &req, 1, "the session's start");
    comm_account(c, MSG_CONTROL, COMM_COLLECTIVE, SEAL_ID_BYTES, (double)SEAL_ID_BYTES * (c->size - 1));
    seal_session_id(id, shares, c->size);
    seal_start(k, id);
    free(shares);
    int bad = check_keys(c, k, id), R = c->ranks_per_party;
    if (bad >= 0)
        snprintf(err, sizeof err, "parties.keys = %s: what party %d (rank %d) sealed does not open here: the public "
                 "key this file holds for party %d is not its own, or party %d holds another one for party %d; not "
                 "starting", k->path, bad / R, bad, bad / R, bad / R, c->party);
    comm_stop_if_failed(c, bad >= 0 ? 2 : 0, err);
    c->seal = k;
    c->seq_out = callocCheck((size_t)c->size, sizeof(uint64_t));
    c->seq_in = callocCheck((size_t)c->size, sizeof(uint64_t));
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
    if (c->seal) seal_wipe(c->seal);
    free(c->seal);
    free(c->seq_out);
    free(c->seq_in);
    free(c->scratch[0]);
    free(c->scratch[1]);
    c->seal = NULL;
    c->seq_out = c->seq_in = NULL;
    c->scratch[0] = c->scratch[1] = NULL;
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

// The job's end when rank `silent` (and n - 1 more) did not answer the last pings while `what` waited `waited` s.
static void stop_silent(Comm *c, int silent, int n, const char *what, double waited) {
    int R = c->ranks_per_party;
    char more[48] = "";
    if (n > 1) snprintf(more, sizeof more, " and %d more rank%s", n - 1, n > 2 ? "s" : "");
    if (silent < 0)
        fail("%s has not completed in %.0f s (parties.peer_timeout = %g), though every rank answers: the ranks wait "
             "in different calls; stopping", what, waited, c->peer_timeout);
    fail("party %d (rank %d)%s: silent for %g s (parties.peer_timeout) while %s waited: stopped, cut off or gone; "
         "stopping (its last complete checkpoint is intact: --resume once it is back)",
         silent / R, silent, more, c->peer_timeout, what);
}

// At half the timeout it pings; at the timeout a rank that has not answered is silent. When every rank has
// answered, one may have stopped since (its answer is half a timeout old): it pings again, and half a timeout
// later a rank that has not answered that round is silent, or else the ranks wait in different calls.
void comm_wait(Comm *c, MPI_Request *req, int n, const char *what) {
    double t0 = 0.0, T = c->peer_timeout, judge = T; // judge: when the last round's answers are judged
    int rounds = 0;                                  // ping rounds of this wait
    for (long i = 0;; i++) {
        int done = 0;
        mpiCheck(MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE));
        if (done) return;
        if (i < SPIN_TESTS) continue; // (most waits end here)
        if (i == SPIN_TESTS) t0 = now_seconds();
        serve_pings(c);
        double waited = now_seconds() - t0;
        if (T > 0 && rounds == 0 && waited > T / 2) { ping_all(c); rounds = 1; }
        if (rounds > 0 && waited > judge) {
            int n_silent, silent = first_silent(c, &n_silent);
            if (silent >= 0 || rounds == 2) stop_silent(c, silent, n_silent, what, waited);
            ping_all(c);
            rounds = 2;
            judge = waited + T / 2;
        }
        struct timespec ts = {0, 50000}; // 50 us: a silent wait does not spin a core
        nanosleep(&ts, NULL);
    }
}

// ---------------------------------------------------------------------------------------------------
// Sealing (parties.keys, seal.h). With keys, every call below that moves data moves bytes: each piece for (from)
// a rank of another party is sealed for it (SEAL_TAG_BYTES more) and opened on arrival; pieces inside the party
// go as they are. A piece that does not open ends the job, naming its sender. Without keys the calls are the
// plain typed MPI calls.

// The world rank of rank s of communicator `on` (expert and world: s; leaders: party s's rank 0).
static int world_rank_of(const Comm *c, MPI_Comm on, int s) { return on == c->leaders ? s * c->ranks_per_party : s; }

// 1 when a piece to or from world rank w is sealed: keys are set and w is in another party.
static int sealed_with(const Comm *c, int w) { return c->seal && w / c->ranks_per_party != c->party; }

// The next message of `kind` this rank seals for (out) or opens from world rank w.
static SealMsg seal_msg(Comm *c, MsgKind kind, int w, int out) {
    int R = c->ranks_per_party;
    SealMsg m = {.kind = (int)kind, .step = c->step, .layer = c->layer};
    m.from_party = out ? c->party : w / R;
    m.from_local = out ? c->local : w % R;
    m.to_party = out ? w / R : c->party;
    m.to_local = out ? w % R : c->local;
    m.seq = out ? c->seq_out[w]++ : c->seq_in[w]++;
    return m;
}

// Sealing's buffer `which` (0 send, 1 receive), at least n bytes.
static unsigned char *scratch(Comm *c, int which, size_t n) {
    if (c->scratch_len[which] < n) {
        free(c->scratch[which]);
        c->scratch[which] = mallocCheck(n);
        c->scratch_len[which] = n;
    }
    return c->scratch[which];
}

// Seals n bytes of pt for world rank w into ct (n + SEAL_TAG_BYTES), counting the tag.
static void seal_piece(Comm *c, MsgKind kind, int w, const void *pt, size_t n, unsigned char *ct) {
    SealMsg m = seal_msg(c, kind, w, 1);
    seal_box(c->seal, &m, pt, n, ct);
    c->seal_sent[kind] += SEAL_TAG_BYTES;
}

// Opens n bytes from world rank w out of ct into pt; a piece that does not open ends the job.
static void open_piece(Comm *c, MsgKind kind, int w, const unsigned char *ct, size_t n, void *pt) {
    SealMsg m = seal_msg(c, kind, w, 0);
    c->seal_recv[kind] += SEAL_TAG_BYTES;
    if (seal_open(c->seal, &m, ct, n, pt) == 0) return;
    fail("party %d (rank %d): its %s message (step %d, layer %d, number %llu from it) does not open with "
         "parties.keys = %s: changed on the way, replayed, reordered or sealed with another key; stopping (the "
         "last complete checkpoint is intact)", m.from_party, w, MSG_KIND_NAMES[kind], m.step, m.layer,
         (unsigned long long)m.seq, c->seal->path);
}

// All-to-all-v of bytes on `on` (n ranks): cnt[s] bytes at send + off[s] go to rank s, rcnt[s] bytes from rank s
// land at recv + roff[s]; the pieces that cross a party line sealed and opened. Counts and offsets in bytes.
static void alltoallv_bytes(Comm *c, MsgKind kind, MPI_Comm on, const void *send, const size_t *cnt,
                            const size_t *off, void *recv, const size_t *rcnt, const size_t *roff) {
    int n;
    mpiCheck(MPI_Comm_size(on, &n));
    int *sc = mallocCheck(sizeof(int) * 4 * (size_t)n), *sd = sc + n, *rc = sd + n, *rd = rc + n;
    size_t st = 0, rt = 0;
    for (int s = 0; s < n; s++) {
        int w = world_rank_of(c, on, s), tag = sealed_with(c, w) ? SEAL_TAG_BYTES : 0;
        size_t a = cnt[s] ? cnt[s] + tag : 0, b = rcnt[s] ? rcnt[s] + tag : 0;
        if (st + a > INT_MAX || rt + b > INT_MAX)
            fail("sealed %s exchange of more than 2^31 bytes", MSG_KIND_NAMES[kind]);
        sc[s] = (int)a; sd[s] = (int)st; rc[s] = (int)b; rd[s] = (int)rt;
        st += a;
        rt += b;
    }
    unsigned char *sb = scratch(c, 0, st + 1), *rb = scratch(c, 1, rt + 1);
    for (int s = 0; s < n; s++) {
        int w = world_rank_of(c, on, s);
        if (cnt[s] && sealed_with(c, w)) seal_piece(c, kind, w, (const char *)send + off[s], cnt[s], sb + sd[s]);
        else if (cnt[s]) memcpy(sb + sd[s], (const char *)send + off[s], cnt[s]);
    }
    MPI_Request req;
    mpiCheck(MPI_Ialltoallv(sb, sc, sd, MPI_BYTE, rb, rc, rd, MPI_BYTE, on, &req));
    comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    for (int s = 0; s < n; s++) {
        int w = world_rank_of(c, on, s);
        if (rcnt[s] && sealed_with(c, w)) open_piece(c, kind, w, rb + rd[s], rcnt[s], (char *)recv + roff[s]);
        else if (rcnt[s]) memcpy((char *)recv + roff[s], rb + rd[s], rcnt[s]);
    }
    free(sc);
}

// The same n ints from every rank of world to every other, sealed where they cross a party line: all (size, n)
// receives them, this rank's own row included.
static void allgather_ints_sealed(Comm *c, const int *v, int n, int *all) {
    size_t *cnt = mallocCheck(sizeof(size_t) * 4 * (size_t)c->size), *off = cnt + c->size, *rcnt = off + c->size,
           *roff = rcnt + c->size;
    for (int s = 0; s < c->size; s++) {
        cnt[s] = rcnt[s] = s == c->rank ? 0 : sizeof(int) * (size_t)n;
        off[s] = 0;
        roff[s] = sizeof(int) * (size_t)n * s;
    }
    alltoallv_bytes(c, MSG_CONTROL, c->world, v, cnt, off, all, rcnt, roff);
    memcpy(all + (size_t)n * c->rank, v, sizeof(int) * (size_t)n);
    free(cnt);
}

// An agreement on world: out[i] = op (MPI_MIN, MPI_MAX or MPI_SUM) of every rank's v[i] (n <= 2); with keys,
// the values are sealed and reduced here, in rank order (ints: the same result).
static void agree_ints(Comm *c, const int *v, int *out, int n, MPI_Op op) {
    if (!c->seal) {
        MPI_Request req;
        mpiCheck(MPI_Iallreduce(v, out, n, MPI_INT, op, c->world, &req));
        comm_wait(c, &req, 1, "an agreement");
        return;
    }
    int *all = mallocCheck(sizeof(int) * (size_t)n * c->size);
    allgather_ints_sealed(c, v, n, all);
    for (int i = 0; i < n; i++) {
        int r = all[i];
        for (int s = 1; s < c->size; s++) {
            int x = all[(size_t)s * n + i];
            r = op == MPI_MIN ? (x < r ? x : r) : op == MPI_MAX ? (x > r ? x : r) : r + x;
        }
        out[i] = r;
    }
    free(all);
}

int comm_agree(Comm *c, int ok, int *first_bad, int *n_bad) {
    int mine[2] = {ok ? INT_MAX : c->rank, ok ? 0 : -1}, all[2]; // min of (rank, -count)
    agree_ints(c, mine, all, 2, MPI_MIN);
    if (!ok || all[0] != INT_MAX) { // how many failed: only when someone did
        int bad = !ok, total = 0;
        agree_ints(c, &bad, &total, 1, MPI_SUM);
        comm_account(c, MSG_CONTROL, COMM_COLLECTIVE, sizeof(int), sizeof(int));
        all[1] = total;
    }
    comm_account(c, MSG_CONTROL, COMM_COLLECTIVE, 2 * sizeof(int), 2 * sizeof(int));
    if (first_bad) *first_bad = all[0] == INT_MAX ? -1 : all[0];
    if (n_bad) *n_bad = all[0] == INT_MAX ? 0 : all[1];
    return all[0] == INT_MAX;
}

int comm_cuda_support(void) {
#if defined(MPIX_CUDA_AWARE_SUPPORT) // (0 or 1: how the library was built; the query: what it does now)
    return MPIX_Query_cuda_support() == 1;
#else
    return -1;
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
    agree_ints(c, &v, &all, 1, MPI_MAX);
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

// The pieces of an all-to-all of equal pieces (bytes each) on `on`: cnt, off, rcnt, roff (4 x n), every piece
// but the one for oneself (copied by the caller).
static size_t *equal_pieces(MPI_Comm on, size_t bytes) {
    int n, me;
    mpiCheck(MPI_Comm_size(on, &n));
    mpiCheck(MPI_Comm_rank(on, &me));
    size_t *p = mallocCheck(sizeof(size_t) * 4 * (size_t)n);
    for (int s = 0; s < n; s++) {
        p[s] = p[2 * n + s] = s == me ? 0 : bytes;
        p[n + s] = p[3 * n + s] = bytes * (size_t)s;
    }
    return p;
}

void comm_alltoall_ints(Comm *c, MsgKind kind, const int *send, int *recv, int per_peer) {
    MPI_Request req;
    if (c->seal) {
        int n = c->n_parties * c->ranks_per_party;
        size_t *p = equal_pieces(c->expert, sizeof(int) * (size_t)per_peer);
        alltoallv_bytes(c, kind, c->expert, send, p, p + n, recv, p + 2 * n, p + 3 * n);
        memcpy(recv + (size_t)per_peer * c->rank, send + (size_t)per_peer * c->rank, sizeof(int) * per_peer);
        free(p);
    } else {
        mpiCheck(MPI_Ialltoall(send, per_peer, MPI_INT, recv, per_peer, MPI_INT, c->expert, &req));
        comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    }
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
    if (c->seal) { // the same pieces in bytes, sealed
        size_t *b = mallocCheck(sizeof(size_t) * 4 * (size_t)P);
        for (int p = 0; p < 4 * P; p++) b[p] = 4 * (size_t)(unsigned)sc[p];
        alltoallv_bytes(c, kind, c->expert, send, b, b + P, recv, b + 2 * P, b + 3 * P);
        free(b);
        return;
    }
    MPI_Request req;
    mpiCheck(MPI_Ialltoallv(send, sc, sd, MPI_FLOAT, recv, rc, rd, MPI_FLOAT, c->expert, &req));
    comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
}

// comm_allreduce_floats with keys: every leader's buf to every other, sealed, in pieces of at most 2^22 floats,
// each piece summed here in party order.
static void allreduce_floats_sealed(Comm *c, MsgKind kind, float *buf, size_t n) {
    int P = c->n_parties, me = c->party;
    size_t most = n < ((size_t)1 << 22) ? n : ((size_t)1 << 22);
    float *all = mallocCheck(sizeof(float) * (size_t)P * (most ? most : 1)); // (P, piece) every party's piece
    for (size_t done = 0; done < n;) {
        size_t k = n - done < most ? n - done : most;
        size_t *p = equal_pieces(c->leaders, sizeof(float) * k);
        for (int q = 0; q < P; q++) p[P + q] = 0; // (the same piece of buf to every leader)
        alltoallv_bytes(c, kind, c->leaders, buf + done, p, p + P, all, p + 2 * P, p + 3 * P);
        free(p);
        memcpy(all + (size_t)me * k, buf + done, sizeof(float) * k);
        for (size_t j = 0; j < k; j++) {
            float sum = all[j];
            for (int q = 1; q < P; q++) sum += all[(size_t)q * k + j];
            buf[done + j] = sum;
        }
        done += k;
    }
    free(all);
    for (int q = 0; q < P; q++)
        if (q != me) comm_account(c, kind, q, 4.0 * n, 4.0 * n);
}

void comm_allreduce_floats(Comm *c, MsgKind kind, float *buf, size_t n) {
    if (c->seal) { allreduce_floats_sealed(c, kind, buf, n); return; }
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

#define COMM_SEALED_FLOATS ((size_t)1 << 28) // (a sealed piece's bytes, tag included, fit an int)

void comm_send_floats(Comm *c, MsgKind kind, int to, const float *buf, size_t n) {
    int w = world_rank_of(c, c->leaders, to), sealed = sealed_with(c, w);
    size_t most = sealed ? COMM_SEALED_FLOATS : COMM_MSG_FLOATS;
    for (size_t i = 0; i < n; i += most) {
        int k = (int)(n - i < most ? n - i : most);
        MPI_Request req;
        if (sealed) {
            unsigned char *ct = scratch(c, 0, 4 * (size_t)k + SEAL_TAG_BYTES);
            seal_piece(c, kind, w, buf + i, 4 * (size_t)k, ct);
            mpiCheck(MPI_Isend(ct, 4 * k + SEAL_TAG_BYTES, MPI_BYTE, to, (int)kind, c->leaders, &req));
        } else {
            mpiCheck(MPI_Isend(buf + i, k, MPI_FLOAT, to, (int)kind, c->leaders, &req));
        }
        comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    }
    comm_account(c, kind, to, 4.0 * (double)n, 0.0);
}

void comm_recv_floats(Comm *c, MsgKind kind, int from, float *buf, size_t n) {
    int w = world_rank_of(c, c->leaders, from), sealed = sealed_with(c, w);
    size_t most = sealed ? COMM_SEALED_FLOATS : COMM_MSG_FLOATS;
    for (size_t i = 0; i < n; i += most) {
        int k = (int)(n - i < most ? n - i : most);
        MPI_Request req;
        unsigned char *ct = sealed ? scratch(c, 1, 4 * (size_t)k + SEAL_TAG_BYTES) : NULL;
        if (sealed) mpiCheck(MPI_Irecv(ct, 4 * k + SEAL_TAG_BYTES, MPI_BYTE, from, (int)kind, c->leaders, &req));
        else mpiCheck(MPI_Irecv(buf + i, k, MPI_FLOAT, from, (int)kind, c->leaders, &req));
        comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
        if (sealed) open_piece(c, kind, w, ct, 4 * (size_t)k, buf + i);
    }
    comm_account(c, kind, from, 0.0, 4.0 * (double)n);
}

// Gathers `bytes` from every rank of `on` to its rank 0 (recv: n x bytes there), sealed where they cross a party
// line. send and recv may be the same on rank 0 (its own piece is in place).
static void gather_sealed(Comm *c, MsgKind kind, MPI_Comm on, const void *send, size_t bytes, void *recv) {
    int n, me;
    mpiCheck(MPI_Comm_size(on, &n));
    mpiCheck(MPI_Comm_rank(on, &me));
    size_t *p = mallocCheck(sizeof(size_t) * 4 * (size_t)n);
    for (int s = 0; s < n; s++) {
        p[s] = me != 0 && s == 0 ? bytes : 0;
        p[n + s] = 0;
        p[2 * n + s] = me == 0 && s != 0 ? bytes : 0;
        p[3 * n + s] = bytes * (size_t)s;
    }
    alltoallv_bytes(c, kind, on, send, p, p + n, recv, p + 2 * n, p + 3 * n);
    if (me == 0 && recv != send) memcpy(recv, send, bytes);
    free(p);
}

void comm_gather_doubles(Comm *c, MsgKind kind, const double *send, int n, double *recv) {
    MPI_Request req;
    if (c->seal) gather_sealed(c, kind, c->leaders, send, sizeof(double) * (size_t)n, recv);
    else {
        mpiCheck(MPI_Igather(send, n, MPI_DOUBLE, recv, n, MPI_DOUBLE, 0, c->leaders, &req));
        comm_wait(c, &req, 1, MSG_KIND_NAMES[kind]);
    }
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
// sent and received inside the party per kind, then the bytes sealing added to what was sent and received, per
// kind.
enum { AUDIT_TABLE = MSG_KIND_COUNT * (CONFIG_MAX_PARTIES + 1),
       AUDIT_ROW = 2 * AUDIT_TABLE + CONFIG_MAX_PARTIES + 4 * MSG_KIND_COUNT };

// {kind: bytes, ...} of one direction of a rank's traffic inside its party.
static void json_intra(Json *j, const double *t) {
    json_open_object(j);
    for (int k = 0; k < MSG_KIND_COUNT; k++) json_member_fixed(j, MSG_KIND_NAMES[k], t[k], 0);
    json_close_object(j);
}

// The audit of every rank: its routed rows, then its bytes sent and received per kind across party lines,
// then inside its party. all (n_ranks, AUDIT_ROW doubles).
static void json_audit(Json *j, const double *all, int P, int R, int sealed) {
    json_open_object(j);
    json_member_int(j, "n_parties", P);
    json_member_int(j, "ranks_per_party", R);
    json_member_string(j, "sealing", sealed ? "xchacha20poly1305 (parties.keys)" : "none: the exchange travels in "
                       "the clear (parties.keys is not set)");
    json_member_string(j, "peer_index", "per_party[i] is party i; collective counts reductions over all parties; "
                       "intra_party counts traffic between the ranks of the rank's own party; sealing_overhead: "
                       "the bytes sealing added (a 16-byte tag per sealed message), beside the payloads counted");
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
        json_key(j, "sealing_overhead");
        json_open_object(j);
        json_key(j, "sent");
        json_intra(j, v + 2 * AUDIT_TABLE + CONFIG_MAX_PARTIES + 2 * MSG_KIND_COUNT);
        json_key(j, "recv");
        json_intra(j, v + 2 * AUDIT_TABLE + CONFIG_MAX_PARTIES + 3 * MSG_KIND_COUNT);
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
    memcpy(at += MSG_KIND_COUNT, c->seal_sent, sizeof c->seal_sent);
    memcpy(at += MSG_KIND_COUNT, c->seal_recv, sizeof c->seal_recv);
    double *all = mallocCheck(sizeof(double) * AUDIT_ROW * n);
    if (n > 1 && c->seal) {
        gather_sealed(c, MSG_AUDIT, c->expert, mine, sizeof(double) * AUDIT_ROW, all);
    } else if (n > 1) {
        MPI_Request req;
        mpiCheck(MPI_Igather(mine, AUDIT_ROW, MPI_DOUBLE, all, AUDIT_ROW, MPI_DOUBLE, 0, c->expert, &req));
        comm_wait(c, &req, 1, "the audit");
    }
    else memcpy(all, mine, sizeof(double) * AUDIT_ROW);
    int rc = 0;
    if (c->rank == 0) {
        Json j = {0};
        json_audit(&j, all, c->n_parties, c->ranks_per_party, c->seal != NULL);
        rc = json_write(&j, path, err, len);
    }
    free(mine);
    free(all);
    return rc;
}
