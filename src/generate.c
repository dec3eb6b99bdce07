// generate.c: sampling bytes from a model, with a KV cache or by full forwards (see generate.h).
#include "generate.h"

#include <math.h>   // expf, logf, isfinite
#include <stdlib.h> // free
#include <string.h> // memcpy, memset

#include "util.h"   // mallocCheck, fail

int generate_sample(const float *logp, int V, float temperature, int top_k, Rng *rng) {
    int idx[256];
    if (V < 1 || V > 256) fail("internal: a vocabulary of %d for byte sampling", V);
    // the bytes by log-probability, most probable first, ties to the lower byte (insertion sort: V <= 256)
    for (int i = 0; i < V; i++) {
        if (!isfinite(logp[i]) && !(logp[i] < 0)) fail("the model's log-probabilities are not finite (a diverged checkpoint?)");
        int j = i;
        for (; j > 0 && logp[idx[j - 1]] < logp[i]; j--) idx[j] = idx[j - 1];
        idx[j] = i;
    }
    if (!isfinite(logp[idx[0]])) fail("the model's log-probabilities are not finite (a diverged checkpoint?)");
    if (temperature <= 0.0f) return idx[0];
    int k = top_k > 0 && top_k < V ? top_k : V;
    double w[256], sum = 0.0;
    for (int i = 0; i < k; i++) { w[i] = exp(((double)logp[idx[i]] - logp[idx[0]]) / temperature); sum += w[i]; }
    double u = rng_uniform(rng) * sum, acc = 0.0;
    for (int i = 0; i < k; i++) {
        acc += w[i];
        if (u < acc) return idx[i];
    }
    return idx[k - 1]; // (u within rounding of sum)
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

double generate_text(Model *m, const GenerateOptions *o, uint8_t *text, int prompt_len, GenerateStep *steps) {
    int T = m->T, V = m->cfg.vocab, end = prompt_len, start = end > T ? end - T : 0, keep = T / 2 > 0 ? T / 2 : 1;
    float *logits = mallocCheck(sizeof(float) * V), *logp = mallocCheck(sizeof(float) * V);
    uint8_t *tok = NULL, *tgt = NULL;
    KvCache kv;
    memset(&kv, 0, sizeof kv);
    if (o->no_cache) {
        model_set_batch(m, 1);
        tok = mallocCheck((size_t)T);
        tgt = mallocCheck((size_t)T);
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
            memset(tok, 0, (size_t)T);
            memset(tgt, 0, (size_t)T);
            memcpy(tok, text + start, (size_t)context);
            model_forward(m, tok, tgt); // (the logits' buffer then holds the probabilities)
            const float *probs = m->logits + (size_t)(context - 1) * V;
            for (int i = 0; i < V; i++) logp[i] = logf(probs[i]);
            positions += T;
        } else { // the bytes the cache has not seen: the prompt (or the refilled window), then one at a time
            int n = context - kv.len;
            model_forward_cached(m, &kv, text + start + kv.len, n, logits);
            log_softmax(logp, logits, V);
            positions += n;
        }
        int b = generate_sample(logp, V, o->temperature, o->top_k, &rng);
        steps[j] = (GenerateStep){.byte = (uint8_t)b, .logprob = logp[b], .context = context};
        text[end++] = (uint8_t)b;
    }
    if (!o->no_cache) model_cache_free(&kv);
    free(logits); free(logp); free(tok); free(tgt);
    return positions;
}

void generate_serve(Model *m, const GenerateOptions *o) {
    for (int j = 0; j < o->max_new; j++) model_serve_forward(m);
}
