// meet.c: parties that start their own jobs meet through MPI's ports (see meet.h).
#include "meet.h"

#include <stdio.h>  // fprintf
#include <stdlib.h> // free
#include <string.h> // strlen, memset
#include <time.h>   // nanosleep

#include "util.h"   // mpiCheck, mallocCheck, fail, fail_usage, now_seconds, Text

#define MEET_PROTOCOL 1 // what the parties say to each other at the meeting and after; bumped on any change

// Between two questions to the name server while a party waits for another: 0.2 s.
static void poll_pause(void) {
    struct timespec ts = {0, 200000000};
    nanosleep(&ts, NULL);
}

// The name under which party 0 publishes the port for party P: "pcmoe:NAME:P". One port per party, so that no
// two parties ever connect to one port at once (Open MPI 4 can pair two concurrent connects to one port with
// one accept, and then both jobs hang).
static void port_service(char *out, size_t len, const char *name, int p) { snprintf(out, len, "pcmoe:%s:%d", name, p); }

// The name under which party P says it is there, about to connect to `port` (unique to this meeting, so a name
// left behind by an earlier run never passes for one).
static void here_service(char *out, size_t len, const char *name, int p, const char *port) {
    snprintf(out, len, "pcmoe:%s:%d:here:%s", name, p, port);
}

// Party 0's rank 0: a port for each other party, published. ports: [N][MPI_MAX_PORT_NAME]
static void open_ports(const char *name, int N, char (*ports)[MPI_MAX_PORT_NAME]) {
    char service[400], value[MPI_MAX_PORT_NAME];
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    port_service(service, sizeof service, name, 1);
    if (MPI_Lookup_name(service, MPI_INFO_NULL, value) == MPI_SUCCESS) // (a publish would overwrite it)
        fail("--connect %s: a meeting of that name is open on this name server (another run's, or one whose party 0 "
             "was killed at the meeting): choose another name, or restart the ompi-server", name);
    for (int p = 1; p < N; p++) {
        port_service(service, sizeof service, name, p);
        mpiCheck(MPI_Open_port(MPI_INFO_NULL, ports[p]));
        if (MPI_Publish_name(service, MPI_INFO_NULL, ports[p]) != MPI_SUCCESS)
            fail("--connect %s: cannot publish the meeting's port: start every party's mpirun with --ompi-server "
                 "file:URI (the URI an ompi-server wrote)", name);
    }
}

// Party 0's rank 0, after the meeting: the ports closed and their names withdrawn.
static void close_ports(const char *name, int N, char (*ports)[MPI_MAX_PORT_NAME]) {
    char service[400];
    for (int p = 1; p < N; p++) {
        port_service(service, sizeof service, name, p);
        MPI_Unpublish_name(service, MPI_INFO_NULL, ports[p]);
        mpiCheck(MPI_Close_port(ports[p]));
    }
}

// Party P's rank 0: the port party 0 published for it, looked up until it is there (within timeout s; 0: for
// ever); then P says it is there. A second job as party P is refused here (unless both say so at once: the
// name server has no test-and-set).
static void find_port(const char *name, int party, char *port, double timeout) {
    char service[400], value[MPI_MAX_PORT_NAME];
    port_service(service, sizeof service, name, party);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    double t0 = now_seconds();
    while (MPI_Lookup_name(service, MPI_INFO_NULL, port) != MPI_SUCCESS) {
        if (timeout > 0 && now_seconds() - t0 > timeout)
            fail("--connect %s: party 0 has not opened the meeting within %g s (parties.peer_timeout): is it "
                 "running, and are both mpiruns started with --ompi-server file:URI of the same ompi-server?",
                 name, timeout);
        poll_pause();
    }
    here_service(service, sizeof service, name, party, port);
    if (MPI_Lookup_name(service, MPI_INFO_NULL, value) == MPI_SUCCESS)
        fail("--connect %s: party %d is already at the meeting (two jobs with the same --party?)", name, party);
    mpiCheck(MPI_Publish_name(service, MPI_INFO_NULL, port));
}

