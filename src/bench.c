// bench.c: multiple-choice benchmarks: task files, scoring by log-likelihood, accuracy, and pcmoe bench
// (see bench.h).
#include "bench.h"

#include <errno.h>  // errno
#include <stdio.h>  // FILE, getline
#include <stdlib.h> // free, strtol
#include <string.h> // memcpy, memset, strncmp, strerror

#include "backend.h" // Backend (sync before the host reads the losses)
#include "json.h"    // Json: --json
#include "util.h"    // mallocCheck, error_set

// A growable byte string.
typedef struct {
    uint8_t *b;
    int n, cap;
} Bytes;

static void bytes_put(Bytes *s, uint8_t c) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        uint8_t *nb = realloc(s->b, (size_t)s->cap);
        if (!nb) fail("out of memory reading a task file");
        s->b = nb;
    }
    s->b[s->n++] = c;
}

static void bytes_utf8(Bytes *s, unsigned cp) {
    if (cp < 0x80) bytes_put(s, (uint8_t)cp);
    else if (cp < 0x800) { bytes_put(s, (uint8_t)(0xC0 | cp >> 6)); bytes_put(s, (uint8_t)(0x80 | (cp & 0x3F))); }
    else if (cp < 0x10000) {
        bytes_put(s, (uint8_t)(0xE0 | cp >> 12));
        bytes_put(s, (uint8_t)(0x80 | (cp >> 6 & 0x3F)));
        bytes_put(s, (uint8_t)(0x80 | (cp & 0x3F)));
    } else {
        bytes_put(s, (uint8_t)(0xF0 | cp >> 18));
        bytes_put(s, (uint8_t)(0x80 | (cp >> 12 & 0x3F)));
        bytes_put(s, (uint8_t)(0x80 | (cp >> 6 & 0x3F)));
        bytes_put(s, (uint8_t)(0x80 | (cp & 0x3F)));
    }
}

static const char *skip_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    return p;
}

static int hex4(const char *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return 1;
        *v = *v * 16 + (unsigned)d;
    }
    return 0;
}

// A JSON string at *p (after whitespace) into out (UTF-8 bytes); advances *p. Returns 0, or 1.
static int task_string(const char **p, Bytes *out) {
    const char *s = skip_ws(*p);
    if (*s != '"') return 1;
    for (s++; *s != '"'; s++) {
        if (!*s) return 1;
        if (*s != '\\') { bytes_put(out, (uint8_t)*s); continue; }
        s++;
        switch (*s) {
        case '"': case '\\': case '/': bytes_put(out, (uint8_t)*s); break;
        case 'b': bytes_put(out, '\b'); break;
        case 'f': bytes_put(out, '\f'); break;
        case 'n': bytes_put(out, '\n'); break;
        case 'r': bytes_put(out, '\r'); break;
        case 't': bytes_put(out, '\t'); break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(s + 1, &cp)) return 1;
            s += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && s[1] == '\\' && s[2] == 'u' && !hex4(s + 3, &lo) && lo >= 0xDC00 &&
                lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                s += 6;
            }
            bytes_utf8(out, cp);
            break;
        }
        default: return 1;
        }
    }
    *p = s + 1;
    return 0;
}

// Skips a JSON scalar (string, number, true, false, null) or an array of them. Returns 0, or 1.
static int task_skip(const char **p) {
    const char *s = skip_ws(*p);
    Bytes tmp = {0};
    int bad = 0;
    if (*s == '"') bad = task_string(&s, &tmp);
    else if (*s == '[') {
        s = skip_ws(s + 1);
        while (!bad && *s != ']') {
            bad = task_skip(&s);
            s = skip_ws(s);
            if (*s == ',') s = skip_ws(s + 1);
            else if (*s != ']') bad = 1;
        }
        s++;
    } else {
        const char *start = s;
        while (*s && *s != ',' && *s != '}' && *s != ']' && *s != ' ') s++;
        bad = s == start;
    }
    free(tmp.b);
    *p = s;
    return bad;
}

