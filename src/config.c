// config.c: INI parsing and validation. One table below lists every key; parsing, range checks,
// defaults, writing the resolved config and the key reference are all driven by it.
#include "config.h"

#include <ctype.h>  // isspace, isdigit
#include <errno.h>  // errno
#include <math.h>   // isfinite
#include <stdlib.h> // strtol, strtod
#include <string.h> // strcmp, strchr

#include "hf.h"     // hf_config_read: model.hf
#include "util.h"   // error_set

typedef enum { KEY_INT, KEY_INT64, KEY_FLOAT, KEY_STRING, KEY_BOOL, KEY_ENUM } KeyType;

const char *const MODE_NAMES[] = {"pcmoe", "centralized", "local", "fedavg", NULL};
const char *const SCHEDULE_NAMES[] = {"concurrent", "sequential", NULL};
const char *const DEVICE_NAMES[] = {"cpu", "cuda", NULL};
const char *const CUDA_AWARE_NAMES[] = {"auto", "on", "off", NULL};
const char *const RECOMPUTE_NAMES[] = {"auto", "true", "false", NULL};
const char *const QK_NORM_NAMES[] = {"none", "full", "head", NULL};

typedef struct {
    const char *section;
    const char *key;
    KeyType type;
    size_t offset; // into Config
    double min, max;
    const char *def; // default value as text
    const char *doc;
    const char *const *names; // KEY_ENUM: the allowed values, NULL-terminated; stored as their index
} ConfigKey;

