// generate.c: sampling bytes from a model, with a KV cache or by full forwards, and pcmoe generate (see
// generate.h).
#include "generate.h"

#include <errno.h>  // errno
#include <math.h>   // expf, logf, isfinite
#include <stdio.h>  // fwrite, printf
#include <stdlib.h> // free
#include <string.h> // memcpy, memset, strlen, strerror

#include "json.h"   // Json: --json
#include "util.h"   // mallocCheck, fail, error_set, file_append, now_seconds

// A token and its log-probability, ordered most probable first, ties to the lower id.
typedef struct {
    float logp;
    int id;
} Ranked;

static int ranked_cmp(const void *a, const void *b) {
    const Ranked *x = a, *y = b;
    if (x->logp != y->logp) return x->logp > y->logp ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int generate_sample(const float *logp, int V, float temperature, int top_k, Rng *rng) {
    if (V < 1) fail("internal: a vocabulary of %d for sampling", V);
    int best = 0;
    for (int i = 0; i < V; i++) {
        if (!isfinite(logp[i]) && !(logp[i] < 0))
            fail("the model's log-probabilities are not finite (a diverged checkpoint?)");
        if (logp[i] > logp[best]) best = i;
    }
    if (!isfinite(logp[best])) fail("the model's log-probabilities are not finite (a diverged checkpoint?)");
    if (temperature <= 0.0f) return best;
    // the tokens by log-probability, the top k kept, one drawn with weights exp((logp - max) / temperature)
    int k = top_k > 0 && top_k < V ? top_k : V;
    Ranked *r = mallocCheck(sizeof(Ranked) * (size_t)V);
    for (int i = 0; i < V; i++) r[i] = (Ranked){logp[i], i};
    qsort(r, (size_t)V, sizeof *r, ranked_cmp);
    double sum = 0.0;
    for (int i = 0; i < k; i++) sum += exp(((double)r[i].logp - r[0].logp) / temperature);
    double u = rng_uniform(rng) * sum, acc = 0.0;
    int pick = r[k - 1].id; // (u within rounding of sum)
    for (int i = 0; i < k; i++) {
        acc += exp(((double)r[i].logp - r[0].logp) / temperature);
        if (u < acc) { pick = r[i].id; break; }
    }
    free(r);
    return pick;
}

// logp (V) = log softmax of logits (V).
static void log_softmax(float *logp, const float *logits, int V) {
    float maxv = logits[0];
    for (int i = 1; i < V; i++) maxv = logits[i] > maxv ? logits[i] : maxv;
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - maxv);
    float lse = maxv + (float)log(sum);
    for (int i = 0; i < V; i++) logp[i] = logits[i] - lse;
}

double generate_text(Model *m, const GenerateOptions *o, Token *text, int prompt_len, GenerateStep *steps) {
    int T = m->T, V = m->cfg.vocab, end = prompt_len, start = end > T ? end - T : 0, keep = T / 2 > 0 ? T / 2 : 1;
    float *logits = mallocCheck(sizeof(float) * V), *logp = mallocCheck(sizeof(float) * V);
    Token *tok = NULL, *tgt = NULL;
    KvCache kv;
    memset(&kv, 0, sizeof kv);
    if (o->no_cache) {
        model_set_batch(m, 1);
        tok = mallocCheck(sizeof(Token) * (size_t)T);
        tgt = mallocCheck(sizeof(Token) * (size_t)T);
    } else {
        model_cache_create(&kv, m);
    }
    Rng rng;
    rng_seed(&rng, o->seed);
    double positions = 0.0;
    for (int j = 0; j < o->max_new; j++) {
        if (end - start > T) { // the window is full: refill it from the text's last `keep` bytes
            start = end - keep;
            kv.len = 0;
        }
        int context = end - start;
        if (o->no_cache) { // the reference: the whole context through model_forward, padded to seq_len
            memset(tok, 0, sizeof(Token) * (size_t)T);
            memset(tgt, 0, sizeof(Token) * (size_t)T);
            memcpy(tok, text + start, sizeof(Token) * (size_t)context);
            model_forward(m, tok, tgt);
            model_head_logits(m, context - 1, logits);
            log_softmax(logp, logits, V);
            positions += T;
        } else { // the bytes the cache has not seen: the prompt (or the refilled window), then one at a time
            int n = context - kv.len;
            model_forward_cached(m, &kv, text + start + kv.len, n, logits);
            log_softmax(logp, logits, V);
            positions += n;
        }
        int b = generate_sample(logp, V, o->temperature, o->top_k, &rng);
        steps[j] = (GenerateStep){.token = (Token)b, .logprob = logp[b], .context = context};
        text[end++] = (Token)b;
    }
    if (!o->no_cache) model_cache_free(&kv);
    free(logits); free(logp); free(tok); free(tgt);
    return positions;
}

