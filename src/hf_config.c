// hf_config.c: a Hugging Face checkpoint's config.json as pcmoe [model] keys (hf.h).
#include "hf.h"

#include <jansson.h>  // json_load_file, json_object_get
#include <stdio.h>    // snprintf
#include <stdlib.h>   // free
#include <string.h>   // strcmp
#include <sys/stat.h> // stat

#include "util.h"     // error_set

const char *const HF_ARCH_NAMES[] = {"MixtralForCausalLM", "OlmoeForCausalLM", "Qwen3MoeForCausalLM", NULL};
static const char *const MODEL_TYPES[] = {"mixtral", "olmoe", "qwen3_moe", NULL};

int hf_is_checkpoint(const char *dir) {
    char path[1280];
    struct stat st;
    snprintf(path, sizeof path, "%s/config.json", dir);
    return stat(path, &st) == 0;
}

// Reading config.json: the file's name for errors, and its root object.
typedef struct {
    const char *path;
    json_t *root;
    HfConfig *h;
} Reader;

static void key_add(HfConfig *h, const char *key, const char *from, const char *fmt, double v) {
    HfKey *k = &h->keys[h->n_keys++];
    snprintf(k->key, sizeof k->key, "%s", key);
    snprintf(k->from, sizeof k->from, "%s", from);
    snprintf(k->value, sizeof k->value, fmt, v);
}

// model.<key> = the integer field `from` (absent or null: def, or an error when def < 0).
static int int_key(Reader *r, const char *key, const char *from, int def, char *err, size_t len) {
    json_t *v = json_object_get(r->root, from);
    if ((!v || json_is_null(v)) && def >= 0) { key_add(r->h, key, from, "%.0f", def); return 0; }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 30))
        return error_set(err, len, "%s: %s: %s", r->path, from, v ? "not a non-negative integer" : "missing");
    key_add(r->h, key, from, "%.0f", (double)json_integer_value(v));
    return 0;
}

// model.<key> = the number field `from` (absent or null: def).
static int real_key(Reader *r, const char *key, const char *from, double def, char *err, size_t len) {
    json_t *v = json_object_get(r->root, from);
    if (!v || json_is_null(v)) { key_add(r->h, key, from, "%.9g", def); return 0; }
    if (!json_is_number(v)) return error_set(err, len, "%s: %s: not a number", r->path, from);
    key_add(r->h, key, from, "%.9g", json_number_value(v));
    return 0;
}

// model.<key> = the boolean field `from` (absent or null: def), as true/false.
static int bool_key(Reader *r, const char *key, const char *from, int def, char *err, size_t len) {
    json_t *v = json_object_get(r->root, from);
    int b = def;
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v)) return error_set(err, len, "%s: %s: not true or false", r->path, from);
        b = json_is_true(v);
    }
    HfKey *k = &r->h->keys[r->h->n_keys++];
    snprintf(k->key, sizeof k->key, "%s", key);
    snprintf(k->from, sizeof k->from, "%s", from);
    snprintf(k->value, sizeof k->value, "%s", b ? "true" : "false");
    return 0;
}

static void fixed_key(HfConfig *h, const char *key, const char *value, const char *from) {
    HfKey *k = &h->keys[h->n_keys++];
    snprintf(k->key, sizeof k->key, "%s", key);
    snprintf(k->value, sizeof k->value, "%s", value);
    snprintf(k->from, sizeof k->from, "%s", from);
}

// A field whose value asks for something pcmoe does not compute: refused unless absent, null, false or
// 0 (or, for hidden_act, "silu").
static int refuse_set(Reader *r, const char *from, const char *what, char *err, size_t len) {
    json_t *v = json_object_get(r->root, from);
    if (!v || json_is_null(v) || json_is_false(v) || (json_is_number(v) && json_number_value(v) == 0)) return 0;
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    int rc = error_set(err, len, "%s: %s = %.60s: %s is not supported", r->path, from, text ? text : "?", what);
    free(text);
    return rc;
}