#define F(field) offsetof(Config, field)
static const ConfigKey KEYS[] = {
    {"parties", "count", KEY_INT, F(n_parties), 1, CONFIG_MAX_PARTIES, "1",
     "number of parties; pcmoe runs parties.ranks_per_party MPI ranks per party, local and fedavg one, centralized "
     "one rank in all", NULL},
    {"parties", "ranks_per_party", KEY_INT, F(ranks_per_party), 1, 1024, "1",
     "pcmoe: MPI ranks (GPUs) per party, run as mpirun -np count x ranks_per_party; party p is ranks [p R, (p + 1) "
     "R): its experts are split across them and its backbone is data-parallel, each rank with batch_size windows",
     NULL},
    {"parties", "peer_timeout", KEY_FLOAT, F(peer_timeout), 0, 1e6, "600",
     "seconds a rank waits for its peers in one call before the silent ones (stopped, cut off, gone) stop the "
     "job, named; 0 = wait forever. Longer than the slowest step and checkpoint write", NULL},
    {"parties", "keys", KEY_STRING, F(keys), 0, 0, "",
     "this party's keys file (pcmoe keygen): its X25519 secret key and every party's public key; {party} in the "
     "path is the party's index. Set: everything crossing a party line is encrypted and authenticated "
     "(XChaCha20-Poly1305); unset: it travels in the clear", NULL},
    {"parties", "mode", KEY_ENUM, F(mode), 0, 0, "pcmoe",
     "pcmoe (shared expert pool), centralized (one model on all parties' data), local (each party alone), fedavg "
     "(full models, weights averaged)", MODE_NAMES},
    {"parties", "schedule", KEY_ENUM, F(schedule), 0, 0, "concurrent",
     "pcmoe: concurrent (every party trains each step) or sequential (parties take turns, the paper's schedule)",
     SCHEDULE_NAMES},
    {"fedavg", "every", KEY_INT, F(fedavg_every), 1, 1e9, "10",
     "fedavg: average all weights across parties every this many steps", NULL},
    {"privacy", "share_metrics", KEY_BOOL, F(share_metrics), 0, 1, "true",
     "send scalar metrics to rank 0 for one metrics.jsonl (false: each party writes metrics.party_N.jsonl itself)",
     NULL},
    {"privacy", "shuffle_rows", KEY_BOOL, F(shuffle_rows), 0, 1, "true",
     "shuffle the rows bound for each expert with a private RNG before sending, so row order says nothing of token "
     "positions", NULL},
    {"privacy", "shuffle_seed", KEY_INT64, F(shuffle_seed), 0, 9.2e18, "0",
     "seed of the private row shuffle: 0 = from /dev/urandom (private; runs then differ in the last bits), else "
     "shuffle_seed + party (reproducible runs and tests)", NULL},
    {"privacy", "check_finite", KEY_BOOL, F(check_finite), 0, 1, "true",
     "check that every row and gradient received from a peer is finite; a peer that sends NaN or Inf stops the "
     "job, named", NULL},
    {"privacy", "noise_std", KEY_FLOAT, F(noise_std), 0, 100, "0",
     "std of Gaussian noise added to every row sent to another party (a defence against reconstruction; costs "
     "accuracy)", NULL},
    {"privacy", "clip_norm", KEY_FLOAT, F(clip_norm), 0, 1e6, "0",
     "the DP defence: every expert-input row sent to another party is scaled to at most this L2 norm, then gets "
     "noise (noise_multiplier); 0 = off; needs grad_clip_norm", NULL},
    {"privacy", "grad_clip_norm", KEY_FLOAT, F(grad_clip_norm), 0, 1e6, "0",
     "the DP defence: every output-gradient row sent back to an owner is scaled to at most this L2 norm, then gets "
     "noise; set with clip_norm", NULL},
    {"privacy", "noise_multiplier", KEY_FLOAT, F(noise_multiplier), 0, 1e4, "0",
     "the DP defence: Gaussian noise of std noise_multiplier x the clip norm on every coordinate of every clipped "
     "row sent; epsilon in summary.json", NULL},
    {"privacy", "target_epsilon", KEY_FLOAT, F(target_epsilon), 0, 1e6, "0",
     "> 0: choose each party's noise_multiplier so that its planned run reaches this epsilon (instead of setting "
     "noise_multiplier)", NULL},
    {"privacy", "delta", KEY_FLOAT, F(dp_delta), 1e-12, 0.5, "1e-05",
     "the delta of the (epsilon, delta) guarantee the accountant reports", NULL},
    {"privacy", "same_backbone_init", KEY_BOOL, F(same_backbone_init), 0, 1, "false",
     "start every party's backbone from the same weights, as when all fine-tune one public model (a control of the "
     "attack study)", NULL},
    {"privacy", "record_received", KEY_STRING, F(record_dir), 0, 0, "",
     "STUDY ONLY, off by default: every owner records the rows it receives (and every sender the true bytes) into "
     "this directory, for pcmoe attack", NULL},
    {"checkpoint", "every", KEY_INT, F(ckpt_every), 0, 1e9, "1000",
     "write RUN/checkpoints/step_N/party_R.h5 every this many steps and after the last step (0 = never)", NULL},
    {"checkpoint", "keep", KEY_INT, F(ckpt_keep), 1, 1e6, "3",
     "complete checkpoints kept on disk; older ones are deleted", NULL},
    {"model", "hf", KEY_STRING, F(hf), 0, 0, "",
     "a Hugging Face checkpoint directory (MixtralForCausalLM, OlmoeForCausalLM or Qwen3MoeForCausalLM): its "
     "config.json sets every other [model] key but seq_len, the recompute keys and logits_chunk_mb (a key also given "
     "here must agree, "
     "except aux_loss_coef and z_loss_coef, which a fine-tune may choose); what pcmoe cannot compute is refused "
     "(docs/huggingface.md). Its weights are read with train.init_from = DIR or --checkpoint DIR", NULL},
    {"model", "tokenizer", KEY_STRING, F(tokenizer), 0, 0, "",
     "a Hugging Face tokenizer.json: every corpus is read as its ids (each file a document, joined by "
     "eos_token_id), and generate's prompt and text go through it; \"\" = bytes. model.hf sets it to "
     "DIR/tokenizer.json when that exists", NULL},
    {"model", "eos_token_id", KEY_INT, F(eos_token_id), -1, 262143, "-1",
     "the token between a corpus's documents with model.tokenizer (-1: none); model.hf sets config.json's "
     "eos_token_id", NULL},
    {"model", "vocab_size", KEY_INT, F(vocab_size), 256, 262144, "256",
     "vocabulary size: token ids 0 .. vocab_size - 1; a byte-level model's tokens are bytes, so 256", NULL},
    {"model", "d_model", KEY_INT, F(d_model), 4, 65536, "128",
     "residual stream width d", NULL},
    {"model", "n_layers", KEY_INT, F(n_layers), 1, 1024, "4",
     "transformer blocks", NULL},
    {"model", "n_heads", KEY_INT, F(n_heads), 1, 1024, "4",
     "attention (query) heads", NULL},
    {"model", "n_kv_heads", KEY_INT, F(n_kv_heads), 0, 1024, "0",
     "key/value heads (grouped-query attention); must divide n_heads; 0 = n_heads (multi-head attention)", NULL},
    {"model", "head_dim", KEY_INT, F(head_dim), 0, 4096, "0",
     "width of each attention head, even (RoPE); 0 = d_model/n_heads (which must then divide evenly)", NULL},
    {"model", "qk_norm", KEY_ENUM, F(qk_norm), 0, 0, "none",
     "RMSNorm of the queries and keys before RoPE: none; full = over the whole q and k projections (OLMoE); head = "
     "per head, one weight vector of head_dim shared by the heads (Qwen3)", QK_NORM_NAMES},
    {"model", "tie_embeddings", KEY_BOOL, F(tie_embeddings), 0, 1, "false",
     "the LM head is the embedding matrix (one tensor, embed)", NULL},
    {"model", "router_renorm", KEY_BOOL, F(router_renorm), 0, 1, "true",
     "renormalise the chosen experts' router probabilities to sum to 1 (Hugging Face's norm_topk_prob; Mixtral "
     "true, OLMoE false); false: each expert's output is weighted by its softmax probability over all experts", NULL},
    {"model", "seq_len", KEY_INT, F(seq_len), 2, 65536, "128",
     "context length in bytes", NULL},
    {"model", "d_ff", KEY_INT, F(d_ff), 1, 1 << 20, "512",
     "hidden width of the dense SwiGLU FFN in non-MoE layers", NULL},
    {"model", "n_experts", KEY_INT, F(n_experts), 1, 4096, "8",
     "experts per MoE layer (the shared pool)", NULL},
    {"model", "top_k", KEY_INT, F(top_k), 1, 4096, "2",
     "experts chosen per token; <= n_experts", NULL},
    {"model", "expert_ff", KEY_INT, F(expert_ff), 1, 1 << 20, "256",
     "hidden width of each SwiGLU expert", NULL},
    {"model", "private_layers", KEY_INT, F(private_layers), 0, 1024, "0",
     "the first private_layers layers have dense FFNs (d_ff) of the party's own instead of MoE: their hidden rows "
     "never leave the party (a defence: the early layers' rows are the easiest to invert)", NULL},
    {"model", "moe_every", KEY_INT, F(moe_every), 1, 1024, "1",
     "layer l (0-based) is MoE when (l+1) % moe_every == 0; <= n_layers", NULL},
    {"model", "aux_loss_coef", KEY_FLOAT, F(aux_loss_coef), 0, 1000, "0.01",
     "Switch load-balancing loss coefficient", NULL},
    {"model", "z_loss_coef", KEY_FLOAT, F(z_loss_coef), 0, 1000, "0.001",
     "router z-loss coefficient", NULL},
    {"model", "rope_theta", KEY_FLOAT, F(rope_theta), 1, 1e12, "10000",
     "RoPE frequency base", NULL},
    {"model", "norm_eps", KEY_FLOAT, F(norm_eps), 1e-12, 1, "1e-05",
     "RMSNorm epsilon", NULL},
    {"model", "recompute_experts", KEY_ENUM, F(recompute_experts), 0, 0, "auto",
     "keep only the rows' inputs for each expert's backward and recompute its hidden activations there (less "
     "memory, 1/3 more expert FLOPs in the backward; bit for bit the same results): true, false, or auto = true "
     "for experts served to other parties (pcmoe over MPI), false for local experts; may differ from a "
     "checkpoint's", RECOMPUTE_NAMES},
    {"model", "recompute_attention", KEY_ENUM, F(recompute_attention), 0, 0, "auto",
     "keep only each layer's input until the backward and recompute its attention sub-block and FFN norm there "
     "(less activation memory, one attention sub-block forward more per layer; bit for bit the same results): "
     "true, false, or auto = true for a pcmoe party over MPI, false otherwise; may differ from a checkpoint's",
     RECOMPUTE_NAMES},
    {"model", "logits_chunk_mb", KEY_INT, F(logits_chunk_mb), 0, 1 << 20, "256",
     "the LM head and cross-entropy take rows in chunks of at most this many MiB of fp32 logits, so the (B*T, "
     "vocab_size) logits are never whole in memory (a training step runs each chunk's backward right after its "
     "forward); 0 = all rows at once. A batch whose logits fit in one chunk computes as before, bit for bit; may "
     "differ from a checkpoint's", NULL},
    {"model", "init_std", KEY_FLOAT, F(init_std), 1e-6, 10, "0.02",
     "std of the normal init of matrices (output projections scaled by 1/sqrt(2*n_layers))", NULL},
    {"train", "steps", KEY_INT, F(steps), 1, 1e9, "1000",
     "optimizer steps", NULL},
    {"train", "batch_size", KEY_INT, F(batch_size), 1, 1 << 20, "16",
     "sequences per step", NULL},
    {"train", "lr", KEY_FLOAT, F(lr), 0, 10, "0.002",
     "peak learning rate", NULL},
    {"train", "min_lr", KEY_FLOAT, F(min_lr), 0, 10, "0.0002",
     "learning rate at the end of the cosine decay; <= lr", NULL},
    {"train", "warmup_steps", KEY_INT, F(warmup_steps), 0, 1e9, "50",
     "linear warmup steps; <= steps", NULL},
    {"train", "weight_decay", KEY_FLOAT, F(weight_decay), 0, 10, "0.1",
     "AdamW decoupled weight decay (matrices only, never norms)", NULL},
    {"train", "beta1", KEY_FLOAT, F(beta1), 0, 0.999999, "0.9",
     "AdamW first-moment decay", NULL},
    {"train", "beta2", KEY_FLOAT, F(beta2), 0, 0.999999, "0.95",
     "AdamW second-moment decay", NULL},
    {"train", "adam_eps", KEY_FLOAT, F(adam_eps), 1e-30, 1, "1e-08",
     "AdamW epsilon", NULL},
    {"train", "grad_clip", KEY_FLOAT, F(grad_clip), 0, 1e9, "1",
     "clip the global gradient norm to this (0 = off)", NULL},
    {"train", "seed", KEY_INT64, F(seed), 0, 9.2e18, "1337",
     "seed of initialisation and batch sampling", NULL},
    {"train", "init_from", KEY_STRING, F(init_from), 0, 0, "",
     "start from the weights of a complete checkpoint directory (RUN/checkpoints/step_N) of a run with the same "
     "model keys: a single-party or centralized run, or a pcmoe run with the same parties; each party reads its "
     "backbone and only the experts it owns; AdamW state and the step count start fresh (\"\" = random init)", NULL},
    {"train", "eval_every", KEY_INT, F(eval_every), 0, 1e9, "100",
     "validate every this many steps (0 = at the end only)", NULL},
    {"train", "eval_batches", KEY_INT, F(eval_batches), 1, 1e6, "8",
     "batches of batch_size windows per validation", NULL},
    {"train", "log_every", KEY_INT, F(log_every), 1, 1e9, "10",
     "write a metrics.jsonl line every this many steps", NULL},
    {"data", "val_fraction", KEY_FLOAT, F(val_fraction), 1e-6, 0.5, "0.1",
     "last fraction of each corpus held out for validation", NULL},
    {"data", "<N>", KEY_STRING, F(data_path), 0, 0, "",
     "corpus of party N: a text file or a directory of files (read as bytes); data.0 is required", NULL},
    {"run", "dir", KEY_STRING, F(run_dir), 0, 0, "runs/default",
     "output directory (config.ini, metrics.jsonl, summary.json)", NULL},
    {"run", "threads", KEY_INT, F(threads), 0, 4096, "0",
     "OpenMP threads (0 = OpenMP's default: OMP_NUM_THREADS or all cores)", NULL},
    {"run", "blas_threads", KEY_INT, F(blas_threads), 0, 4096, "0",
     "BLAS threads (0 = auto: 1 with a pthreads OpenBLAS, whose pool fights OpenMP's; else run.threads)", NULL},
    {"run", "device", KEY_ENUM, F(device), 0, 0, "cpu",
     "where the model lives and runs: cpu, or cuda (parameters, gradients, AdamW state and activations in GPU "
     "memory; every mode)", DEVICE_NAMES},
    {"run", "gpu", KEY_INT, F(gpu), -1, 1023, "-1",
     "run.device = cuda: the GPU of this rank (-1 = its node-local rank modulo the number of GPUs)", NULL},
    {"run", "cuda_aware_mpi", KEY_ENUM, F(cuda_aware_mpi), 0, 0, "auto",
     "run.device = cuda, pcmoe: hand MPI device buffers (on), or stage rows through page-locked host buffers "
     "(off); auto = on when Open MPI reports CUDA support (MPIX_Query_cuda_support); on is refused where it reports "
     "none", CUDA_AWARE_NAMES},
    {"run", "tf32", KEY_BOOL, F(tf32), 0, 1, "true",
     "run.device = cuda: let cuBLAS run fp32 GEMMs on TF32 tensor cores (faster on sm_80+, ~1e-3 relative error "
     "per product); the router's GEMMs stay fp32, so routing matches the CPU's; false = exact fp32 everywhere", NULL},
};
#undef F
#define N_KEYS ((int)(sizeof KEYS / sizeof KEYS[0]))
#define SECTIONS "parties, fedavg, privacy, checkpoint, model, train, data, run"

