// info.c: `pcmoe info`: loads each party file of a checkpoint exactly as a resume would, and reports it.
#include "info.h"

#include <dirent.h>   // opendir
#include <stdio.h>    // printf
#include <stdlib.h>   // free
#include <string.h>   // strcmp
#include <sys/stat.h> // stat

#include "ckpt.h"     // ckpt_peek, ckpt_load, ckpt_latest, ckpt_is_file_name
#include "config.h"   // config_load_text
#include "pool.h"     // pool_owner_rank
#include "model.h"    // model_create
#include "util.h"     // mallocCheck

#define MIB(x) ((double)(x) / 1048576.0)

// Loads and describes one party file. Returns 0 or 2.
static int info_file(const char *path, int complete) {
    char *text = mallocCheck(1 << 20), err[2048];
    CkptMeta meta;
    int rc = ckpt_peek(path, text, 1 << 20, &meta, err, sizeof err), step = meta.step, party = meta.party;
    int local = meta.local;
    Config *c = mallocCheck(sizeof(Config));
    if (!rc && config_load_text(c, text, err, sizeof err)) rc = 2;
    if (!rc && (party < 0 || party >= c->n_parties))
        rc = error_set(err, sizeof err, "%s: party %d of %d parties", path, party, c->n_parties);
    if (rc) {
        fprintf(stderr, "pcmoe: error: %s\n", err);
        free(text); free(c);
        return 2;
    }
    int E = c->n_experts, P = c->n_parties, R = c->ranks_per_party, pcmoe = c->mode == MODE_PCMOE && P * R > 1;
    if (local < 0 || local >= R) {
        fprintf(stderr, "pcmoe: error: %s: local rank %d of a party of %d ranks\n", path, local, R);
        free(text); free(c);
        return 2;
    }
    int *owned = mallocCheck(sizeof(int) * E);
    for (int e = 0; e < E; e++) owned[e] = !pcmoe || pool_owner_rank(e, P, R) == party * R + local;
    ModelConfig mc = model_config_from(c);
    Model m;
    model_create(&m, &mc, owned, !pcmoe, 1, c->seq_len);
    m.shuffle_on = pcmoe && c->shuffle_rows;
    int n_data = c->mode == MODE_CENTRALIZED ? P : 1;
    Rng *rngs = mallocCheck(sizeof(Rng) * n_data);
    CkptState s = {.party = party, .local = local, .c = c, .m = &m, .data_rng = rngs,
                   .first_data = n_data > 1 ? 0 : party, .n_data = n_data, .shuffle = m.shuffle_on ? &m.shuffle : NULL};
    long verified = 0;
    rc = ckpt_load(path, &s, err, sizeof err);
    if (!rc) rc = ckpt_verify(path, &verified, NULL, err, sizeof err); // (every dataset, not only the model's)
    if (rc) {
        fprintf(stderr, "pcmoe: error: %s\n", err);
    } else {
        size_t backbone = 0, experts = 0;
        for (int i = 0; i < m.n_tensors; i++) {
            if (m.tensors[i].expert >= 0) experts += m.tensors[i].numel;
            else if (local == 0) backbone += m.tensors[i].numel; // (rank 0 holds the party's backbone)
        }
        printf("%s: step %d, mode %s", path, step, MODE_NAMES[c->mode]);
        if (c->mode == MODE_PCMOE) printf(" (%s)", SCHEDULE_NAMES[c->schedule]);
        printf(", party %d of %d", party, P);
        if (R > 1) printf(", rank %d of its %d", local, R);
        printf("%s\n", complete ? "" : ", checkpoint INCOMPLETE (no marker)");
        printf("  parameters: %zu (backbone %zu%s, experts %zu: ", backbone + experts, backbone,
               local > 0 ? ", in the party's rank-0 file" : "", experts);
        int first = 1;
        for (int e = 0; e < E; e++)
            if (owned[e]) { printf("%s%d", first ? "" : ",", e); first = 0; }
        printf(" of %d per MoE layer)\n", E);
        printf("  memory: parameters %.2f MiB, gradients %.2f MiB, optimizer %.2f MiB, activations about %.2f MiB at "
               "batch_size %d\n",
               MIB(m.mem.params), MIB(m.mem.grads), MIB(m.mem.optim), MIB(m.mem.acts) * c->batch_size, c->batch_size);
        if (meta.version >= 2) printf("  checksums: /meta and %ld datasets verified (BLAKE2b-256)\n", verified - 1);
        else {
            printf("  checksums: none (format %d, written before pcmoe checksummed checkpoints): NOT verified\n",
                   meta.version);
            fprintf(stderr, "pcmoe: warning: %s: written before checkpoints carried checksums (format %d): loaded "
                    "unverified\n", path, meta.version);
        }
    }
    free(rngs); free(owned); free(text); free(c);
    model_free(&m);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Loads and describes every party file of step directory dir. Returns 0 or 2.
static int info_dir(const char *dir) {
    char p[4200];
    int complete = ckpt_is_complete(dir);
    DIR *d = opendir(dir);
    if (!d) { fprintf(stderr, "pcmoe: error: %s: cannot open directory\n", dir); return 2; }
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        if (ckpt_is_file_name(e->d_name)) names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n == 0) { fprintf(stderr, "pcmoe: error: %s: no party_*.h5 checkpoint files\n", dir); return 2; }
    qsort(names, n, sizeof(char *), cmp_str);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        if (info_file(p, complete)) rc = 2;
        free(names[i]);
    }
    if (!complete) {
        fprintf(stderr, "pcmoe: error: %s: incomplete checkpoint (no %s marker): it would not be resumed from\n", dir,
                CKPT_MARKER);
        rc = 2;
    }
    return rc;
}

int info_run(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) { fprintf(stderr, "pcmoe: error: %s: no such file or directory\n", path); return 2; }
    if (S_ISREG(st.st_mode)) return info_file(path, 1);
    char dir[4096], p[4200];
    snprintf(dir, sizeof dir, "%s", path);
    snprintf(p, sizeof p, "%s/checkpoints", path);
    if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) { // a run directory: its newest complete checkpoint
        char ignored[1024];
        int step = ckpt_latest(path, ignored, sizeof ignored);
        if (ignored[0]) fprintf(stderr, "pcmoe: ignoring incomplete checkpoint(s): %s\n", ignored);
        if (step < 0) { fprintf(stderr, "pcmoe: error: %s: no complete checkpoint\n", path); return 2; }
        ckpt_step_dir(dir, sizeof dir, path, step);
        int rc = info_dir(dir);
        if (rc) {
            int good = ckpt_newest_verified(path, step);
            if (good >= 0)
                fprintf(stderr, "pcmoe: the newest checkpoint of %s that verifies: step %d (train --resume=%d resumes "
                        "from it)\n", path, good, good);
            else fprintf(stderr, "pcmoe: no older complete checkpoint of %s verifies either\n", path);
        }
        return rc;
    }
    return info_dir(dir);
}
