// hf.h: Hugging Face MoE checkpoints: MixtralForCausalLM, OlmoeForCausalLM and Qwen3MoeForCausalLM.
// - config.json gives the [model] keys (model.hf = DIR; docs/huggingface.md has the table), and what pcmoe
//   cannot compute (sliding windows, rope scaling, biases, shared experts, ...) is refused by key and value;
// - every pcmoe tensor has Hugging Face names: layer_L/attn_wqkv is the rows of q_proj, k_proj and v_proj,
//   each other tensor one of theirs;
// - a model reads the tensors it holds (its backbone, the experts it owns) from DIR's safetensors, one at a
//   time, checked against the shape its config gives.
#ifndef PCMOE_HF_H
#define PCMOE_HF_H

#include <stddef.h> // size_t

#include "model.h"        // Model, ModelConfig, ParamTensor
#include "safetensors.h"  // ST_NAME_LEN

typedef enum { HF_MIXTRAL, HF_OLMOE, HF_QWEN3_MOE } HfArch;
extern const char *const HF_ARCH_NAMES[]; // indexed by HfArch: the config.json "architectures" names

#define HF_MAX_KEYS 24

// One [model] key a config.json sets: model.<key> = value, from the config.json field `from`.
typedef struct {
    char key[32];
    char value[1300];        // (model.tokenizer: a path)
    char from[48];
} HfKey;

typedef struct {
    int arch;                // HfArch
    int n_keys;
    HfKey keys[HF_MAX_KEYS];
    int max_positions;       // max_position_embeddings (model.seq_len may not exceed it)
    char dtype[16];          // torch_dtype or dtype ("bfloat16", ...; "" when absent)
} HfConfig;

// 1 when DIR holds a config.json (a Hugging Face checkpoint directory rather than a pcmoe step directory).
int hf_is_checkpoint(const char *dir);
// Reads DIR/config.json. Returns 0, or 2 with one line naming the file, the key and its value in err (not
// JSON, an architecture other than the three, an unsupported feature, a missing or mistyped key).
int hf_config_read(HfConfig *h, const char *dir, char *err, size_t len);

// A piece of a pcmoe tensor: rows row0 .. row0 + rows - 1 are the Hugging Face tensor `name`.
typedef struct {
    char name[ST_NAME_LEN];
    int row0, rows;
} HfPiece;
// The pieces of tensor t of a model of architecture arch (3 for attn_wqkv, else 1). Returns their count.
int hf_pieces(int arch, const ModelConfig *c, const ParamTensor *t, HfPiece *out);

// Reads every tensor m holds from the checkpoint in DIR (its config.json names the architecture). The
// host must be able to write m's buffers (be->sync() first on a device). Returns 0, or 2 with the file
// and the tensor named in err (missing, a shape other than m's config gives, a dtype not F32/BF16/F16).
int hf_read_weights(Model *m, const char *dir, char *err, size_t len);

#endif