// Where each key's value came from, for error messages: "file.ini:12" or "--set".
typedef struct {
    char where[N_KEYS][CONFIG_PATH_LEN + 16];
    char data_where[CONFIG_MAX_PARTIES][CONFIG_PATH_LEN + 16];
} Origins;

static int find_key(const char *section, const char *key) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(KEYS[i].section, section) && !strcmp(KEYS[i].key, key)) return i;
    return -1;
}

static int section_known(const char *section) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(KEYS[i].section, section)) return 1;
    return 0;
}

// Parses a party index "N" (decimal digits only). Returns -1 when it is not one.
static int party_index(const char *key) {
    if (!*key || strlen(key) > 6) return -1;
    for (const char *p = key; *p; p++)
        if (!isdigit((unsigned char)*p)) return -1;
    return atoi(key);
}

// Stores `value` into key `ki`. Returns 0, or 2 with a message naming where/section.key = value.
static int set_value(Config *c, int ki, const char *value, const char *where, char *err, size_t len) {
    const ConfigKey *k = &KEYS[ki];
    char *p = (char *)c + k->offset;
    char *end = NULL;
    errno = 0;
    switch (k->type) {
    case KEY_INT:
    case KEY_INT64: {
        long long v = strtoll(value, &end, 10);
        if (end == value || *end != '\0' || errno == ERANGE)
            return error_set(err, len, "%s: %s.%s = '%s': not an integer", where, k->section, k->key, value);
        if ((double)v < k->min || (double)v > k->max)
            return error_set(err, len, "%s: %s.%s = %s: out of range [%.10g, %.10g]", where, k->section, k->key, value,
                             k->min, k->max);
        if (k->type == KEY_INT) *(int *)p = (int)v;
        else *(int64_t *)p = (int64_t)v;
        break;
    }
    case KEY_FLOAT: {
        double v = strtod(value, &end);
        if (end == value || *end != '\0' || errno == ERANGE || !isfinite(v))
            return error_set(err, len, "%s: %s.%s = '%s': not a finite number", where, k->section, k->key, value);
        if (v < k->min || v > k->max)
            return error_set(err, len, "%s: %s.%s = %s: out of range [%.10g, %.10g]", where, k->section, k->key, value,
                             k->min, k->max);
        *(float *)p = (float)v;
        break;
    }
    case KEY_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "on") || !strcmp(value, "1"))
            *(int *)p = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "off") || !strcmp(value, "0"))
            *(int *)p = 0;
        else
            return error_set(err, len, "%s: %s.%s = '%s': not a boolean (true or false)", where, k->section, k->key,
                             value);
        break;
    case KEY_ENUM: {
        char allowed[256] = "";
        for (int i = 0; k->names[i]; i++) {
            if (!strcmp(value, k->names[i])) { *(int *)p = i; return 0; }
            snprintf(allowed + strlen(allowed), sizeof allowed - strlen(allowed), "%s%s", i ? ", " : "", k->names[i]);
        }
        return error_set(err, len, "%s: %s.%s = '%s': not one of %s", where, k->section, k->key, value, allowed);
    }
    case KEY_STRING:
        if (!*value) return error_set(err, len, "%s: %s.%s: empty value", where, k->section, k->key);
        if (strlen(value) >= CONFIG_PATH_LEN)
            return error_set(err, len, "%s: %s.%s: value longer than %d characters", where, k->section, k->key,
                             CONFIG_PATH_LEN - 1);
        strcpy(p, value);
        break;
    }
    return 0;
}