// One task line: the query, the choices (appended to *choices, *n_choices of them) and gold.
static int parse_line(const char *line, Bytes *query, Bytes **choices, int *n_choices, long *gold, char *why,
                      size_t len) {
    const char *p = skip_ws(line);
    int have_query = 0, have_choices = 0, have_gold = 0;
    if (*p != '{') return error_set(why, len, "not a JSON object");
    p = skip_ws(p + 1);
    while (*p != '}') {
        Bytes key = {0};
        if (task_string(&p, &key)) { free(key.b); return error_set(why, len, "expected a key"); }
        p = skip_ws(p);
        if (*p != ':') { free(key.b); return error_set(why, len, "expected ':' after a key"); }
        p++;
        int is = 0;
        if (key.n == 5 && !strncmp((char *)key.b, "query", 5)) is = 1;
        else if (key.n == 7 && !strncmp((char *)key.b, "choices", 7)) is = 2;
        else if (key.n == 4 && !strncmp((char *)key.b, "gold", 4)) is = 3;
        free(key.b);
        if (is == 1) {
            query->n = 0;
            if (task_string(&p, query)) return error_set(why, len, "\"query\": not a string");
            have_query = 1;
        } else if (is == 2) {
            p = skip_ws(p);
            if (*p != '[') return error_set(why, len, "\"choices\": not an array");
            p = skip_ws(p + 1);
            while (*p != ']') {
                *choices = realloc(*choices, sizeof(Bytes) * (size_t)(*n_choices + 1));
                if (!*choices) fail("out of memory reading a task file");
                Bytes *c = &(*choices)[(*n_choices)++];
                memset(c, 0, sizeof *c);
                if (task_string(&p, c)) return error_set(why, len, "\"choices\": not an array of strings");
                p = skip_ws(p);
                if (*p == ',') p = skip_ws(p + 1);
                else if (*p != ']') return error_set(why, len, "\"choices\": expected ',' or ']'");
            }
            p++;
            have_choices = 1;
        } else if (is == 3) {
            char *end;
            *gold = strtol(skip_ws(p), &end, 10);
            if (end == skip_ws(p)) return error_set(why, len, "\"gold\": not an integer");
            p = end;
            have_gold = 1;
        } else if (task_skip(&p)) {
            return error_set(why, len, "a value that is not a string, number or array of them");
        }
        p = skip_ws(p);
        if (*p == ',') p = skip_ws(p + 1);
        else if (*p != '}') return error_set(why, len, "expected ',' or '}'");
    }
    if (!have_query || !have_choices || !have_gold)
        return error_set(why, len, "needs \"query\", \"choices\" and \"gold\"");
    if (*n_choices < 2) return error_set(why, len, "\"choices\": %d choice(s); at least 2", *n_choices);
    if (*gold < 0 || *gold >= *n_choices)
        return error_set(why, len, "\"gold\" = %ld: not a choice index (0 to %d)", *gold, *n_choices - 1);
    return 0;
}

// Pair p of t from its bytes s (n; the last cont bytes the continuation): as tokens, through tok when given.
// Returns 0, or 2 with err set (text that is not UTF-8).
static int pair_set(BenchTask *t, int p, const uint8_t *s, int n, int cont, Tokenizer *tok, char *err, size_t len) {
    size_t count = 0, cap = 0;
    Token *ids = NULL;
    t->cont_bytes[p] = cont;
    if (!tok) {
        ids = mallocCheck(sizeof(Token) * (size_t)n);
        for (int i = 0; i < n; i++) ids[i] = s[i];
        count = (size_t)n;
    } else {
        if (tokenizer_encode(tok, (const char *)s, (size_t)(n - cont), &ids, &count, &cap, err, len)) return 2;
        size_t context = count;
        count = 0;
        if (tokenizer_encode(tok, (const char *)s, (size_t)n, &ids, &count, &cap, err, len)) { free(ids); return 2; }
        cont = count > context ? (int)(count - context) : 1;
    }
    t->text[p] = ids;
    t->text_len[p] = (int)count;
    t->cont_len[p] = cont;
    return 0;
}