// Party 0's rank 0: the next party that says it is there (-1 when none did within timeout s of the last one
// met; 0: wait for ever), or err set naming the missing parties. met: [N], 1 for the parties met so far.
static int next_party(const char *name, int N, char (*ports)[MPI_MAX_PORT_NAME], const int *met, double timeout,
                      char *err, size_t len) {
    char service[400], value[MPI_MAX_PORT_NAME];
    double t0 = now_seconds();
    for (;;) {
        for (int p = 1; p < N; p++) {
            if (met[p]) continue;
            here_service(service, sizeof service, name, p, ports[p]);
            if (MPI_Lookup_name(service, MPI_INFO_NULL, value) == MPI_SUCCESS) return p;
        }
        if (timeout > 0 && now_seconds() - t0 > timeout) break;
        poll_pause();
    }
    size_t n = (size_t)snprintf(err, len, "party 0 waited %g s (parties.peer_timeout) for", timeout);
    for (int p = 1; p < N && n < len; p++)
        if (!met[p]) n += (size_t)snprintf(err + n, len - n, " party %d,", p);
    if (n < len) snprintf(err + n - 1, len - n + 1, ": is each one's job running, with --ompi-server file:URI of "
                          "the same ompi-server as party 0's?");
    return -1;
}

static void stop_meeting(MPI_Comm world, int first_bad, char *err, size_t len, int local, const char *name);

// The meeting: party 0's job accepts the others one by one, in the order they come, each new one merged into
// the parties met so far, which all take part in the next accept. Returns the communicator of every rank met
// (in arrival order).
static MPI_Comm gather_parties(const Config *cfg, int party, const char *name) {
    int N = cfg->n_parties, rank, joined = 0, next = 0, *met = callocCheck((size_t)N, sizeof(int));
    char (*ports)[MPI_MAX_PORT_NAME] = callocCheck((size_t)N, MPI_MAX_PORT_NAME), err[1024] = "";
    MPI_Comm acc, inter, merged;
    mpiCheck(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    if (party == 0) {
        if (rank == 0) open_ports(name, N, ports);
        mpiCheck(MPI_Comm_dup(MPI_COMM_WORLD, &acc));
        joined = 1;
    } else {
        if (rank == 0) find_port(name, party, ports[party], cfg->peer_timeout);
        mpiCheck(MPI_Comm_connect(ports[party], MPI_INFO_NULL, 0, MPI_COMM_WORLD, &inter));
        mpiCheck(MPI_Intercomm_merge(inter, 1, &acc));
        mpiCheck(MPI_Comm_free(&inter));
        mpiCheck(MPI_Bcast(&joined, 1, MPI_INT, 0, acc));
    }
    while (joined < N) {
        if (party == 0 && rank == 0) next = next_party(name, N, ports, met, cfg->peer_timeout, err, sizeof err);
        mpiCheck(MPI_Bcast(&next, 1, MPI_INT, 0, acc));
        if (next < 0) {
            if (party == 0 && rank == 0) close_ports(name, N, ports);
            stop_meeting(acc, 0, err, sizeof err, rank, name);
        }
        mpiCheck(MPI_Comm_accept(ports[next], MPI_INFO_NULL, 0, acc, &inter)); // (the port counts at the root)
        mpiCheck(MPI_Intercomm_merge(inter, 0, &merged));
        mpiCheck(MPI_Comm_free(&inter));
        mpiCheck(MPI_Comm_free(&acc));
        acc = merged;
        met[next] = 1;
        joined++;
        mpiCheck(MPI_Bcast(&joined, 1, MPI_INT, 0, acc));
    }
    if (party == 0 && rank == 0) close_ports(name, N, ports);
    if (party > 0 && rank == 0) {
        char service[400];
        here_service(service, sizeof service, name, party, ports[party]);
        MPI_Unpublish_name(service, MPI_INFO_NULL, ports[party]);
    }
    free(ports);
    free(met);
    return acc;
}

// Every party of the meeting must have come once, with parties.ranks_per_party ranks. all: the party of each
// rank. Returns 0, or 2 with err set.
static int check_parties(const int *all, int n, const Config *cfg, char *err, size_t len) {
    int N = cfg->n_parties, R = cfg->ranks_per_party, *count = callocCheck((size_t)N, sizeof(int)), rc = 0;
    for (int i = 0; i < n; i++) count[all[i]]++;
    for (int p = 0; p < N && !rc; p++)
        if (count[p] != R)
            rc = error_set(err, len, "party %d came to the meeting with %d ranks, parties.ranks_per_party = %d (two "
                           "jobs with the same --party?)", p, count[p], R);
    free(count);
    return rc;
}

// Party 0's config text, sent to every rank of `world`; each compares it with its own (the keys every party
// must share) and the protocol version. Returns 0, or 2 with err set (this rank's disagreement).
static int compare_configs(MPI_Comm world, const Config *cfg, int party, char *err, size_t len) {
    int rank, head[2] = {MEET_PROTOCOL, 0};
    mpiCheck(MPI_Comm_rank(world, &rank));
    Text t = {0};
    if (rank == 0) { config_write(&t, cfg); head[1] = (int)t.len + 1; }
    mpiCheck(MPI_Bcast(head, 2, MPI_INT, 0, world));
    char *text = mallocCheck((size_t)head[1]);
    if (rank == 0) memcpy(text, t.s, (size_t)head[1]);
    mpiCheck(MPI_Bcast(text, head[1], MPI_CHAR, 0, world));
    text_free(&t);
    int rc = 0;
    Config *first = mallocCheck(sizeof(Config));
    char why[1024], mine[32];
    snprintf(mine, sizeof mine, "party %d has", party);
    if (head[0] != MEET_PROTOCOL)
        rc = error_set(err, len, "party 0 speaks meeting protocol %d, party %d %d (another pcmoe version)", head[0],
                       party, MEET_PROTOCOL);
    else if (config_load_text(first, text, why, sizeof why))
        rc = error_set(err, len, "party 0's config: %s", why);
    else if (config_diff_shared(first, cfg, "party 0 has", mine, why, sizeof why))
        rc = error_set(err, len, "party %d's config differs from party 0's: %s", party, why);
    free(first);
    free(text);
    return rc;
}

// The meeting fails on every rank: the first failing rank's reason goes to all, each party's first rank
// prints it, and every job ends with status 2. (Each aborts its own job: a finalize across jobs that did not
// agree to go on can wait for one that is already gone.)
static void stop_meeting(MPI_Comm world, int first_bad, char *err, size_t len, int local, const char *name) {
    mpiCheck(MPI_Bcast(err, (int)len, MPI_CHAR, first_bad, world));
    if (local == 0) fprintf(stderr, "pcmoe: error: --connect %s: %s\n", name, err);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 2);
    exit(2);
}