// Applies one "section.key = value" assignment from `where`.
static int assign(Config *c, Origins *o, const char *section, const char *key, const char *value,
                  const char *where, int *seen, char *err, size_t len) {
    if (!section_known(section))
        return error_set(err, len, "%s: unknown section [%s] (known: %s)", where, section, SECTIONS);
    if (!strcmp(section, "data")) {
        int n = party_index(key);
        if (n >= 0) {
            if (n >= CONFIG_MAX_PARTIES)
                return error_set(err, len, "%s: data.%s: party index must be < %d", where, key, CONFIG_MAX_PARTIES);
            if (!*value) return error_set(err, len, "%s: data.%s: empty path", where, key);
            if (strlen(value) >= CONFIG_PATH_LEN)
                return error_set(err, len, "%s: data.%s: path longer than %d characters", where, key,
                                 CONFIG_PATH_LEN - 1);
            strcpy(c->data_path[n], value);
            snprintf(o->data_where[n], sizeof o->data_where[n], "%s", where);
            return 0;
        }
    }
    int ki = find_key(section, key);
    if (ki < 0 || KEYS[ki].key[0] == '<') return error_set(err, len, "%s: unknown key %s.%s", where, section, key);
    if (seen) {
        if (seen[ki]) return error_set(err, len, "%s: duplicate key %s.%s", where, section, key);
        seen[ki] = 1;
    }
    snprintf(o->where[ki], sizeof o->where[ki], "%s", where);
    return set_value(c, ki, value, where, err, len);
}

