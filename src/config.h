// config.h: the run configuration: an INI file plus --set overrides, validated against one key table.
#ifndef PCMOE_CONFIG_H
#define PCMOE_CONFIG_H

#include <stddef.h> // size_t
#include <stdint.h> // int64_t
#include <stdio.h>  // FILE

#include "util.h"   // Text

#define CONFIG_MAX_PARTIES 64
#define CONFIG_PATH_LEN 1024

typedef enum { MODE_PCMOE, MODE_CENTRALIZED, MODE_LOCAL, MODE_FEDAVG } Mode;
typedef enum { SCHEDULE_CONCURRENT, SCHEDULE_SEQUENTIAL } Schedule;
typedef enum { DEVICE_CPU, DEVICE_CUDA } Device;
typedef enum { CUDA_AWARE_AUTO, CUDA_AWARE_ON, CUDA_AWARE_OFF } CudaAware;
typedef enum { RECOMPUTE_AUTO, RECOMPUTE_ON, RECOMPUTE_OFF } Recompute;
typedef enum { QK_NORM_NONE, QK_NORM_FULL, QK_NORM_HEAD } QkNorm; // none; OLMoE's (whole projection); Qwen3's
extern const char *const MODE_NAMES[];     // indexed by Mode: "pcmoe", "centralized", "local", "fedavg"
extern const char *const SCHEDULE_NAMES[]; // indexed by Schedule: "concurrent", "sequential"
extern const char *const DEVICE_NAMES[];   // indexed by Device: "cpu", "cuda"
extern const char *const CUDA_AWARE_NAMES[]; // indexed by CudaAware: "auto", "on", "off"
extern const char *const RECOMPUTE_NAMES[];  // indexed by Recompute: "auto", "true", "false"
extern const char *const QK_NORM_NAMES[];    // indexed by QkNorm: "none", "full", "head"

typedef struct {
    // [parties]
    int n_parties;       // parties.count: parties = MPI ranks (centralized: one rank for all)
    int ranks_per_party; // parties.ranks_per_party: pcmoe's MPI ranks per party (R)
    float peer_timeout;  // parties.peer_timeout: seconds (0: no limit)
    char keys[CONFIG_PATH_LEN]; // parties.keys: this party's keys file ("" = the exchange travels in the clear)
    int mode;            // Mode
    int schedule;        // Schedule (pcmoe mode)
    // [fedavg]
    int fedavg_every;    // average all weights every this many steps
    // [privacy]
    int share_metrics;   // 1: scalar metrics go to rank 0 (one metrics.jsonl); 0: each party logs alone
    int shuffle_rows;    // 1: rows for an owner are shuffled with a private RNG before they are sent
    int64_t shuffle_seed; // 0: the private shuffle RNG is seeded from /dev/urandom; else shuffle_seed + party
    int check_finite;    // 1: every row received from a peer is checked to be finite
    float noise_std;     // std of Gaussian noise added to every row sent to another party (a defence)
    float clip_norm;     // the DP defence (privacy.h): rows sent to another party clipped to this L2 norm (0 = off)
    float grad_clip_norm; // ... and the output-gradient rows sent back to owners
    float noise_multiplier; // Gaussian noise std = noise_multiplier x the clip norm on every sent row
    float target_epsilon; // > 0: noise_multiplier chosen so that the planned run reaches this epsilon
    float dp_delta;      // the delta of the reported (epsilon, delta)
    int same_backbone_init; // 1: every party's backbone starts from the same weights (a study control)
    char record_dir[CONFIG_PATH_LEN]; // study only: owners record received rows here ("" = off)
    // [checkpoint]
    int ckpt_every;      // write a checkpoint every this many steps and at the end (0 = never)
    int ckpt_keep;       // complete checkpoints kept on disk
    // [model]
    char hf[CONFIG_PATH_LEN]; // a Hugging Face checkpoint directory whose config.json sets the [model] keys ("")
    char tokenizer[CONFIG_PATH_LEN]; // a tokenizer.json: corpora are read as its ids ("": as bytes)
    int eos_token_id;    // the id joining a corpus's documents (-1: none)
    int vocab_size;      // token ids 0 .. vocab_size - 1 (byte-level: 256)
    int d_model;         // residual width d
    int n_layers;        // transformer blocks L
    int n_heads;         // attention (query) heads H
    int n_kv_heads;      // key/value heads (grouped-query attention; divides n_heads); resolved: 0 -> n_heads
    int head_dim;        // width of a head (even, for RoPE); resolved: 0 -> d_model / n_heads
    int qk_norm;         // QkNorm: RMSNorm of q and k before RoPE
    int tie_embeddings;  // 1: the LM head is the embedding matrix
    int router_renorm;   // 1: the chosen experts' probabilities are renormalised to sum to 1
    int seq_len;         // context length T
    int d_ff;            // hidden width of the dense SwiGLU FFN (non-MoE layers)
    int n_experts;       // experts per MoE layer m
    int top_k;           // experts per token k
    int expert_ff;       // hidden width of each SwiGLU expert f
    int moe_every;       // layer l is MoE when (l + 1) % moe_every == 0 (and l >= private_layers)
    int private_layers;  // the first private_layers layers have dense FFNs, kept by each party (never sent)
    float aux_loss_coef; // Switch load-balancing loss coefficient
    float z_loss_coef;   // router z-loss coefficient
    float rope_theta;    // RoPE base
    float norm_eps;      // RMSNorm epsilon
    float init_std;      // std of the normal initialisation of matrices
    int recompute_experts; // Recompute: expert hidden activations recomputed in the backward, not kept
                           // (auto: owners only)
    int recompute_attention; // Recompute: each layer's attention sub-block and FFN norm recomputed in the backward
    int logits_chunk_mb;     // MiB of fp32 logits the LM head computes at a time (0: every row at once)
                             // from its input (auto: pcmoe parties over MPI only)
    // [train]
    int steps;           // optimizer steps
    int batch_size;      // sequences per step B
    float lr;            // peak learning rate
    float min_lr;        // learning rate at the end of the cosine decay
    int warmup_steps;    // linear warmup from 0 to lr
    float weight_decay;  // AdamW decoupled weight decay (matrices only; never norms)
    float beta1, beta2;  // AdamW moment decay rates
    float adam_eps;      // AdamW epsilon
    float grad_clip;     // global gradient-norm clip (0 = off)
    int64_t seed;        // seeds initialisation and batch sampling
    char init_from[CONFIG_PATH_LEN]; // a checkpoint step directory to take the initial weights from ("" = none)
    int eval_every;      // validate every this many steps (0 = only at the end)
    int eval_batches;    // validation batches per evaluation
    int log_every;       // metrics.jsonl line every this many steps
    // [data]
    float val_fraction;  // last fraction of each corpus held out for validation
    char data_path[CONFIG_MAX_PARTIES][CONFIG_PATH_LEN]; // data.N: party N's corpus (file or directory)
    // [run]
    char run_dir[CONFIG_PATH_LEN]; // output directory
    int threads;         // OpenMP threads (0 = OpenMP's default)
    int blas_threads;    // BLAS threads (0 = auto)
    int device;          // Device: where the model's buffers live and its ops run
    int gpu;             // run.device = cuda: the GPU index (-1 = local rank % device count)
    int cuda_aware_mpi;  // CudaAware: pcmoe on cuda hands MPI device buffers (on) or stages them on the host (off)
    int tf32;            // run.device = cuda: 1 lets cuBLAS use TF32 tensor cores for fp32 GEMMs
} Config;