void generate_serve(Model *m, const GenerateOptions *o) {
    for (int j = 0; j < o->max_new; j++) model_serve_forward(m);
}

// The prompt (--prompt or --prompt-file), with room for max_new bytes after it, into *text; *len its bytes.
// Returns 0, or 2 with err set.
static int generate_prompt(const GenerateOptions *o, Tokenizer *tok, Token **text, int *len, char *err,
                           size_t err_len) {
    uint8_t *file = NULL;
    size_t n = o->prompt ? strlen(o->prompt) : 0, cap = 0;
    int rc = 0;
    if (o->prompt_file) {
        int frc = file_append(o->prompt_file, &file, &n, &cap);
        if (frc == FILE_CANNOT_OPEN)
            rc = error_set(err, err_len, "--prompt-file %s: cannot read: %s", o->prompt_file, strerror(errno));
        else if (frc == FILE_READ_ERROR) rc = error_set(err, err_len, "--prompt-file %s: read error", o->prompt_file);
        else if (frc == FILE_NO_MEMORY) fail("out of memory reading the prompt");
        else if (n >= (1u << 30)) rc = error_set(err, err_len, "--prompt-file %s: over 1 GiB", o->prompt_file);
    }
    if (!rc && n == 0)
        rc = error_set(err, err_len, "%s: empty prompt; give at least one byte",
                       o->prompt_file ? o->prompt_file : "--prompt");
    if (!rc) {
        const uint8_t *bytes = o->prompt_file ? file : (const uint8_t *)o->prompt;
        size_t count = 0, cap = n + (size_t)o->max_new;
        *text = mallocCheck(sizeof(Token) * cap);
        if (tok) { // its ids, with room for max_new after them
            char why[256];
            if (tokenizer_encode(tok, (const char *)bytes, n, text, &count, &cap, why, sizeof why))
                rc = error_set(err, err_len, "%s: %s", o->prompt_file ? o->prompt_file : "--prompt", why);
            else if (!count)
                rc = error_set(err, err_len, "%s: no tokens", o->prompt_file ? o->prompt_file : "--prompt");
            Token *grown = realloc(*text, sizeof(Token) * (count + (size_t)o->max_new));
            if (!grown) fail("out of memory");
            *text = grown;
        } else
            for (; count < n; count++) (*text)[count] = bytes[count]; // (a byte-level model: a token per byte)
        *len = (int)count;
    }
    free(file);
    return rc;
}

// --json OUT: each byte, its log-probability and context length, and the run's settings.
static int generate_json(const GenerateOptions *o, int step, int prompt_len, const GenerateStep *steps,
                         double positions, double seconds, char *err, size_t len) {
    Json j = {0};
    json_open_object(&j);
    json_member_int(&j, "party", o->party);
    json_member_int(&j, "step", step);
    json_member_int(&j, "prompt_bytes", prompt_len);
    json_member_int(&j, "max_new", o->max_new);
    json_member_number(&j, "temperature", o->temperature);
    json_member_int(&j, "top_k", o->top_k);
    json_member_uint(&j, "seed", o->seed);
    json_member_bool(&j, "kv_cache", !o->no_cache);
    json_member_fixed(&j, "positions", positions, 0);
    json_member_fixed(&j, "seconds", seconds, 6);
    json_key(&j, "tokens");
    json_open_array(&j);
    for (int i = 0; i < o->max_new; i++) json_int(&j, (int)steps[i].token);
    json_close_array(&j);
    json_key(&j, "bytes"); // (a byte-level model: the same ids)
    json_open_array(&j);
    for (int i = 0; i < o->max_new; i++) json_int(&j, (int)steps[i].token);
    json_close_array(&j);
    json_key(&j, "logprobs");
    json_open_array(&j);
    for (int i = 0; i < o->max_new; i++) json_number(&j, steps[i].logprob);
    json_close_array(&j);
    json_key(&j, "contexts");
    json_open_array(&j);
    for (int i = 0; i < o->max_new; i++) json_int(&j, steps[i].context);
    json_close_array(&j);
    json_close_object(&j);
    json_end_line(&j);
    return json_write_option(&j, "--json", o->json, err, len);
}