// Parses INI text from f, named `path` in messages.
static int load_stream(Config *c, Origins *o, FILE *f, const char *path, char *err, size_t len) {
    int seen[N_KEYS] = {0};
    char line[4096], section[64] = "";
    int lineno = 0, rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        char where[CONFIG_PATH_LEN + 16];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        for (char *q = line; *q; q++)
            if (!isprint((unsigned char)*q) && !isspace((unsigned char)*q)) {
                rc = error_set(err, len, "%s: non-text byte 0x%02x (is this a config file?)", where, (unsigned char)*q);
                break;
            }
        if (rc) break;
        if (!strchr(line, '\n') && !feof(f)) {
            rc = error_set(err, len, "%s: line longer than %zu characters", where, sizeof line - 2);
            break;
        }
        char *s = str_trim(line);
        if (!*s || *s == '#' || *s == ';') continue;
        if (*s == '[') {
            char *e = strchr(s, ']');
            if (!e || str_trim(e + 1)[0] != '\0') {
                rc = error_set(err, len, "%s: malformed section header '%s'", where, s);
                break;
            }
            *e = '\0';
            char *name = str_trim(s + 1);
            if (strlen(name) >= sizeof section || !section_known(name)) {
                rc = error_set(err, len, "%s: unknown section [%s] (known: %s)", where, name, SECTIONS);
                break;
            }
            strcpy(section, name);
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) { rc = error_set(err, len, "%s: expected 'key = value', got '%s'", where, s); break; }
        *eq = '\0';
        char *key = str_trim(s), *value = str_trim(eq + 1);
        char *hash = strstr(value, " #"); // inline comment
        if (hash) { *hash = '\0'; value = str_trim(value); }
        if (!*section) { rc = error_set(err, len, "%s: key '%s' before any [section]", where, key); break; }
        rc = assign(c, o, section, key, value, where, seen, err, len);
    }
    return rc;
}

static int load_file(Config *c, Origins *o, const char *path, char *err, size_t len) {
    FILE *f = fopen(path, "r");
    if (!f) return error_set(err, len, "%s: cannot read config: %s", path, strerror(errno));
    int rc = load_stream(c, o, f, path, err, len);
    fclose(f);
    return rc;
}

static const char *where_of(const Origins *o, const char *section, const char *key) {
    int ki = find_key(section, key);
    return (ki >= 0 && o->where[ki][0]) ? o->where[ki] : "default";
}

// Checks that involve several keys.
static int validate(const Config *c, const Origins *o, int need_data, char *err, size_t len) {
    if (!c->head_dim && c->d_model % c->n_heads != 0)
        return error_set(err, len, "%s: model.n_heads = %d: must divide model.d_model = %d (or give model.head_dim)",
                         where_of(o, "model", "n_heads"), c->n_heads, c->d_model);
    if (!c->head_dim && (c->d_model / c->n_heads) % 2 != 0)
        return error_set(err, len, "%s: model.n_heads = %d: head size d_model/n_heads = %d must be even (RoPE)",
                         where_of(o, "model", "n_heads"), c->n_heads, c->d_model / c->n_heads);
    if (c->head_dim % 2 != 0)
        return error_set(err, len, "%s: model.head_dim = %d: must be even (RoPE)", where_of(o, "model", "head_dim"),
                         c->head_dim);
    if (c->n_kv_heads && c->n_heads % c->n_kv_heads != 0)
        return error_set(err, len, "%s: model.n_kv_heads = %d: must divide model.n_heads = %d",
                         where_of(o, "model", "n_kv_heads"), c->n_kv_heads, c->n_heads);
    if (c->top_k > c->n_experts)
        return error_set(err, len, "%s: model.top_k = %d: must be <= model.n_experts = %d",
                         where_of(o, "model", "top_k"), c->top_k, c->n_experts);
    if (c->moe_every > c->n_layers)
        return error_set(err, len, "%s: model.moe_every = %d: must be <= model.n_layers = %d (else no layer is MoE)",
                         where_of(o, "model", "moe_every"), c->moe_every, c->n_layers);
    int moe_layers = 0;
    for (int l = c->private_layers; l < c->n_layers; l++) moe_layers += (l + 1) % c->moe_every == 0;
    if (c->moe_every <= c->n_layers && moe_layers == 0)
        return error_set(err, len, "%s: model.private_layers = %d: leaves no MoE layer (n_layers = %d, moe_every = %d)",
                         where_of(o, "model", "private_layers"), c->private_layers, c->n_layers, c->moe_every);
    if (c->min_lr > c->lr)
        return error_set(err, len, "%s: train.min_lr = %g: must be <= train.lr = %g", where_of(o, "train", "min_lr"),
                         c->min_lr, c->lr);
    if (c->warmup_steps > c->steps)
        return error_set(err, len, "%s: train.warmup_steps = %d: must be <= train.steps = %d",
                         where_of(o, "train", "warmup_steps"), c->warmup_steps, c->steps);
    if (c->mode == MODE_PCMOE && c->n_parties > c->n_experts)
        return error_set(err, len,
                         "%s: parties.count = %d: must be <= model.n_experts = %d in pcmoe mode (each party owns at "
                         "least one expert)",
                         where_of(o, "parties", "count"), c->n_parties, c->n_experts);
    if (c->ranks_per_party > 1 && c->mode != MODE_PCMOE)
        return error_set(err, len, "%s: parties.ranks_per_party = %d: several ranks per party need parties.mode = "
                         "pcmoe (parties.mode = %s runs one rank per party)",
                         where_of(o, "parties", "ranks_per_party"), c->ranks_per_party, MODE_NAMES[c->mode]);
    if (c->mode == MODE_PCMOE && c->n_experts / c->n_parties < c->ranks_per_party)
        return error_set(err, len, "%s: parties.ranks_per_party = %d: party %d holds only %d of the model.n_experts "
                         "= %d experts among parties.count = %d parties, and each of its ranks needs one",
                         where_of(o, "parties", "ranks_per_party"), c->ranks_per_party, c->n_parties - 1,
                         c->n_experts / c->n_parties, c->n_experts, c->n_parties);
    if (c->ranks_per_party > 1 && c->record_dir[0])
        return error_set(err, len, "%s: privacy.record_received = %s: the study's recorder runs with one rank per "
                         "party (parties.ranks_per_party = %d)", where_of(o, "privacy", "record_received"),
                         c->record_dir, c->ranks_per_party);
    if ((c->clip_norm > 0) != (c->grad_clip_norm > 0))
        return error_set(err, len,
                         "%s: privacy.%s = 0: privacy.clip_norm and privacy.grad_clip_norm go together (rows and their "
                         "gradients both cross); set both",
                         where_of(o, "privacy", c->clip_norm > 0 ? "grad_clip_norm" : "clip_norm"),
                         c->clip_norm > 0 ? "grad_clip_norm" : "clip_norm");
    if ((c->noise_multiplier > 0 || c->target_epsilon > 0) && c->clip_norm <= 0)
        return error_set(err, len,
                         "%s: privacy.%s needs privacy.clip_norm and privacy.grad_clip_norm (the noise is relative to "
                         "the clip norms)",
                         where_of(o, "privacy", c->noise_multiplier > 0 ? "noise_multiplier" : "target_epsilon"),
                         c->noise_multiplier > 0 ? "noise_multiplier" : "target_epsilon");
    if (c->noise_multiplier > 0 && c->target_epsilon > 0)
        return error_set(err, len,
                         "%s: privacy.target_epsilon = %g: give it or privacy.noise_multiplier = %g, not both",
                         where_of(o, "privacy", "target_epsilon"), c->target_epsilon, c->noise_multiplier);
    if (c->clip_norm > 0 && c->noise_std > 0)
        return error_set(err, len,
                         "%s: privacy.noise_std = %g: the clipped defence (privacy.clip_norm) sets its noise by "
                         "privacy.noise_multiplier; drop noise_std",
                         where_of(o, "privacy", "noise_std"), c->noise_std);
    if (c->clip_norm > 0 && c->mode != MODE_PCMOE)
        return error_set(
                err, len,
                "%s: privacy.clip_norm = %g: the defence acts on pcmoe's expert exchange; parties.mode = %s has none",
                where_of(o, "privacy", "clip_norm"), c->clip_norm, MODE_NAMES[c->mode]);
    for (int n = 0; n < c->n_parties && need_data; n++)
        if (!c->data_path[n][0])
            return error_set(err, len,
                             "data.%d: missing: parties.count = %d needs a corpus for each party ([data] %d = PATH)", n,
                             c->n_parties, n);
    for (int n = c->n_parties; n < CONFIG_MAX_PARTIES; n++)
        if (c->data_path[n][0])
            return error_set(err, len, "%s: data.%d = %s: no such party (parties.count = %d)", o->data_where[n], n,
                             c->data_path[n], c->n_parties);
    return 0;
}