// Fills `c` with defaults, reads `path` (NULL: defaults only), then applies `n_set` overrides of the form
// "section.key=value". Returns 0 on success. On error returns 2 and writes one line naming the file (or
// --set), the key and the value into err.
int config_load(Config *c, const char *path, char *const *set, int n_set, char *err, size_t err_len);
// Like config_load, but a party may have no corpus ([data]): pcmoe plan reads none.
int config_load_shapes(Config *c, const char *path, char *const *set, int n_set, char *err, size_t err_len);

// Like config_load, from INI text (a checkpoint's stored config); `text` is named "<stored config>".
int config_load_text(Config *c, const char *text, char *err, size_t err_len);
// Compares the keys that shape the model ([model], and with_parties: parties.count, parties.mode). Returns 0
// if equal, else 1 with "model.d_model: checkpoint 64, config 32" in err (a is the checkpoint's).
int config_diff_model(const Config *a, const Config *b, int with_parties, char *err, size_t err_len);
// Compares every key the parties of one run must share (all but each party's own: run.*, data.*, its paths,
// privacy.shuffle_seed, privacy.record_received, parties.peer_timeout and the recompute and chunking keys).
// Returns 0 if equal, else 1 with "train.steps: A_NAME 100, B_NAME 200" in err.
int config_diff_shared(const Config *a, const Config *b, const char *a_name, const char *b_name, char *err,
                       size_t err_len);

// Appends the resolved configuration to t as INI text that config_load reads back to the same values.
void config_write(Text *t, const Config *c);

// Lists every key with its type, range, default and meaning, as text (pcmoe keys), as the Markdown page
// docs/config.md, or as the man page's key list (the test_docs test holds both to this table).
void config_print_keys(FILE *f);
void config_print_keys_markdown(FILE *f);
void config_print_keys_man(FILE *f);
// pcmoe keys [--markdown | --man]: one of the three on stdout. Returns the exit status.
int config_keys_main(int argc, char **argv);

#endif