// The architecture from "architectures" (or "model_type").
static int arch_read(Reader *r, char *err, size_t len) {
    json_t *a = json_object_get(r->root, "architectures"), *t = json_object_get(r->root, "model_type");
    const char *name = json_is_array(a) ? json_string_value(json_array_get(a, 0)) : NULL;
    const char *type = json_string_value(t);
    for (int i = 0; HF_ARCH_NAMES[i]; i++)
        if ((name && !strcmp(name, HF_ARCH_NAMES[i])) || (!name && type && !strcmp(type, MODEL_TYPES[i]))) {
            r->h->arch = i;
            return 0;
        }
    return error_set(err, len, "%s: %s = %s: not one of MixtralForCausalLM, OlmoeForCausalLM, Qwen3MoeForCausalLM",
                     r->path, name ? "architectures" : "model_type", name ? name : type ? type : "(none)");
}

// RoPE: rope_theta at the top (older transformers) or in rope_parameters (newer); only the default type.
static int rope_read(Reader *r, char *err, size_t len) {
    json_t *p = json_object_get(r->root, "rope_parameters");
    if (refuse_set(r, "rope_scaling", "rope scaling", err, len)) return 2;
    if (json_is_object(p)) {
        const char *type = json_string_value(json_object_get(p, "rope_type"));
        if (type && strcmp(type, "default"))
            return error_set(err, len, "%s: rope_parameters.rope_type = %s: only \"default\" RoPE is supported",
                             r->path, type);
        json_t *th = json_object_get(p, "rope_theta");
        if (json_is_number(th)) {
            key_add(r->h, "rope_theta", "rope_parameters.rope_theta", "%.9g", json_number_value(th));
            return 0;
        }
    }
    return real_key(r, "rope_theta", "rope_theta", 10000.0, err, len);
}

// Qwen3's mlp_only_layers: dense layers, which pcmoe has only as the first private_layers.
static int dense_layers_read(Reader *r, char *err, size_t len) {
    json_t *v = json_object_get(r->root, "mlp_only_layers");
    size_t n = json_is_array(v) ? json_array_size(v) : 0;
    for (size_t i = 0; i < n; i++)
        if (json_integer_value(json_array_get(v, i)) != (json_int_t)i)
            return error_set(err, len, "%s: mlp_only_layers: dense layers other than the first ones (0, 1, ...) "
                             "are not supported", r->path);
    key_add(r->h, "private_layers", "mlp_only_layers", "%.0f", (double)n);
    return 0;
}

static int common_read(Reader *r, char *err, size_t len) {
    const char *act = json_string_value(json_object_get(r->root, "hidden_act"));
    if (act && strcmp(act, "silu"))
        return error_set(err, len, "%s: hidden_act = %s: only silu (SwiGLU) is supported", r->path, act);
    int rc = int_key(r, "vocab_size", "vocab_size", -1, err, len) ||
             int_key(r, "d_model", "hidden_size", -1, err, len) ||
             int_key(r, "n_layers", "num_hidden_layers", -1, err, len) ||
             int_key(r, "n_heads", "num_attention_heads", -1, err, len) ||
             int_key(r, "n_kv_heads", "num_key_value_heads", 0, err, len) ||
             int_key(r, "head_dim", "head_dim", 0, err, len) ||
             int_key(r, "top_k", "num_experts_per_tok", -1, err, len) ||
             real_key(r, "norm_eps", "rms_norm_eps", 1e-6, err, len) ||
             real_key(r, "aux_loss_coef", "router_aux_loss_coef", 0.0, err, len) ||
             bool_key(r, "tie_embeddings", "tie_word_embeddings", 0, err, len) || rope_read(r, err, len) ||
             refuse_set(r, "attention_bias", "a bias in attention", err, len) ||
             refuse_set(r, "attention_dropout", "dropout", err, len) ||
             refuse_set(r, "shared_expert_intermediate_size", "a shared expert", err, len);
    if (rc) return 2;
    fixed_key(r->h, "z_loss_coef", "0", "(transformers adds no z-loss)");
    json_t *eos = json_object_get(r->root, "eos_token_id");
    if (json_is_array(eos)) eos = json_array_get(eos, 0);
    double eos_id = json_is_integer(eos) ? (double)json_integer_value(eos) : -1.0;
    key_add(r->h, "eos_token_id", "eos_token_id", "%.0f", eos_id);
    json_t *mp = json_object_get(r->root, "max_position_embeddings");
    r->h->max_positions = json_is_integer(mp) ? (int)json_integer_value(mp) : 1 << 30;
    json_t *dt = json_object_get(r->root, "torch_dtype");
    if (!dt) dt = json_object_get(r->root, "dtype");
    snprintf(r->h->dtype, sizeof r->h->dtype, "%s", json_is_string(dt) ? json_string_value(dt) : "");
    return 0;
}