static size_t key_bytes(const ConfigKey *k) {
    return k->type == KEY_INT64 ? sizeof(int64_t) : k->type == KEY_FLOAT ? sizeof(float) : sizeof(int);
}

// model.hf: the [model] keys DIR/config.json gives (hf.h). A key the config or --set also gives must agree,
// but for the router losses' coefficients, which a fine-tune may choose.
static int hf_apply(Config *c, Origins *o, char *err, size_t len) {
    HfConfig h;
    if (hf_config_read(&h, c->hf, err, len)) return 2;
    for (int i = 0; i < h.n_keys; i++) {
        const HfKey *hk = &h.keys[i];
        int ki = find_key("model", hk->key);
        if (ki < 0) fail("internal: config.json maps to an unknown key model.%s", hk->key);
        const ConfigKey *k = &KEYS[ki];
        char *field = (char *)c + k->offset, mine[8], where[sizeof o->where[0]];
        int given = o->where[ki][0] != '\0';
        static const char *const free_keys[] = {"aux_loss_coef", "z_loss_coef", "tokenizer", "eos_token_id"};
        int choose = 0; // (a fine-tune's choices)
        for (size_t f = 0; f < sizeof free_keys / sizeof free_keys[0]; f++) choose |= !strcmp(hk->key, free_keys[f]);
        if (given && choose) continue;
        memcpy(mine, field, key_bytes(k));
        snprintf(where, sizeof where, "%s/config.json: %s", c->hf, hk->from);
        if (set_value(c, ki, hk->value, where, err, len)) return 2;
        if (given && memcmp(mine, field, key_bytes(k)))
            return error_set(err, len, "%s: model.%s: %s/config.json gives %s (%s); model.hf sets it: drop the key",
                             o->where[ki], hk->key, c->hf, hk->value, hk->from);
        if (!given) snprintf(o->where[ki], sizeof o->where[ki], "%s", where);
    }
    if (c->seq_len > h.max_positions)
        return error_set(err, len, "%s: model.seq_len = %d: %s/config.json allows max_position_embeddings = %d",
                         where_of(o, "model", "seq_len"), c->seq_len, c->hf, h.max_positions);
    return 0;
}

// The keys whose 0 stands for a value derived from others get that value (after validate).
static void resolve(Config *c) {
    if (!c->n_kv_heads) c->n_kv_heads = c->n_heads;
    if (!c->head_dim) c->head_dim = c->d_model / c->n_heads;
}

// Resets c to the table's defaults.
static int set_defaults(Config *c, char *err, size_t len) {
    memset(c, 0, sizeof *c);
    int rc = 0;
    for (int i = 0; i < N_KEYS && !rc; i++)
        if (KEYS[i].def[0]) rc = set_value(c, i, KEYS[i].def, "default", err, len);
    return rc;
}

static int load_config(Config *c, const char *path, char *const *set, int n_set, int need_data, char *err,
                       size_t len) {
    Origins *o = calloc(1, sizeof *o);
    if (!o) return error_set(err, len, "out of memory");
    int rc = set_defaults(c, err, len);
    if (!rc && path) rc = load_file(c, o, path, err, len);
    for (int i = 0; i < n_set && !rc; i++) {
        char buf[CONFIG_PATH_LEN + 128];
        if (strlen(set[i]) >= sizeof buf) { rc = error_set(err, len, "--set %.40s...: too long", set[i]); break; }
        strcpy(buf, set[i]);
        char *eq = strchr(buf, '='), *dot = strchr(buf, '.');
        if (!eq || !dot || dot > eq) {
            rc = error_set(err, len, "--set %s: expected section.key=value", set[i]);
            break;
        }
        *eq = '\0';
        *dot = '\0';
        char where[16] = "--set";
        rc = assign(c, o, str_trim(buf), str_trim(dot + 1), str_trim(eq + 1), where, NULL, err, len);
    }
    if (!rc && c->hf[0]) rc = hf_apply(c, o, err, len);
    if (!rc) rc = validate(c, o, need_data, err, len);
    if (!rc) resolve(c);
    free(o);
    return rc;
}

