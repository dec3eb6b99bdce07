// generate.h: text generation (pcmoe generate). One party, the prompting one, samples bytes with its own
// backbone and router; in pcmoe over MPI the other parties serve their experts through the exchange,
// pass for pass, and see only the rows routed to them (never the prompt or the sampled bytes).
//
// The context window: the model sees at most seq_len bytes. The first pass reads the prompt (its last
// seq_len bytes when longer); each later pass reads the byte just sampled, at the next position of the KV
// cache. When the text outgrows seq_len bytes, the cache is filled again from its last seq_len / 2 bytes
// (one pass over them), so every byte is predicted from between seq_len / 2 and seq_len bytes before it.
// Each pass yields one byte: max_new passes in all, on every party.
//
// Sampling: log-probabilities divided by the temperature, restricted to the top_k most probable bytes
// (ties to the lower byte), then one draw from the private Rng seeded with `seed`. Temperature 0 takes the
// most probable byte.
#ifndef PCMOE_GENERATE_H
#define PCMOE_GENERATE_H

#include <stdint.h> // uint8_t, uint64_t

#include "comm.h"   // Comm
#include "config.h" // Config
#include "model.h"  // Model
#include "rng.h"    // Rng
#include "run.h"    // RunOptions

typedef struct {
    int party;           // the prompting party (--party)
    const char *prompt;  // --prompt TEXT, or NULL
    const char *prompt_file; // --prompt-file FILE, or NULL
    int max_new;         // bytes to generate (--max-new)
    float temperature;   // --temperature (0: greedy)
    int top_k;           // --top-k (0: every byte)
    uint64_t seed;       // --seed
    int no_cache;        // --no-cache: every pass a full forward of its context (the KV cache's reference)
    const char *json;    // --json OUT, or NULL
} GenerateOptions;

// What one pass produced.
typedef struct {
    Token token;         // the sampled token (a byte-level model: the byte)
    float logprob;       // its log-probability under the model (before temperature and top-k)
    int context;         // bytes it was predicted from
} GenerateStep;

// The byte drawn from log-probabilities logp (V) as described above.
int generate_sample(const float *logp, int V, float temperature, int top_k, Rng *rng);

// The prompting party: appends o->max_new bytes to text (prompt_len bytes of prompt; room for
// prompt_len + max_new) and fills steps (max_new). m: a model with batch size 1; its experts are local or
// reached through m->ex. Returns the positions run through the model (the prompt's and one per later
// byte, plus the window's refills; with no_cache every pass's whole context, padded to seq_len).
double generate_text(Model *m, const GenerateOptions *o, Token *text, int prompt_len, GenerateStep *steps);

// Every other party of a pcmoe job: serves its experts for the prompting party's passes, in step with it.
void generate_serve(Model *m, const GenerateOptions *o);

// pcmoe generate CONFIG --checkpoint DIR (--prompt TEXT | --prompt-file F): the prompting party's process
// samples the text (its backbone and router; in pcmoe over MPI its experts' owners serve them, pass for
// pass) and prints the prompt and the text on stdout. Generation runs on the CPU, one sequence, recording
// nothing: c is set so (run.device = cpu, train.batch_size = 1, privacy.record_received off). Returns the
// exit status.
int generate_run(Config *c, Comm *comm, const RunOptions *ro, const GenerateOptions *o);

#endif
