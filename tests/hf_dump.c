// hf_dump: one forward and backward pass of the C engine on a Hugging Face checkpoint, for
// tests/hf/check_hf.py to hold against transformers fed the same checkpoint and ids.
//   hf_dump CONFIG IDS OUT.safetensors [ROWS]
// CONFIG: a pcmoe config whose model.hf names the checkpoint (its weights are read from there). IDS: B lines
// of T + 1 token ids (T = model.seq_len): each line's first T ids are the inputs, its last T the targets.
// OUT (F32): "logits" (B*T, V), "loss" (1: the mean cross-entropy), and for every tensor of the model its
// gradient under the Hugging Face name, "grad.<name>" (attn_wqkv as q_proj, k_proj, v_proj). ROWS: the LM head
// and cross-entropy take that many rows at a time (default: model.logits_chunk_mb's).
#include <stdio.h>  // fopen, fscanf
#include <stdlib.h> // malloc
#include <string.h> // memcpy

#include "config.h"      // config_load
#include "hf.h"          // hf_read_weights, hf_pieces, hf_config_read
#include "layers.h"      // matmul_forward: the logits again (the forward leaves probabilities)
#include "model.h"       // Model
#include "safetensors.h" // st_write

// Reads B rows of T + 1 ids into tok and tgt (B*T each). Returns B, or 0 on a malformed file.
static int ids_read(const char *path, int T, Token **tok, Token **tgt) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int B = 0, cap = 0;
    unsigned v;
    *tok = *tgt = NULL;
    for (int i = 0; fscanf(f, "%u", &v) == 1; i++) {
        int b = i / (T + 1), t = i % (T + 1);
        if (b >= cap) {
            cap = cap ? 2 * cap : 4;
            *tok = realloc(*tok, sizeof(Token) * (size_t)cap * T);
            *tgt = realloc(*tgt, sizeof(Token) * (size_t)cap * T);
        }
        if (t < T) (*tok)[(size_t)b * T + t] = v;
        if (t > 0) (*tgt)[(size_t)b * T + t - 1] = v;
        if (t == T) B = b + 1;
    }
    fclose(f);
    return B;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) { fprintf(stderr, "usage: hf_dump CONFIG IDS OUT.safetensors [ROWS]\n"); return 2; }
    static Config c;
    char err[2048];
    if (config_load(&c, argv[1], NULL, 0, err, sizeof err)) { fprintf(stderr, "hf_dump: %s\n", err); return 2; }
    HfConfig h;
    if (hf_config_read(&h, c.hf, err, sizeof err)) { fprintf(stderr, "hf_dump: %s\n", err); return 2; }
    ModelConfig mc = model_config_from(&c);
    if (argc == 5) mc.logits_rows = atoi(argv[4]);
    int T = mc.seq_len, V = mc.vocab;
    Token *tok, *tgt;
    int B = ids_read(argv[2], T, &tok, &tgt), N = B * T;
    if (B < 1) { fprintf(stderr, "hf_dump: %s: no line of %d ids\n", argv[2], T + 1); return 2; }
    Model m;
    model_create(&m, &mc, NULL, 1, B, T);
    if (hf_read_weights(&m, c.hf, err, sizeof err)) { fprintf(stderr, "hf_dump: %s\n", err); return 2; }
    model_zero_grad(&m);
    model_forward(&m, tok, tgt);
    float *logits = malloc(sizeof(float) * N * V), loss = (float)m.ce;
    matmul_forward(logits, m.lnf, m.w.lm_head, N, mc.d, V);
    model_backward(&m, tok, tgt);

    StWrite *w = calloc((size_t)m.n_tensors * 3 + 2, sizeof *w);
    char (*names)[ST_NAME_LEN + 8] = calloc((size_t)m.n_tensors * 3, sizeof *names);
    int n = 0;
    w[n++] = (StWrite){.name = "logits", .ndim = 2, .shape = {N, V}, .data = logits};
    w[n++] = (StWrite){.name = "loss", .ndim = 1, .shape = {1}, .data = &loss};
    for (int i = 0; i < m.n_tensors; i++) {
        const ParamTensor *t = &m.tensors[i];
        HfPiece p[3];
        int np = hf_pieces(h.arch, &mc, t, p);
        for (int k = 0; k < np; k++, n++) {
            snprintf(names[n - 2], sizeof names[0], "grad.%.250s", p[k].name);
            w[n] = (StWrite){.name = names[n - 2], .ndim = t->cols == 1 ? 1 : 2, .shape = {p[k].rows, t->cols},
                             .data = m.grads + t->offset + (size_t)p[k].row0 * t->cols};
        }
    }
    if (st_write(argv[3], w, n, ST_F32, err, sizeof err)) { fprintf(stderr, "hf_dump: %s\n", err); return 1; }
    printf("hf_dump: %s, %d x %d ids: loss %.6f; %d tensors to %s\n", HF_ARCH_NAMES[h.arch], B, T, loss, n, argv[3]);
    model_free(&m);
    free(w); free(names); free(logits); free(tok); free(tgt);
    return 0;
}
