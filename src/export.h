// export.h: pcmoe export: a party's model as a Hugging Face checkpoint directory that transformers loads
// (AutoModelForCausalLM.from_pretrained(DIR)): config.json (model.hf's), model.safetensors (sharded past
// --max-shard-mb, with model.safetensors.index.json), and the tokenizer. The party's own backbone and every
// expert of the pool; never another party's backbone.
#ifndef PCMOE_EXPORT_H
#define PCMOE_EXPORT_H

#include "comm.h"   // Comm
#include "config.h" // Config
#include "run.h"    // RunOptions

typedef struct {
    const char *out;     // --out DIR (must not exist, or be empty)
    int party;           // --party P: whose backbone
    int bf16;            // --dtype bf16 (else f32)
    long max_shard_mb;   // --max-shard-mb: a file holds at most this many MB (default 5000)
} ExportOptions;

// pcmoe export CONFIG --checkpoint DIR --out OUT [--party P] [--dtype bf16|f32] [--simulate]: in one process
// (a centralized or single-party run, or a pcmoe run under --simulate, which reads every party's file), or over
// MPI, every party running it (its consent): each loads its own file, the owners send party P their experts, and
// P writes. Returns the exit status.
int export_run(Config *c, Comm *comm, const RunOptions *ro, const ExportOptions *o);

#endif
