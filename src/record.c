// record.c: the study's recorder behind the exchange's one tap (see record.h).
#include "record.h"

#include <errno.h>  // errno, EIO
#include <stdio.h>  // FILE, fwrite, fflush, ftell
#include <stdlib.h> // free
#include <string.h> // strerror
#include <unistd.h> // ftruncate

#include "exchange.h" // Exchange: the layouts and buffers the tap reads
#include "util.h"     // mallocCheck, fopenCheck, fail, mkdir_p, error_set

// The record files, one of each per party.
typedef enum { REC_ROWS, REC_TRUTH, REC_GRADS, REC_GRAD_TRUTH, REC_EXPERTS, REC_FILES } RecordFile;
static const char *const REC_NAMES[REC_FILES] = {"received_party", "truth_party", "received_grads_party",
                                                 "truth_grads_party", "received_experts_party"};

struct Recorder {
    FILE *f[REC_FILES];
    char path[REC_FILES][4200];
    long good[REC_FILES];              // their lengths at the end of the last committed step
    int errno_seen;                    // a failed write since then (errno), or 0
    int bad;                           // and which file
    const Token *tokens, *targets;   // (N) the batch being computed (record_batch)
};

Recorder *record_open(const char *dir, int party) {
    if (mkdir_p(dir) != 0) fail("privacy.record_received = %s: cannot create directory: %s", dir, strerror(errno));
    Recorder *r = callocCheck(1, sizeof *r);
    for (int i = 0; i < REC_FILES; i++) {
        snprintf(r->path[i], sizeof r->path[i], "%s/%s_%d.bin", dir, REC_NAMES[i], party);
        r->f[i] = fopenCheck(r->path[i], "wb");
    }
    return r;
}

void record_batch(Recorder *r, const Token *tokens, const Token *targets) {
    r->tokens = tokens;
    r->targets = targets;
}

// One block: header (layer, peer, rows, width), then rows x width elements of `elem` bytes.
static void record_block(Recorder *r, RecordFile file, int layer, int peer, int rows, int width, const void *data,
                         size_t elem) {
    int hdr[4] = {layer, peer, rows, width};
    FILE *f = r->f[file];
    if (r->errno_seen) return;
    if (fwrite(hdr, sizeof hdr, 1, f) != 1 || fwrite(data, elem, (size_t)rows * width, f) != (size_t)rows * width) {
        r->errno_seen = errno ? errno : EIO;
        r->bad = file;
    }
}

// The true byte of each row this party sends to each peer, in sending order: its input byte (forward), or
// its target, the byte after it (backward: a row's output gradient is mostly about what comes next).
static void record_truth(Recorder *r, RecordFile file, const Exchange *ex, int layer, const int *row_choice, int k) {
    const Token *truth = file == REC_GRAD_TRUTH ? r->targets : r->tokens;
    if (!truth) fail("internal: privacy.record_received: a pass without its batch's bytes");
    for (int p = 0; p < ex->P; p++) {
        if (!ex->send_rows[p]) continue;
        uint8_t *bytes = mallocCheck((size_t)ex->send_rows[p]);
        for (int i = 0; i < ex->send_rows[p]; i++) // (the study is of byte-level models: a token is a byte)
            bytes[i] = (uint8_t)truth[row_choice[ex->send_offs[p] + i] / k];
        record_block(r, file, layer, p, ex->send_rows[p], 1, bytes, 1);
        free(bytes);
    }
}

// The rows this owner received from each peer (`work`: the exchange's work buffer on the host).
static void record_received(Recorder *r, RecordFile file, const Exchange *ex, int layer, const float *work) {
    for (int q = 0; q < ex->P; q++)
        if (ex->recv_rows[q])
            record_block(r, file, layer, q, ex->recv_rows[q], ex->d, work + (size_t)ex->recv_offs[q] * ex->d,
                         sizeof(float));
}

// The expert each row received from each peer reached (global ids), in the order of the rows.
static void record_experts(Recorder *r, const Exchange *ex, int layer) {
    const ServeLayer *sl = &ex->layers[layer];
    int K = ex->max_local;
    for (int q = 0; q < ex->P; q++) {
        if (!ex->recv_rows[q]) continue;
        int *ids = mallocCheck(sizeof(int) * (size_t)ex->recv_rows[q]), n = 0;
        for (int j = 0; j < ex->n_local; j++)
            for (int i = 0; i < sl->from[q * K + j]; i++) ids[n++] = ex->local[j];
        record_block(r, REC_EXPERTS, layer, q, n, 1, ids, sizeof(int));
        free(ids);
    }
}

void record_tap(Recorder *r, TapPoint at, const Exchange *ex, int layer, const int *row_choice, int k,
                const float *received) {
    switch (at) {
    case TAP_ROWS_SENT:
        if (row_choice) record_truth(r, REC_TRUTH, ex, layer, row_choice, k);
        break;
    case TAP_ROWS_RECEIVED:
        record_received(r, REC_ROWS, ex, layer, received);
        record_experts(r, ex, layer);
        break;
    case TAP_GRADS_SENT:
        if (row_choice) record_truth(r, REC_GRAD_TRUTH, ex, layer, row_choice, k);
        break;
    case TAP_GRADS_RECEIVED:
        record_received(r, REC_GRADS, ex, layer, received);
        break;
    }
}

int record_commit(Recorder *r, char *err, size_t len) {
    for (int i = 0; i < REC_FILES; i++)
        if (!r->errno_seen && (fflush(r->f[i]) != 0 || ferror(r->f[i]))) {
            r->errno_seen = errno ? errno : EIO;
            r->bad = i;
        }
    if (!r->errno_seen) {
        for (int i = 0; i < REC_FILES; i++) r->good[i] = ftell(r->f[i]);
        return 0;
    }
    for (int i = 0; i < REC_FILES; i++) // drop the step's partial blocks from every file (the error below stands)
        if (ftruncate(fileno(r->f[i]), r->good[i]) != 0) continue;
    return error_set(err, len, "privacy.record_received: %s: cannot write: %s", r->path[r->bad],
                     strerror(r->errno_seen)) - 1;
}

void record_close(Recorder *r) {
    if (!r) return;
    for (int i = 0; i < REC_FILES; i++) fclose(r->f[i]);
    free(r);
}