int bench_load(BenchTask *t, const char *path, Tokenizer *tok, char *err, size_t len) {
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "r");
    if (!f) return error_set(err, len, "%s: cannot read task: %s", path, strerror(errno));
    char *line = NULL, why[256];
    size_t cap = 0;
    int lineno = 0, rc = 0, item_cap = 0, pair_cap = 0;
    Bytes query = {0};
    while (!rc && getline(&line, &cap, f) >= 0) {
        lineno++;
        if (*skip_ws(line) == '\0') continue;
        Bytes *choices = NULL;
        int n_choices = 0;
        long gold = -1;
        if (parse_line(line, &query, &choices, &n_choices, &gold, why, sizeof why))
            rc = error_set(err, len, "%s:%d: %s", path, lineno, why);
        if (!rc) {
            if (t->n_items + 2 > item_cap) {
                item_cap = item_cap ? 2 * item_cap : 256;
                t->gold = realloc(t->gold, sizeof(int) * (size_t)item_cap);
                t->first = realloc(t->first, sizeof(int) * (size_t)(item_cap + 1));
                if (!t->gold || !t->first) fail("out of memory reading a task file");
            }
            t->gold[t->n_items] = (int)gold;
            t->first[t->n_items] = t->n_pairs;
            for (int j = 0; j < n_choices; j++) {
                if (t->n_pairs == pair_cap) {
                    pair_cap = pair_cap ? 2 * pair_cap : 1024;
                    t->text = realloc(t->text, sizeof(Token *) * (size_t)pair_cap);
                    t->text_len = realloc(t->text_len, sizeof(int) * (size_t)pair_cap);
                    t->cont_len = realloc(t->cont_len, sizeof(int) * (size_t)pair_cap);
                    t->cont_bytes = realloc(t->cont_bytes, sizeof(int) * (size_t)pair_cap);
                    if (!t->text || !t->text_len || !t->cont_len || !t->cont_bytes)
                        fail("out of memory reading a task file");
                }
                int cont = 1 + choices[j].n, n = query.n + cont;
                uint8_t *s = mallocCheck((size_t)n);
                memcpy(s, query.b, (size_t)query.n);
                s[query.n] = ' ';
                memcpy(s + query.n + 1, choices[j].b, (size_t)choices[j].n);
                if (!rc && pair_set(t, t->n_pairs, s, n, cont, tok, why, sizeof why))
                    rc = error_set(err, len, "%s:%d: %s", path, lineno, why);
                free(s);
                if (!rc) t->n_pairs++;
            }
            t->n_items++;
            t->first[t->n_items] = t->n_pairs;
        }
        for (int j = 0; j < n_choices; j++) free(choices[j].b);
        free(choices);
    }
    free(line);
    free(query.b);
    int bad = ferror(f);
    fclose(f);
    if (!rc && bad) rc = error_set(err, len, "%s: read error", path);
    if (!rc && t->n_items == 0) rc = error_set(err, len, "%s: no task items", path);
    if (rc) bench_free(t);
    return rc;
}

void bench_free(BenchTask *t) {
    for (int i = 0; i < t->n_pairs; i++) free(t->text[i]);
    free(t->text); free(t->text_len); free(t->cont_len); free(t->cont_bytes); free(t->gold); free(t->first);
    memset(t, 0, sizeof *t);
}

void bench_score(Model *m, const BenchTask *t, Token *tok, Token *tgt, double *loglik) {
    int B = m->B, T = m->T;
    int *from = mallocCheck(sizeof(int) * (size_t)B), *to = mallocCheck(sizeof(int) * (size_t)B);
    for (int p0 = 0; p0 < t->n_pairs; p0 += B) {
        memset(tok, 0, sizeof(Token) * (size_t)B * T);
        memset(tgt, 0, sizeof(Token) * (size_t)B * T);
        for (int s = 0; s < B; s++) { // sequence s: pair p0 + s, at the start of its row (later bytes are padding)
            from[s] = to[s] = 0;
            int i = p0 + s;
            if (i >= t->n_pairs) continue;
            int L = t->text_len[i], n = L - 1 < T ? L - 1 : T; // inputs w[0 .. n-1], targets w[1 .. n]
            if (n <= 0) continue;
            const Token *w = t->text[i] + (L - 1 - n);
            memcpy(tok + (size_t)s * T, w, sizeof(Token) * (size_t)n);
            memcpy(tgt + (size_t)s * T, w + 1, sizeof(Token) * (size_t)n);
            int scored = t->cont_len[i] < n ? t->cont_len[i] : n; // the last `scored` targets are the continuation's
            from[s] = n - scored;
            to[s] = n;
        }
        model_forward(m, tok, tgt); // (row_losses: the per-position losses, on the host)
        for (int s = 0; s < B && p0 + s < t->n_pairs; s++) {
            double ll = 0.0;
            for (int pos = from[s]; pos < to[s]; pos++) ll -= m->row_losses[(size_t)s * T + pos];
            loglik[p0 + s] = ll;
        }
    }
    free(from);
    free(to);
}

