// hf.c: Hugging Face MoE checkpoints: the tensor names of each architecture, reading a model's tensors
// (config.json: hf_config.c).
#include "hf.h"

#include <stdio.h>  // snprintf
#include <string.h> // strlen

#include "util.h"   // error_set

// The Hugging Face name of pcmoe tensor t's one piece (everything but attn_wqkv) in out.
static void piece_name(int arch, const ParamTensor *t, char *out, size_t n) {
    const char *moe = arch == HF_MIXTRAL ? "block_sparse_moe" : "mlp";
    static const char *const mixtral_w[] = {"w1", "w3", "w2"}, *const proj[] = {"gate_proj", "up_proj", "down_proj"};
    int l = t->layer;
    switch (t->kind) {
    case T_EMBED: snprintf(out, n, "model.embed_tokens.weight"); break;
    case T_FINAL_NORM: snprintf(out, n, "model.norm.weight"); break;
    case T_LM_HEAD: snprintf(out, n, "lm_head.weight"); break;
    case T_ATTN_NORM: snprintf(out, n, "model.layers.%d.input_layernorm.weight", l); break;
    case T_FFN_NORM: snprintf(out, n, "model.layers.%d.post_attention_layernorm.weight", l); break;
    case T_WO: snprintf(out, n, "model.layers.%d.self_attn.o_proj.weight", l); break;
    case T_Q_NORM: snprintf(out, n, "model.layers.%d.self_attn.q_norm.weight", l); break;
    case T_K_NORM: snprintf(out, n, "model.layers.%d.self_attn.k_norm.weight", l); break;
    case T_ROUTER: snprintf(out, n, "model.layers.%d.%s.gate.weight", l, moe); break;
    case T_FFN_GATE: case T_FFN_UP: case T_FFN_DOWN:
        snprintf(out, n, "model.layers.%d.mlp.%s.weight", l, proj[t->kind - T_FFN_GATE]);
        break;
    case T_EXP_GATE: case T_EXP_UP: case T_EXP_DOWN:
        snprintf(out, n, "model.layers.%d.%s.experts.%d.%s.weight", l, moe, t->expert,
                 arch == HF_MIXTRAL ? mixtral_w[t->kind - T_EXP_GATE] : proj[t->kind - T_EXP_GATE]);
        break;
    default: snprintf(out, n, "?"); break;
    }
}

int hf_pieces(int arch, const ModelConfig *c, const ParamTensor *t, HfPiece *out) {
    if (t->kind != T_WQKV) {
        piece_name(arch, t, out[0].name, sizeof out[0].name);
        out[0].row0 = 0;
        out[0].rows = t->rows;
        return 1;
    }
    static const char *const qkv[] = {"q_proj", "k_proj", "v_proj"};
    int q = model_q_dim(c), kv = model_kv_dim(c), rows[] = {q, kv, kv}, row0 = 0;
    for (int i = 0; i < 3; i++) {
        snprintf(out[i].name, sizeof out[i].name, "model.layers.%d.self_attn.%s.weight", t->layer, qkv[i]);
        out[i].row0 = row0;
        out[i].rows = rows[i];
        row0 += rows[i];
    }
    return 3;
}

// Reads piece p of tensor t (cols wide) into dst, checking the file's shape against it.
static int piece_read(const StModel *s, const ParamTensor *t, const HfPiece *p, float *dst, char *err, size_t len) {
    const StTensor *st = st_find(s, p->name);
    if (!st) return error_set(err, len, "%s: tensor %s (pcmoe %s) is missing", s->dir, p->name, t->name);
    int vector = t->cols == 1;
    if (st->ndim != (vector ? 1 : 2) || st->shape[0] != p->rows || (!vector && st->shape[1] != t->cols)) {
        char shape[96] = "", want[32];
        for (int i = 0; i < st->ndim; i++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", i ? ", " : "",
                     (long long)st->shape[i]);
        if (vector) snprintf(want, sizeof want, "%d", p->rows);
        else snprintf(want, sizeof want, "%d, %d", p->rows, t->cols);
        return error_set(err, len, "%s: tensor %s has shape (%s); config.json gives (%s)", s->files[st->file].path,
                         p->name, shape, want);
    }
    return st_read_f32(s, st, dst, err, len);
}

int hf_read_weights(Model *m, const char *dir, char *err, size_t len) {
    HfConfig h;
    if (hf_config_read(&h, dir, err, len)) return 2;
    StModel s;
    if (st_open(&s, dir, err, len)) return 2;
    int rc = 0;
    for (int i = 0; i < m->n_tensors && !rc; i++) {
        const ParamTensor *t = &m->tensors[i];
        HfPiece pieces[3];
        int n = hf_pieces(h.arch, &m->cfg, t, pieces);
        for (int k = 0; k < n && !rc; k++)
            rc = piece_read(&s, t, &pieces[k], m->host_params + t->offset + (size_t)pieces[k].row0 * t->cols, err, len);
    }
    st_close(&s);
    return rc;
}