void meet_parties(Comm *c, const Config *cfg, int party, const char *name) {
    int R = cfg->ranks_per_party, job_rank, job_size;
    mpiCheck(MPI_Comm_rank(MPI_COMM_WORLD, &job_rank));
    mpiCheck(MPI_Comm_size(MPI_COMM_WORLD, &job_size));
    if (party >= cfg->n_parties)
        fail_usage(2, 0, "--party %d: parties.count = %d: give a party from 0 to %d", party, cfg->n_parties,
                   cfg->n_parties - 1);
    if (job_size != R)
        fail_usage(2, 0, "--party %d --connect %s: this job has %d rank%s, a party has parties.ranks_per_party = %d",
                   party, name, job_size, job_size == 1 ? "" : "s", R);
    MPI_Comm met = gather_parties(cfg, party, name), world;
    mpiCheck(MPI_Comm_set_errhandler(met, MPI_ERRORS_RETURN)); // (a failing job ends here through mpiCheck)
    int n, *all;
    mpiCheck(MPI_Comm_size(met, &n));
    all = mallocCheck(sizeof(int) * (size_t)n);
    mpiCheck(MPI_Allgather(&party, 1, MPI_INT, all, 1, MPI_INT, met));
    char err[1024] = "";
    int rc = check_parties(all, n, cfg, err, sizeof err);
    free(all);
    mpiCheck(MPI_Comm_split(met, 0, rc ? job_rank : party * R + job_rank, &world)); // ranks ordered by party
    c->met = met;
    c->world = world;
    mpiCheck(MPI_Comm_rank(world, &c->rank));
    mpiCheck(MPI_Comm_size(world, &c->size));
    c->party = party;
    if (!rc) rc = compare_configs(world, cfg, party, err, sizeof err);
    int first_bad = -1;
    if (!comm_agree(c, rc == 0, &first_bad, NULL)) stop_meeting(world, first_bad, err, sizeof err, job_rank, name);
    if (c->rank == 0)
        fprintf(stderr, "pcmoe: --connect %s: %d parties of %d rank%s met\n", name, cfg->n_parties, R,
                R > 1 ? "s" : "");
}