int config_load(Config *c, const char *path, char *const *set, int n_set, char *err, size_t len) {
    return load_config(c, path, set, n_set, 1, err, len);
}

int config_load_shapes(Config *c, const char *path, char *const *set, int n_set, char *err, size_t len) {
    return load_config(c, path, set, n_set, 0, err, len);
}

int config_load_text(Config *c, const char *text, char *err, size_t len) {
    Origins *o = calloc(1, sizeof *o);
    if (!o) return error_set(err, len, "out of memory");
    int rc = set_defaults(c, err, len);
    FILE *f = rc ? NULL : fmemopen((void *)text, strlen(text), "r");
    if (!rc && !f) rc = error_set(err, len, "fmemopen failed");
    if (f) { rc = load_stream(c, o, f, "<stored config>", err, len); fclose(f); }
    if (!rc) rc = validate(c, o, 1, err, len);
    if (!rc) resolve(c);
    free(o);
    return rc;
}

// Key k's value in c as text (not for string keys), into out (64 bytes).
static void key_value(const ConfigKey *k, const Config *c, char *out) {
    const char *p = (const char *)c + k->offset;
    switch (k->type) {
    case KEY_FLOAT: snprintf(out, 64, "%.9g", *(const float *)p); break;
    case KEY_ENUM: snprintf(out, 64, "%s", k->names[*(const int *)p]); break;
    case KEY_INT64: snprintf(out, 64, "%lld", (long long)*(const int64_t *)p); break;
    default: snprintf(out, 64, "%d", *(const int *)p); break;
    }
}

// Compares the keys `which` selects (1: compared); the first difference goes to err as
// "model.d_model: A_NAME 64, B_NAME 32". Returns 0 if equal, else 1.
static int diff_keys(const Config *a, const Config *b, int (*which)(const ConfigKey *), const char *a_name,
                     const char *b_name, char *err, size_t len) {
    for (int i = 0; i < N_KEYS; i++) {
        const ConfigKey *k = &KEYS[i];
        if (!which(k)) continue;
        char va[64], vb[64];
        key_value(k, a, va);
        key_value(k, b, vb);
        if (strcmp(va, vb)) {
            error_set(err, len, "%s.%s: %s %s, %s %s", k->section, k->key, a_name, va, b_name, vb);
            return 1;
        }
    }
    return 0;
}

static int model_key(const ConfigKey *k) {
    return !strcmp(k->section, "model") && strcmp(k->key, "recompute_experts") &&
           strcmp(k->key, "recompute_attention") && strcmp(k->key, "logits_chunk_mb") && strcmp(k->key, "hf") &&
           strcmp(k->key, "tokenizer") && strcmp(k->key, "eos_token_id");
}
static int model_or_parties_key(const ConfigKey *k) {
    return model_key(k) || (!strcmp(k->section, "parties") && strcmp(k->key, "schedule") &&
                            strcmp(k->key, "ranks_per_party") && strcmp(k->key, "peer_timeout"));
}
// The keys every party of a run must share: all but the party's own (its paths, its machine, its private
// shuffle and recorder, its patience).
static int shared_key(const ConfigKey *k) {
    static const char *const own[] = {"privacy.shuffle_seed", "privacy.record_received", "model.hf", "model.tokenizer",
                                      "train.init_from", "parties.peer_timeout", "model.recompute_experts",
                                      "model.recompute_attention", "model.logits_chunk_mb"};
    char name[96];
    snprintf(name, sizeof name, "%s.%s", k->section, k->key);
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (!strcmp(name, own[i])) return 0;
    return strcmp(k->section, "run") && strcmp(k->section, "data") && k->type != KEY_STRING;
}

int config_diff_model(const Config *a, const Config *b, int with_parties, char *err, size_t len) {
    return diff_keys(a, b, with_parties ? model_or_parties_key : model_key, "checkpoint", "config", err, len);
}

int config_diff_shared(const Config *a, const Config *b, const char *a_name, const char *b_name, char *err,
                       size_t len) {
    return diff_keys(a, b, shared_key, a_name, b_name, err, len);
}

void config_write(Text *t, const Config *c) {
    const char *section = "";
    for (int i = 0; i < N_KEYS; i++) {
        const ConfigKey *k = &KEYS[i];
        if (strcmp(section, k->section)) {
            text_printf(t, "%s[%s]\n", i ? "\n" : "", k->section);
            section = k->section;
        }
        const char *p = (const char *)c + k->offset;
        switch (k->type) {
        case KEY_INT: text_printf(t, "%s = %d\n", k->key, *(const int *)p); break;
        case KEY_INT64: text_printf(t, "%s = %lld\n", k->key, (long long)*(const int64_t *)p); break;
        case KEY_FLOAT: text_printf(t, "%s = %.9g\n", k->key, *(const float *)p); break;
        case KEY_BOOL: text_printf(t, "%s = %s\n", k->key, *(const int *)p ? "true" : "false"); break;
        case KEY_ENUM: text_printf(t, "%s = %s\n", k->key, k->names[*(const int *)p]); break;
        case KEY_STRING:
            if (k->key[0] == '<') {
                for (int n = 0; n < CONFIG_MAX_PARTIES; n++)
                    if (c->data_path[n][0]) text_printf(t, "%d = %s\n", n, c->data_path[n]);
            } else if (*p) {
                text_printf(t, "%s = %s\n", k->key, p);
            } else {
                text_printf(t, "# %s = (unset)\n", k->key);
            }
            break;
        }
    }
}