void bench_accuracy(const BenchTask *t, const double *loglik, double *acc, double *acc_norm) {
    int right = 0, right_norm = 0;
    for (int i = 0; i < t->n_items; i++) {
        int best = -1, best_norm = -1;
        for (int j = t->first[i]; j < t->first[i + 1]; j++) {
            if (best < 0 || loglik[j] > loglik[best]) best = j;
            if (best_norm < 0 || loglik[j] / t->cont_bytes[j] > loglik[best_norm] / t->cont_bytes[best_norm])
                best_norm = j;
        }
        right += best - t->first[i] == t->gold[i];
        right_norm += best_norm - t->first[i] == t->gold[i];
    }
    *acc = (double)right / t->n_items;
    *acc_norm = (double)right_norm / t->n_items;
}

// --json OUT: the task, every party's accuracy (all: (P, 3) party, acc, acc_norm) and the log-likelihoods
// ll (n, n_pairs) of the n parties of this process.
static int bench_json(const Run *r, const BenchTask *t, const BenchOptions *o, int step, const double *all,
                      const double *ll, char *err, size_t len) {
    Json j = {0};
    json_open_object(&j);
    json_member_string(&j, "task", o->task);
    json_member_int(&j, "items", t->n_items);
    json_member_int(&j, "step", step);
    json_key(&j, "parties");
    json_open_array(&j);
    for (int q = 0; q < r->P; q++) {
        json_open_object(&j);
        json_member_int(&j, "party", (int)all[3 * q]);
        json_member_number(&j, "acc", all[3 * q + 1]);
        json_member_number(&j, "acc_norm", all[3 * q + 2]);
        json_close_object(&j);
    }
    json_close_array(&j);
    json_key(&j, "loglik");
    json_open_object(&j);
    for (int q = 0; q < r->n; q++) {
        char key[16];
        snprintf(key, sizeof key, "%d", r->party[q].party);
        json_key(&j, key);
        json_open_array(&j);
        for (int i = 0; i < t->n_items; i++) {
            json_open_array(&j);
            for (int c = t->first[i]; c < t->first[i + 1]; c++) json_number(&j, ll[(size_t)q * t->n_pairs + c]);
            json_close_array(&j);
        }
        json_close_array(&j);
    }
    json_close_object(&j);
    json_close_object(&j);
    json_end_line(&j);
    return json_write_option(&j, "--json", o->json, err, len);
}

int bench_run(const Config *c, Comm *comm, const RunOptions *ro, const BenchOptions *o) {
    Run run, *r = &run;
    run_open(r, c, comm, ro, 1);
    int step = run_load_checkpoint(r, ro->checkpoint), P = r->P;
    BenchTask t;
    char err[2048] = "";
    comm_stop_if_failed(comm, bench_load(&t, o->task, r->tok, err, sizeof err), err);
    double *ll = mallocCheck(sizeof(double) * (size_t)t.n_pairs * r->n),
           *all = mallocCheck(sizeof(double) * 3 * (size_t)P);
    for (int q = 0; q < r->n; q++) {
        Token *tok, *tgt;
        Model *m = run_party_model(r, q, &tok, &tgt);
        bench_score(m, &t, tok, tgt, ll + (size_t)q * t.n_pairs);
        run_party_done(r, m);
        double acc, acc_norm;
        bench_accuracy(&t, ll + (size_t)q * t.n_pairs, &acc, &acc_norm);
        double mine[3] = {r->party[q].party, acc, acc_norm};
        memcpy(all + 3 * (size_t)q, mine, sizeof mine);
    }
    run_gather_rows(r, all, 3);
    int rc = 0;
    if (comm->rank == 0) {
        for (int q = 0; q < P; q++)
            printf("party %d: acc %.4f acc_norm %.4f (%d items of %s), step %d\n", (int)all[3 * q], all[3 * q + 1],
                   all[3 * q + 2], t.n_items, o->task, step);
        if (o->json) rc = bench_json(r, &t, o, step, all, ll, err, sizeof err);
    }
    free(ll);
    free(all);
    bench_free(&t);
    if (rc) fprintf(stderr, "pcmoe: error: %s\n", err);
    run_close(r);
    return rc ? 1 : 0;
}