// The keys of each architecture's MoE layers and attention.
static int arch_keys(Reader *r, char *err, size_t len) {
    switch (r->h->arch) {
    case HF_MIXTRAL:
        fixed_key(r->h, "moe_every", "1", "(every layer is MoE)");
        fixed_key(r->h, "private_layers", "0", "(every layer is MoE)");
        fixed_key(r->h, "router_renorm", "true", "(Mixtral renormalises)");
        fixed_key(r->h, "qk_norm", "none", "(Mixtral)");
        return refuse_set(r, "sliding_window", "sliding-window attention", err, len) ||
               refuse_set(r, "router_jitter_noise", "router jitter noise", err, len) ||
               int_key(r, "n_experts", "num_local_experts", -1, err, len) ||
               int_key(r, "expert_ff", "intermediate_size", -1, err, len) ||
               int_key(r, "d_ff", "intermediate_size", -1, err, len) ? 2 : 0;
    case HF_OLMOE:
        fixed_key(r->h, "moe_every", "1", "(every layer is MoE)");
        fixed_key(r->h, "private_layers", "0", "(every layer is MoE)");
        fixed_key(r->h, "qk_norm", "full", "(OLMoE)");
        return int_key(r, "n_experts", "num_experts", -1, err, len) ||
               int_key(r, "expert_ff", "intermediate_size", -1, err, len) ||
               int_key(r, "d_ff", "intermediate_size", -1, err, len) ||
               bool_key(r, "router_renorm", "norm_topk_prob", 0, err, len) ||
               refuse_set(r, "clip_qkv", "clipping q, k and v", err, len) ? 2 : 0;
    default:
        fixed_key(r->h, "qk_norm", "head", "(Qwen3)");
        return refuse_set(r, "use_sliding_window", "sliding-window attention", err, len) ||
               int_key(r, "n_experts", "num_experts", -1, err, len) ||
               int_key(r, "expert_ff", "moe_intermediate_size", -1, err, len) ||
               int_key(r, "d_ff", "intermediate_size", -1, err, len) ||
               int_key(r, "moe_every", "decoder_sparse_step", 1, err, len) ||
               bool_key(r, "router_renorm", "norm_topk_prob", 0, err, len) || dense_layers_read(r, err, len) ? 2 : 0;
    }
}

int hf_config_read(HfConfig *h, const char *dir, char *err, size_t len) {
    memset(h, 0, sizeof *h);
    char path[1280];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t je;
    Reader r = {path, json_load_file(path, JSON_REJECT_DUPLICATES, &je), h};
    if (!r.root) {
        struct stat st;
        if (stat(path, &st) != 0) return error_set(err, len, "%s: cannot read (model.hf names a directory with "
                                                   "the checkpoint's config.json)", path);
        return error_set(err, len, "%s: not JSON: %s (line %d)", path, je.text, je.line);
    }
    int rc = json_is_object(r.root) ? 0 : error_set(err, len, "%s: not a JSON object", path);
    if (!rc) rc = arch_read(&r, err, len);
    if (!rc) rc = common_read(&r, err, len);
    if (!rc) rc = arch_keys(&r, err, len);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    struct stat st;
    if (!rc && stat(path, &st) == 0) fixed_key(h, "tokenizer", path, "(tokenizer.json)");
    json_decref(r.root);
    return rc;
}

