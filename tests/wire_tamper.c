// wire_tamper: a PMPI interposer (LD_PRELOAD) that plays the network attacker for tests/test_sealed.sh. On
// world rank TAMPER_RANK it watches the pieces its MPI_Ialltoallv calls send to the other ranks; the pieces of
// TAMPER_SIZE bytes (LO-HI) are counted, and once TAMPER_AFTER of them have gone by it acts on the next one:
//   TAMPER_MODE=flip    one bit of a byte in its middle flipped
//   TAMPER_MODE=replay  it is kept, and the next matching piece to the same rank is replaced by it (an old
//                       message delivered again in place of a new one)
// The call then goes out with a copy of the send buffer, the pieces changed; the caller's buffer is left alone.
// It writes one line to stderr when it acts ("wire_tamper: ..."), so the test knows the attack happened.
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int armed = -1;        // 1: this rank tampers; 0: not; -1: not decided yet
static long lo, hi, after, seen;
static int replay, done;
static unsigned char *kept;   // replay: the piece kept, its size and destination
static long kept_bytes;
static int kept_to = -1;

static void decide(void) {
    int rank;
    PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char *r = getenv("TAMPER_RANK"), *size = getenv("TAMPER_SIZE"), *mode = getenv("TAMPER_MODE");
    armed = r && size && mode && atoi(r) == rank && sscanf(size, "%ld-%ld", &lo, &hi) == 2;
    after = getenv("TAMPER_AFTER") ? atol(getenv("TAMPER_AFTER")) : 0;
    replay = mode && !strcmp(mode, "replay");
}

// Changes piece (p, bytes) for rank `to` in place (p is in the copy). Returns 1 when it acted.
static int tamper(unsigned char *p, long bytes, int to) {
    if (bytes < lo || bytes > hi || done) return 0;
    if (seen++ < after) return 0;
    if (!replay) {
        p[bytes / 8 * 4 + 2] ^= 0x40; // (in rows of floats: a middle float's top mantissa bit, up to 50%)
        fprintf(stderr, "wire_tamper: flipped a bit of a %ld-byte piece to rank %d\n", bytes, to);
        return done = 1;
    }
    if (!kept) {
        kept = malloc(bytes);
        memcpy(kept, p, bytes);
        kept_bytes = bytes;
        kept_to = to;
        return 0;
    }
    if (to != kept_to || bytes != kept_bytes) return 0;
    memcpy(p, kept, bytes);
    fprintf(stderr, "wire_tamper: replayed an earlier %ld-byte piece to rank %d\n", bytes, to);
    return done = 1;
}

int MPI_Ialltoallv(const void *sendbuf, const int sendcounts[], const int sdispls[], MPI_Datatype sendtype,
                   void *recvbuf, const int recvcounts[], const int rdispls[], MPI_Datatype recvtype, MPI_Comm comm,
                   MPI_Request *request) {
    if (armed < 0) decide();
    int n, me, tsize;
    PMPI_Comm_size(comm, &n);
    PMPI_Comm_rank(comm, &me);
    PMPI_Type_size(sendtype, &tsize);
    if (!armed || done || sendbuf == MPI_IN_PLACE)
        return PMPI_Ialltoallv(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm,
                               request);
    long total = 0;
    for (int s = 0; s < n; s++)
        if ((long)(sdispls[s] + sendcounts[s]) * tsize > total) total = (long)(sdispls[s] + sendcounts[s]) * tsize;
    unsigned char *copy = malloc(total ? total : 1); // (kept until exit: the call completes later)
    memcpy(copy, sendbuf, total);
    for (int s = 0; s < n; s++)
        if (s != me && sendcounts[s] && tamper(copy + (long)sdispls[s] * tsize, (long)sendcounts[s] * tsize, s)) break;
    return PMPI_Ialltoallv(copy, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm, request);
}