static const char *const TYPE_NAMES[] = {"int", "int", "float", "text", "bool", "enum"};

// A key's allowed values: " [min, max]" for numbers, " {a, b, c}" for enums, "" otherwise.
static void key_range(const ConfigKey *k, char *out, size_t len) {
    out[0] = '\0';
    if (k->type == KEY_INT || k->type == KEY_INT64 || k->type == KEY_FLOAT)
        snprintf(out, len, " [%.10g, %.10g]", k->min, k->max);
    if (k->type == KEY_ENUM) {
        snprintf(out, len, " {");
        for (int j = 0; k->names[j]; j++)
            snprintf(out + strlen(out), len - strlen(out), "%s%s", j ? ", " : "", k->names[j]);
        snprintf(out + strlen(out), len - strlen(out), "}");
    }
}

// The sections in table order, as "[a] [b] ...".
static void section_list(char *out, size_t len) {
    out[0] = '\0';
    for (int i = 0; i < N_KEYS; i++)
        if (i == 0 || strcmp(KEYS[i].section, KEYS[i - 1].section))
            snprintf(out + strlen(out), len - strlen(out), "%s[%s]", i ? " " : "", KEYS[i].section);
}

void config_print_keys(FILE *f) {
    for (int i = 0; i < N_KEYS; i++) {
        const ConfigKey *k = &KEYS[i];
        char range[64], name[64];
        key_range(k, range, sizeof range);
        snprintf(name, sizeof name, "%s.%s", k->section, k->key);
        fprintf(f, "  %-22s %-5s default %-12s%s\n      %s\n", name, TYPE_NAMES[k->type], k->def[0] ? k->def : "(none)",
                range, k->doc);
    }
}

// s with the characters Markdown table cells must not hold raw escaped.
static void put_markdown(FILE *f, const char *s) {
    for (; *s; s++) fprintf(f, *s == '|' ? "\\|" : "%c", *s);
}

void config_print_keys_markdown(FILE *f) {
    char sections[256];
    section_list(sections, sizeof sections);
    fprintf(f,
            "# Configuration keys\n\n"
            "<!-- Generated by `pcmoe keys --markdown` from the binary's key table (src/config.c): do not edit by "
            "hand;\n"
            "     `make docs` writes it again, and tests/test_docs.sh fails when it differs. -->\n\n"
            "A pcmoe config is an INI file with the sections\n%s.\n"
            "Every key below may also be given on the command line as `--set section.key=value`, which\n"
            "overrides the file. Unknown sections or keys,\n"
            "duplicate keys, values of the wrong type, out-of-range or inconsistent values are errors (exit\n"
            "status 2, one line naming the file, line, key and value). Relative paths are resolved from the\n"
            "working directory. A run writes its resolved config to `RUN/config.ini`.\n",
            sections);
    for (int i = 0; i < N_KEYS; i++) {
        const ConfigKey *k = &KEYS[i];
        if (i == 0 || strcmp(k->section, KEYS[i - 1].section))
            fprintf(f, "\n## [%s]\n\n| key | type | default | allowed | meaning |\n| --- | --- | --- | --- | --- |\n",
                    k->section);
        char range[64];
        key_range(k, range, sizeof range);
        fprintf(f, "| `%s.%s` | %s | %s%s%s | %s | ", k->section, k->key, TYPE_NAMES[k->type], k->def[0] ? "`" : "",
                k->def[0] ? k->def : "(none)", k->def[0] ? "`" : "", range[0] ? range + 1 : "");
        put_markdown(f, k->doc);
        fprintf(f, " |\n");
    }
}

// s as roff text: backslashes escaped, a line never starting with a control character, and a '-' that starts
// a word (an option, a negative number) a minus sign; hyphens inside words stay hyphens.
static void put_roff(FILE *f, const char *s) {
    if (*s == '.' || *s == '\'') fprintf(f, "\\&");
    for (const char *p = s; *p; p++) {
        int word_start = p == s || strchr(" ([,-=", p[-1]);
        if (*p == '\\') fprintf(f, "\\e");
        else if (*p == '-' && word_start) fprintf(f, "\\-");
        else fputc(*p, f);
    }
}

void config_print_keys_man(FILE *f) {
    for (int i = 0; i < N_KEYS; i++) {
        const ConfigKey *k = &KEYS[i];
        if (i == 0 || strcmp(k->section, KEYS[i - 1].section)) fprintf(f, ".SS [%s]\n", k->section);
        char range[64];
        key_range(k, range, sizeof range);
        fprintf(f, ".TP\n.B %s.", k->section);
        put_roff(f, k->key);
        fprintf(f, "\n(%s, default ", TYPE_NAMES[k->type]);
        put_roff(f, k->def[0] ? k->def : "(none)");
        if (range[0]) fprintf(f, ",");
        put_roff(f, range);
        fprintf(f, ")\n");
        put_roff(f, k->doc);
        fprintf(f, "\n");
    }
}

int config_keys_main(int argc, char **argv) {
    const char *form = argc > 2 ? argv[2] : "";
    if (argc > 3 || (argc == 3 && strcmp(form, "--markdown") && strcmp(form, "--man"))) {
        fprintf(stderr, "pcmoe: error: keys takes nothing, --markdown or --man (got '%s')\n",
                argc > 3 ? argv[3] : form);
        return 2;
    }
    if (!strcmp(form, "--markdown")) config_print_keys_markdown(stdout);
    else if (!strcmp(form, "--man")) config_print_keys_man(stdout);
    else {
        char sections[256];
        section_list(sections, sizeof sections);
        printf("Config keys (INI sections %s; override with --set section.key=value):\n", sections);
        config_print_keys(stdout);
    }
    return 0;
}