// The prompting party: generates after text's prompt_len bytes, prints prompt and text, and the --json.
static int generate_prompted(Model *m, const GenerateOptions *o, const Tokenizer *tok, int step, Token *text,
                             int prompt_len, char *err, size_t len) {
    GenerateStep *steps = mallocCheck(sizeof(GenerateStep) * (size_t)o->max_new);
    double t0 = now_seconds(), positions = generate_text(m, o, text, prompt_len, steps), dt = now_seconds() - t0;
    if (tok) { // the text of the prompt's ids and the new ones
        char *out = NULL;
        size_t out_n = 0, out_cap = 0;
        tokenizer_decode(tok, text, (size_t)(prompt_len + o->max_new), &out, &out_n, &out_cap);
        fwrite(out, 1, out_n, stdout);
        free(out);
    } else if (m->cfg.vocab <= 256) // a byte-level model: the text itself
        for (int i = 0; i < prompt_len + o->max_new; i++) putchar((int)text[i]);
    else // a larger vocabulary read without its tokenizer: the ids, prompt (its bytes) and continuation
        for (int i = 0; i < prompt_len + o->max_new; i++) printf("%s%u", i ? " " : "", (unsigned)text[i]);
    printf("\n");
    fflush(stdout);
    fprintf(stderr,
            "pcmoe: party %d generated %d tokens from the checkpoint of step %d in %.2f s (%.1f tokens/s); "
            "%.0f positions through the model (%s)\n",
            o->party, o->max_new, step, dt, o->max_new / (dt > 0 ? dt : 1e-9), positions,
            o->no_cache ? "--no-cache: every context whole" : "KV cache");
    int rc = o->json ? generate_json(o, step, prompt_len, steps, positions, dt, err, len) : 0;
    free(steps);
    return rc;
}

int generate_run(Config *c, Comm *comm, const RunOptions *ro, const GenerateOptions *o) {
    if (c->device != DEVICE_CPU && comm->rank == 0)
        fprintf(stderr, "pcmoe: note: generate runs on the CPU (run.device = %s ignored)\n", DEVICE_NAMES[c->device]);
    c->device = DEVICE_CPU;
    c->batch_size = 1;
    c->record_dir[0] = '\0';
    int P = c->n_parties;
    run_check_ranks(c, comm, ro->simulate);
    if (o->party >= P)
        fail_usage(2, 0, "--party %d: parties.count = %d: give a party from 0 to %d", o->party, P, P - 1);
    if (ro->simulate && c->mode != MODE_PCMOE)
        fail_usage(2, 0,
                   "--simulate: parties.mode = %s has no expert exchange to simulate; run generate as training ran",
                   MODE_NAMES[c->mode]);
    Run run, *r = &run;
    run_open(r, c, comm, ro, c->clip_norm > 0 && c->target_epsilon > 0); // (no corpus read, unless for the DP noise)
    int step = run_load_checkpoint(r, ro->checkpoint);
    int mine = r->one_process || comm->party == o->party;
    Model *m = c->mode == MODE_CENTRALIZED ? &r->central : &r->party[r->one_process ? o->party : 0].model;
    char err[2048] = "";
    Token *text = NULL; // the prompt, read by the prompting party only
    int prompt_len = 0, rc = mine ? generate_prompt(o, r->tok, &text, &prompt_len, err, sizeof err) : 0;
    comm_stop_if_failed(comm, rc, err);
    if (mine) rc = generate_prompted(m, o, r->tok, step, text, prompt_len, err, sizeof err);
    else if (c->mode == MODE_PCMOE && P > 1) generate_serve(m, o); // (local, fedavg: the other models take no part)
    free(text);
    comm_stop_if_failed(comm, rc, err);
    if (ro->audit_path) comm_stop_if_failed(comm, comm_write_audit(comm, ro->audit_path, err, sizeof err), err);
    run_close(r);
    return 0;
}
