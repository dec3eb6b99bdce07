// tokenizer.c: tokenizer.json's BPE tokenizers (see tokenizer.h). JSON by Jansson, regexes by PCRE2, NFC by
// utf8proc.
#define _GNU_SOURCE // memmem
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <jansson.h>  // json_load_file
#include <pcre2.h>    // pcre2_compile, pcre2_match
#include <stdint.h>   // uint32_t, uint64_t
#include <stdio.h>    // snprintf
#include <stdlib.h>   // malloc, free
#include <string.h>   // memcpy, strcmp
#include <utf8proc.h> // utf8proc_NFC

#include "util.h"     // error_set, mallocCheck, fail

#define TOK_MAX_STAGES 8
#define TOK_CACHE_WORD 128     // words up to this many bytes are cached
#define TOK_CACHE_MAX (1 << 20) // cached words before the cache starts afresh
#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

// ---------------------------------------------------------------------------------------------------
// Hash maps: strings to ids, id pairs to merges.

typedef struct {
    char *key;   // (NULL: empty slot)
    int len, value;
} StrSlot;

typedef struct {
    StrSlot *slot;
    size_t cap, n; // cap a power of two
} StrMap;

static uint64_t hash_bytes(const char *s, size_t n) { // FNV-1a
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static void strmap_free(StrMap *m) {
    for (size_t i = 0; i < m->cap; i++) free(m->slot[i].key);
    free(m->slot);
    memset(m, 0, sizeof *m);
}

static StrSlot *strmap_find(const StrMap *m, const char *s, size_t n) {
    if (!m->cap) return NULL;
    for (size_t i = hash_bytes(s, n) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        StrSlot *e = &m->slot[i];
        if (!e->key || ((size_t)e->len == n && !memcmp(e->key, s, n))) return e;
    }
}

static int strmap_get(const StrMap *m, const char *s, size_t n) {
    const StrSlot *e = strmap_find(m, s, n);
    return e && e->key ? e->value : -1;
}

static void strmap_put(StrMap *m, const char *s, size_t n, int value) {
    if (2 * (m->n + 1) > m->cap) { // grow to keep the load under 1/2
        StrMap big = {callocCheck(m->cap ? 2 * m->cap : 1024, sizeof(StrSlot)), m->cap ? 2 * m->cap : 1024, m->n};
        for (size_t i = 0; i < m->cap; i++)
            if (m->slot[i].key) *strmap_find(&big, m->slot[i].key, (size_t)m->slot[i].len) = m->slot[i];
        free(m->slot);
        *m = big;
    }
    StrSlot *e = strmap_find(m, s, n);
    if (!e->key) {
        e->key = mallocCheck(n + 1);
        memcpy(e->key, s, n);
        e->key[n] = '\0';
        e->len = (int)n;
        m->n++;
    }
    e->value = value;
}

typedef struct {
    uint64_t key; // (a + 1) << 32 | (b + 1); 0: empty
    int rank, id;
} PairSlot;

typedef struct {
    PairSlot *slot;
    size_t cap, n;
} PairMap;

static PairSlot *pairmap_find(const PairMap *m, uint64_t key) {
    for (size_t i = (key * 0x9E3779B97F4A7C15ULL) >> 20 & (m->cap - 1);; i = (i + 1) & (m->cap - 1))
        if (m->slot[i].key == key || !m->slot[i].key) return &m->slot[i];
}

static uint64_t pair_key(int a, int b) { return (uint64_t)(a + 1) << 32 | (uint64_t)(b + 1); }

// ---------------------------------------------------------------------------------------------------
// The tokenizer.

typedef enum { NORM_NFC, NORM_PREPEND, NORM_REPLACE } NormKind;
typedef enum { PRE_BYTELEVEL, PRE_SPLIT, PRE_METASPACE } PreKind;
typedef enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE } DecKind;
typedef enum { PREPEND_NEVER, PREPEND_FIRST, PREPEND_ALWAYS } PrependScheme; // Metaspace's prepend_scheme

typedef struct {
    int kind;
    char *a, *b;    // Prepend: a; Replace: a by b
} Normalizer;

typedef struct {
    int kind;
    pcre2_code *re; // Split's pattern, or ByteLevel's GPT-2 pattern (use_regex); NULL: no split
    int add_prefix_space;
    char *rep;      // Metaspace: the replacement of ' ' (U+2581 "▁" as the hub ships it)
    int prepend;    // Metaspace: PrependScheme
    int split;      // Metaspace: split before each replacement (the piece starts with it)
    char *scratch;  // this stage's output (the byte-level mapping, Metaspace's replacement), grown
    size_t cap;
} PreTok;

typedef struct {
    int kind;
    char *a, *b;    // Replace: a by b; Strip: a is the content; Metaspace: a is the replacement
    int start, stop; // Strip; Metaspace: start is the PrependScheme
} Decoder;

typedef struct {
    char *text;
    int len, id, normalized;
} Added;

typedef struct { // a pending merge of the pair starting at symbol pos
    int rank, pos, right, id;
} Merge;

struct Tokenizer {
    char path[1024];
    StrMap vocab;             // token text -> id
    char **text;              // (n_ids) id -> its text (vocabulary or added), NULL for a gap
    int n_ids;
    PairMap merges;           // (left id, right id) -> rank, merged id
    int byte_fallback, fuse_unk, unk, ignore_merges, byte_ids[256];
    int byte_level;           // a ByteLevel pre-tokenizer maps the bytes: its decoder maps them back
    int at_start;             // encoding: nothing of the text has been emitted yet (Metaspace's "first")
    int split_meta;           // no token holds "▁" past its first character, so no merge crosses the boundary
                              // before a "▁": a word is merged piece by piece (SentencePiece vocabularies)
    Normalizer norm[TOK_MAX_STAGES];
    int n_norm;
    PreTok pre[TOK_MAX_STAGES];
    int n_pre;
    Decoder dec[TOK_MAX_STAGES];
    int n_dec;
    Added *added;             // the added tokens, longest first
    int n_added;
    uint32_t byte_char[256];  // GPT-2's byte -> printable code point
    int char_byte[324];       // its inverse (code points < 324), -1 elsewhere
    pcre2_match_data *md;
    StrMap cache;             // word -> index into cache_ids (start); cache_len holds the count there
    int *cache_ids;
    size_t cache_n, cache_cap;
    // scratch of one word's merge
    int *sym, *prev, *next;
    Merge *heap;
    size_t sym_cap, heap_cap;
    char *norm_buf[3];        // normalization's two buffers, and NFC's scratch
    size_t norm_cap[3];
};

// GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the others for 256 + n.
static void byte_map_init(Tokenizer *t) {
    int n = 0;
    for (int c = 0; c < 324; c++) t->char_byte[c] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_char[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        t->char_byte[t->byte_char[b]] = b;
    }
}

// UTF-8: the length of the sequence starting with byte c (1 for a stray byte).
static int utf8_len(unsigned char c) { return c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1; }

static int utf8_put(char *out, uint32_t cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | (cp >> 6 & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static void grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    char *b = realloc(*buf, c);
    if (!b) fail("out of memory in the tokenizer");
    *buf = b;
    *cap = c;
}

int tokenizer_vocab_size(const Tokenizer *t) { return t->n_ids; }

int tokenizer_id(const Tokenizer *t, const char *text) {
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].text, text)) return t->added[i].id;
    return strmap_get(&t->vocab, text, strlen(text));
}

// ---------------------------------------------------------------------------------------------------
// Loading tokenizer.json.

static char *dup_string(const char *s) {
    size_t n = strlen(s);
    char *d = mallocCheck(n + 1);
    memcpy(d, s, n + 1);
    return d;
}

static void id_text_set(Tokenizer *t, int id, const char *s) {
    if (id >= t->n_ids) {
        char **nt = realloc(t->text, sizeof(char *) * (size_t)(id + 1));
        if (!nt) fail("out of memory in the tokenizer");
        for (int i = t->n_ids; i <= id; i++) nt[i] = NULL;
        t->text = nt;
        t->n_ids = id + 1;
    }
    if (!t->text[id]) t->text[id] = dup_string(s);
}

// "{a, b}" of one merge: "a b" (split at the first space) or ["a", "b"].
static int merge_parts(json_t *m, char *a, char *b, size_t n) {
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        snprintf(a, n, "%s", json_string_value(json_array_get(m, 0)));
        snprintf(b, n, "%s", json_string_value(json_array_get(m, 1)));
        return 0;
    }
    const char *s = json_string_value(m), *sp = s ? strchr(s, ' ') : NULL;
    if (!sp || (size_t)(sp - s) >= n) return 2;
    snprintf(a, n, "%.*s", (int)(sp - s), s);
    snprintf(b, n, "%s", sp + 1);
    return 0;
}

static int merges_load(Tokenizer *t, json_t *merges, char *err, size_t len) {
    size_t n = json_array_size(merges);
    t->merges.cap = 1024;
    while (t->merges.cap < 2 * n + 2) t->merges.cap *= 2;
    t->merges.slot = callocCheck(t->merges.cap, sizeof(PairSlot));
    char a[512], b[512], ab[1024];
    for (size_t r = 0; r < n; r++) {
        if (merge_parts(json_array_get(merges, r), a, b, sizeof a))
            return error_set(err, len, "%s: model.merges[%zu]: neither \"a b\" nor [\"a\", \"b\"]", t->path, r);
        snprintf(ab, sizeof ab, "%s%s", a, b);
        int ia = strmap_get(&t->vocab, a, strlen(a)), ib = strmap_get(&t->vocab, b, strlen(b)),
            iab = strmap_get(&t->vocab, ab, strlen(ab));
        if (ia < 0 || ib < 0 || iab < 0)
            return error_set(err, len, "%s: model.merges[%zu] = \"%s %s\": %s is not in model.vocab", t->path, r, a, b,
                             ia < 0 ? a : ib < 0 ? b : ab);
        PairSlot *p = pairmap_find(&t->merges, pair_key(ia, ib));
        if (p->key) continue; // (a pair listed twice keeps its first rank)
        *p = (PairSlot){pair_key(ia, ib), (int)r, iab};
        t->merges.n++;
    }
    return 0;
}

static int model_load(Tokenizer *t, json_t *m, char *err, size_t len) {
    const char *type = json_string_value(json_object_get(m, "type"));
    if (!type || strcmp(type, "BPE"))
        return error_set(err, len, "%s: model.type = %s: only BPE is supported", t->path, type ? type : "(none)");
    static const char *const unsupported[] = {"continuing_subword_prefix", "end_of_word_suffix", "dropout"};
    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(m, unsupported[i]);
        if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0))
            return error_set(err, len, "%s: model.%s is set: not supported", t->path, unsupported[i]);
    }
    json_t *vocab = json_object_get(m, "vocab"), *merges = json_object_get(m, "merges");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return error_set(err, len, "%s: model: no \"vocab\" object or no \"merges\" array", t->path);
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= 262144)
            return error_set(err, len, "%s: model.vocab[\"%.40s\"]: not an id in [0, 262144)", t->path, key);
        strmap_put(&t->vocab, key, strlen(key), (int)json_integer_value(v));
        id_text_set(t, (int)json_integer_value(v), key);
    }
    t->byte_fallback = json_is_true(json_object_get(m, "byte_fallback"));
    t->fuse_unk = json_is_true(json_object_get(m, "fuse_unk"));
    t->ignore_merges = json_is_true(json_object_get(m, "ignore_merges"));
    const char *unk = json_string_value(json_object_get(m, "unk_token"));
    t->unk = unk ? strmap_get(&t->vocab, unk, strlen(unk)) : -1;
    if (unk && t->unk < 0) return error_set(err, len, "%s: model.unk_token = %s: not in model.vocab", t->path, unk);
    t->split_meta = strmap_get(&t->vocab, "\xE2\x96\x81", 3) >= 0;
    for (size_t i = 0; i < t->vocab.cap && t->split_meta; i++) {
        const StrSlot *e = &t->vocab.slot[i];
        if (e->key && e->len > 3 && memmem(e->key + 1, (size_t)e->len - 1, "\xE2\x96\x81", 3)) t->split_meta = 0;
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = strmap_get(&t->vocab, name, strlen(name));
    }
    return merges_load(t, merges, err, len);
}

static int cmp_added(const void *a, const void *b) { return ((const Added *)b)->len - ((const Added *)a)->len; }

static int added_load(Tokenizer *t, json_t *list, char *err, size_t len) {
    size_t n = json_array_size(list);
    t->added = callocCheck(n ? n : 1, sizeof(Added));
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(list, i), *id = json_object_get(a, "id");
        const char *text = json_string_value(json_object_get(a, "content"));
        if (!text || !*text || !json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= 262144)
            return error_set(err, len, "%s: added_tokens[%zu]: no content or no id in [0, 262144)", t->path, i);
        static const char *const flags[] = {"lstrip", "rstrip", "single_word"};
        for (int f = 0; f < 3; f++)
            if (json_is_true(json_object_get(a, flags[f])))
                return error_set(err, len, "%s: added_tokens[%zu] (%.40s): %s = true is not supported", t->path, i,
                                 text, flags[f]);
        Added *d = &t->added[t->n_added++];
        d->text = dup_string(text);
        d->len = (int)strlen(text);
        d->id = (int)json_integer_value(id);
        d->normalized = json_is_true(json_object_get(a, "normalized"));
        id_text_set(t, d->id, text);
    }
    qsort(t->added, (size_t)t->n_added, sizeof(Added), cmp_added); // longest first: leftmost-longest matching
    return 0;
}

// A "pattern": {"String": s} (taken literally) or {"Regex": r}; returns the PCRE2 source and whether literal.
static const char *pattern_of(json_t *p, int *literal) {
    const char *s = json_string_value(json_object_get(p, "String"));
    *literal = s != NULL;
    return s ? s : json_string_value(json_object_get(p, "Regex"));
}

static int normalizer_load(Tokenizer *t, json_t *n, const char *where, char *err, size_t len) {
    if (!n || json_is_null(n)) return 0;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (type && !strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "normalizers");
        for (size_t i = 0; i < json_array_size(list); i++)
            if (normalizer_load(t, json_array_get(list, i), where, err, len)) return 2;
        return 0;
    }
    if (t->n_norm == TOK_MAX_STAGES) return error_set(err, len, "%s: %s: too many stages", t->path, where);
    Normalizer *d = &t->norm[t->n_norm];
    int literal = 0;
    if (type && !strcmp(type, "NFC")) d->kind = NORM_NFC;
    else if (type && !strcmp(type, "Prepend") && json_is_string(json_object_get(n, "prepend"))) {
        d->kind = NORM_PREPEND;
        d->a = dup_string(json_string_value(json_object_get(n, "prepend")));
    } else if (type && !strcmp(type, "Replace") && pattern_of(json_object_get(n, "pattern"), &literal) && literal &&
               json_is_string(json_object_get(n, "content"))) {
        d->kind = NORM_REPLACE;
        d->a = dup_string(pattern_of(json_object_get(n, "pattern"), &literal));
        d->b = dup_string(json_string_value(json_object_get(n, "content")));
        if (!*d->a) return error_set(err, len, "%s: %s: Replace of an empty string", t->path, where);
    } else
        return error_set(err, len, "%s: %s.type = %s: pcmoe computes NFC, Prepend, Replace (of a string) and Sequence",
                         t->path, where, type ? type : "(none)");
    t->n_norm++;
    return 0;
}

static int regex_compile(Tokenizer *t, PreTok *p, const char *src, int literal, char *err, size_t len) {
    int code;
    PCRE2_SIZE at;
    p->re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0),
                          &code, &at, NULL);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return error_set(err, len, "%s: pre_tokenizer pattern %.60s: %s (at %zu)", t->path, src, (char *)msg,
                         (size_t)at);
    }
    pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE); // (when JIT is not available, matching is interpreted)
    return 0;
}

// Metaspace's replacement (one character) and prepend_scheme, or the older add_prefix_space (true: always), of
// the pre-tokenizer or decoder p (`what`). Returns 0, or 2 with err set.
static int metaspace_load(Tokenizer *t, json_t *p, char **rep, int *prepend, const char *what, char *err,
                          size_t len) {
    const char *r = json_string_value(json_object_get(p, "replacement"));
    const char *scheme = json_string_value(json_object_get(p, "prepend_scheme"));
    if (!r || !*r || utf8_len((unsigned char)*r) != (int)strlen(r))
        return error_set(err, len, "%s: %s Metaspace: replacement = %s: pcmoe computes one character", t->path, what,
                         r ? r : "(none)");
    if (scheme && !strcmp(scheme, "always")) *prepend = PREPEND_ALWAYS;
    else if (scheme && !strcmp(scheme, "first")) *prepend = PREPEND_FIRST;
    else if (scheme && !strcmp(scheme, "never")) *prepend = PREPEND_NEVER;
    else if (!scheme) *prepend = json_is_false(json_object_get(p, "add_prefix_space")) ? PREPEND_NEVER : PREPEND_ALWAYS;
    else
        return error_set(err, len, "%s: %s Metaspace: prepend_scheme = %s: always, first or never", t->path, what,
                         scheme);
    *rep = dup_string(r);
    return 0;
}

static int pre_load(Tokenizer *t, json_t *p, char *err, size_t len) {
    if (!p || json_is_null(p)) return 0;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (type && !strcmp(type, "Sequence")) {
        json_t *list = json_object_get(p, "pretokenizers");
        for (size_t i = 0; i < json_array_size(list); i++)
            if (pre_load(t, json_array_get(list, i), err, len)) return 2;
        return 0;
    }
    if (t->n_pre == TOK_MAX_STAGES) return error_set(err, len, "%s: pre_tokenizer: too many stages", t->path);
    PreTok *d = &t->pre[t->n_pre];
    int literal = 0;
    if (type && !strcmp(type, "ByteLevel")) {
        d->kind = PRE_BYTELEVEL;
        d->add_prefix_space = json_is_true(json_object_get(p, "add_prefix_space"));
        t->byte_level = 1;
        json_t *use = json_object_get(p, "use_regex");
        if ((!use || json_is_true(use)) && regex_compile(t, d, GPT2_PATTERN, 0, err, len)) return 2;
    } else if (type && !strcmp(type, "Split")) {
        const char *behavior = json_string_value(json_object_get(p, "behavior"));
        const char *src = pattern_of(json_object_get(p, "pattern"), &literal);
        if (!src || !behavior || strcmp(behavior, "Isolated") || json_is_true(json_object_get(p, "invert")))
            return error_set(err, len, "%s: pre_tokenizer Split: behavior = %s%s: pcmoe computes Isolated, not "
                             "inverted", t->path, behavior ? behavior : "(none)",
                             json_is_true(json_object_get(p, "invert")) ? ", invert" : "");
        d->kind = PRE_SPLIT;
        if (regex_compile(t, d, src, literal, err, len)) return 2;
    } else if (type && !strcmp(type, "Metaspace")) {
        d->kind = PRE_METASPACE;
        if (metaspace_load(t, p, &d->rep, &d->prepend, "pre_tokenizer", err, len)) return 2;
        d->split = !json_is_false(json_object_get(p, "split"));
    } else
        return error_set(err, len, "%s: pre_tokenizer.type = %s: pcmoe computes ByteLevel, Split, Metaspace and "
                         "Sequence", t->path, type ? type : "(none)");
    t->n_pre++;
    return 0;
}

static int decoder_load(Tokenizer *t, json_t *p, char *err, size_t len) {
    if (!p || json_is_null(p)) return 0;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (type && !strcmp(type, "Sequence")) {
        json_t *list = json_object_get(p, "decoders");
        for (size_t i = 0; i < json_array_size(list); i++)
            if (decoder_load(t, json_array_get(list, i), err, len)) return 2;
        return 0;
    }
    if (t->n_dec == TOK_MAX_STAGES) return error_set(err, len, "%s: decoder: too many stages", t->path);
    Decoder *d = &t->dec[t->n_dec];
    int literal = 0;
    const char *content = json_string_value(json_object_get(p, "content"));
    if (type && !strcmp(type, "ByteLevel")) d->kind = DEC_BYTELEVEL;
    else if (type && !strcmp(type, "ByteFallback")) d->kind = DEC_BYTEFALLBACK;
    else if (type && !strcmp(type, "Fuse")) d->kind = DEC_FUSE;
    else if (type && !strcmp(type, "Replace") && content && pattern_of(json_object_get(p, "pattern"), &literal) &&
             literal && *pattern_of(json_object_get(p, "pattern"), &literal)) {
        d->kind = DEC_REPLACE;
        d->a = dup_string(pattern_of(json_object_get(p, "pattern"), &literal));
        d->b = dup_string(content);
    } else if (type && !strcmp(type, "Strip") && content && utf8_len((unsigned char)*content) == (int)strlen(content)) {
        d->kind = DEC_STRIP;
        d->a = dup_string(content);
        d->start = (int)json_integer_value(json_object_get(p, "start"));
        d->stop = (int)json_integer_value(json_object_get(p, "stop"));
    } else if (type && !strcmp(type, "Metaspace")) {
        d->kind = DEC_METASPACE;
        if (metaspace_load(t, p, &d->a, &d->start, "decoder", err, len)) return 2;
    } else
        return error_set(err, len, "%s: decoder.type = %s: pcmoe computes ByteLevel, Replace (of a string), "
                         "ByteFallback, Fuse, Strip (of one character), Metaspace and Sequence", t->path,
                         type ? type : "(none)");
    t->n_dec++;
    return 0;
}

Tokenizer *tokenizer_load(const char *path, char *err, size_t len) {
    Tokenizer *t = callocCheck(1, sizeof *t);
    snprintf(t->path, sizeof t->path, "%s", path);
    byte_map_init(t);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    int rc = 0;
    if (!root) rc = error_set(err, len, "%s: not a JSON file: %s (line %d)", path, je.text, je.line);
    else if (!json_is_object(root) || !json_is_object(json_object_get(root, "model")))
        rc = error_set(err, len, "%s: no \"model\" object: not a tokenizer.json", path);
    if (!rc) rc = model_load(t, json_object_get(root, "model"), err, len);
    if (!rc) rc = added_load(t, json_object_get(root, "added_tokens"), err, len);
    if (!rc) rc = normalizer_load(t, json_object_get(root, "normalizer"), "normalizer", err, len);
    if (!rc) rc = pre_load(t, json_object_get(root, "pre_tokenizer"), err, len);
    if (!rc) rc = decoder_load(t, json_object_get(root, "decoder"), err, len);
    json_decref(root);
    if (rc) { tokenizer_free(t); return NULL; }
    t->md = pcre2_match_data_create(4, NULL);
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    strmap_free(&t->vocab);
    strmap_free(&t->cache);
    for (int i = 0; i < t->n_ids; i++) free(t->text[i]);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].text);
    for (int i = 0; i < t->n_norm; i++) { free(t->norm[i].a); free(t->norm[i].b); }
    for (int i = 0; i < t->n_pre; i++) { pcre2_code_free(t->pre[i].re); free(t->pre[i].rep); free(t->pre[i].scratch); }
    for (int i = 0; i < t->n_dec; i++) { free(t->dec[i].a); free(t->dec[i].b); }
    if (t->md) pcre2_match_data_free(t->md);
    free(t->text); free(t->added); free(t->merges.slot); free(t->cache_ids);
    free(t->sym); free(t->prev); free(t->next); free(t->heap);
    free(t->norm_buf[0]); free(t->norm_buf[1]); free(t->norm_buf[2]);
    free(t);
}

// ---------------------------------------------------------------------------------------------------
// Encoding.

typedef struct { // the ids being produced
    Token **ids;
    size_t *count, *cap;
} Out;

static void out_push(Out *o, int id) {
    if (*o->count == *o->cap) {
        size_t c = *o->cap ? 2 * *o->cap : 1024;
        Token *n = realloc(*o->ids, sizeof(Token) * c);
        if (!n) fail("out of memory in the tokenizer");
        *o->ids = n;
        *o->cap = c;
    }
    (*o->ids)[(*o->count)++] = (Token)id;
}

static int merge_before(const Merge *a, const Merge *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(Tokenizer *t, size_t *n, Merge m) {
    if (*n == t->heap_cap) {
        t->heap_cap = t->heap_cap ? 2 * t->heap_cap : 256;
        t->heap = realloc(t->heap, sizeof(Merge) * t->heap_cap);
        if (!t->heap) fail("out of memory in the tokenizer");
    }
    size_t i = (*n)++;
    for (; i > 0 && merge_before(&m, &t->heap[(i - 1) / 2]); i = (i - 1) / 2) t->heap[i] = t->heap[(i - 1) / 2];
    t->heap[i] = m;
}

static Merge heap_pop(Tokenizer *t, size_t *n) {
    Merge top = t->heap[0], last = t->heap[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && merge_before(&t->heap[c + 1], &t->heap[c])) c++;
        if (!merge_before(&t->heap[c], &last)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (*n) t->heap[i] = last;
    return top;
}

// The merge of symbols l and r (adjacent) onto the heap, if the pair has one.
static void pair_offer(Tokenizer *t, size_t *hn, int l, int r) {
    if (l < 0 || r < 0) return;
    PairSlot *p = pairmap_find(&t->merges, pair_key(t->sym[l], t->sym[r]));
    if (p->key) heap_push(t, hn, (Merge){p->rank, l, r, p->id});
}

// The word's characters as symbols: their ids, else their bytes' <0xXX> tokens (byte_fallback), else unk
// (consecutive ones fused with fuse_unk), else nothing. Returns the count.
static int word_symbols(Tokenizer *t, const char *s, size_t n) {
    if (n > t->sym_cap) {
        t->sym_cap = n;
        t->sym = realloc(t->sym, sizeof(int) * n);
        t->prev = realloc(t->prev, sizeof(int) * n);
        t->next = realloc(t->next, sizeof(int) * n);
        if (!t->sym || !t->prev || !t->next) fail("out of memory in the tokenizer");
    }
    int k = 0, last_unk = 0;
    for (size_t i = 0; i < n;) {
        size_t l = (size_t)utf8_len((unsigned char)s[i]);
        if (i + l > n) l = n - i;
        int id = strmap_get(&t->vocab, s + i, l), bytes = t->byte_fallback;
        for (size_t j = 0; id < 0 && bytes && j < l; j++) bytes = t->byte_ids[(unsigned char)s[i + j]] >= 0;
        if (id >= 0) t->sym[k++] = id;
        else if (bytes)
            for (size_t j = 0; j < l; j++) t->sym[k++] = t->byte_ids[(unsigned char)s[i + j]];
        else if (t->unk >= 0 && !(t->fuse_unk && last_unk)) t->sym[k++] = t->unk;
        last_unk = id < 0 && !bytes && t->unk >= 0;
        i += l;
    }
    return k;
}

// BPE of one word: its symbols merged, lowest rank first, leftmost first; appends the ids.
static void word_merge(Tokenizer *t, const char *s, size_t n, Out *o) {
    int k = word_symbols(t, s, n);
    size_t hn = 0;
    for (int j = 0; j < k; j++) { t->prev[j] = j - 1; t->next[j] = j + 1 < k ? j + 1 : -1; }
    for (int j = 0; j + 1 < k; j++) pair_offer(t, &hn, j, j + 1);
    while (hn) {
        Merge m = heap_pop(t, &hn);
        if (t->sym[m.pos] < 0 || t->next[m.pos] != m.right) continue; // (a stale entry)
        PairSlot *p = pairmap_find(&t->merges, pair_key(t->sym[m.pos], t->sym[m.right]));
        if (!p->key || p->id != m.id) continue;
        t->sym[m.pos] = m.id;
        t->sym[m.right] = -1;
        t->next[m.pos] = t->next[m.right];
        if (t->next[m.pos] >= 0) t->prev[t->next[m.pos]] = m.pos;
        pair_offer(t, &hn, t->prev[m.pos], m.pos);
        pair_offer(t, &hn, m.pos, t->next[m.pos]);
    }
    for (int j = k ? 0 : -1; j >= 0; j = t->next[j]) out_push(o, t->sym[j]);
}

// One word's ids, through the cache of short words.
static void word_encode(Tokenizer *t, const char *s, size_t n, Out *o) {
    if (!n) return;
    if (t->ignore_merges) {
        int id = strmap_get(&t->vocab, s, n);
        if (id >= 0) { out_push(o, id); return; }
    }
    if (n > TOK_CACHE_WORD) { word_merge(t, s, n, o); return; }
    StrSlot *e = strmap_find(&t->cache, s, n);
    if (e && e->key) { // value: the start in cache_ids, whose first int is the count
        const int *c = t->cache_ids + e->value;
        for (int i = 1; i <= c[0]; i++) out_push(o, c[i]);
        return;
    }
    size_t before = *o->count;
    word_merge(t, s, n, o);
    size_t got = *o->count - before;
    if (t->cache.n >= TOK_CACHE_MAX) { strmap_free(&t->cache); t->cache_n = 0; }
    if (t->cache_n + got + 1 > t->cache_cap) {
        t->cache_cap = (t->cache_n + got + 1) * 2;
        t->cache_ids = realloc(t->cache_ids, sizeof(int) * t->cache_cap);
        if (!t->cache_ids) fail("out of memory in the tokenizer");
    }
    strmap_put(&t->cache, s, n, (int)t->cache_n);
    t->cache_ids[t->cache_n++] = (int)got;
    for (size_t i = 0; i < got; i++) t->cache_ids[t->cache_n++] = (int)(*o->ids)[before + i];
}

static void pre_stage(Tokenizer *t, int stage, const char *s, size_t n, Out *o);

// ByteLevel's mapping of piece s: each byte as its printable character, into the stage's scratch.
static void byte_level_map(Tokenizer *t, PreTok *p, int next, const char *s, size_t n, Out *o) {
    grow(&p->scratch, &p->cap, 2 * n + 1);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += (size_t)utf8_put(p->scratch + m, t->byte_char[(unsigned char)s[i]]);
    pre_stage(t, next, p->scratch, m, o);
}

// One piece that stage `stage` made: byte-mapped first (ByteLevel, map = 1), then through the next stage.
static void piece_next(Tokenizer *t, int stage, int map, const char *s, size_t n, Out *o) {
    if (map) byte_level_map(t, &t->pre[stage], stage + 1, s, n, o);
    else pre_stage(t, stage + 1, s, n, o);
}

// The pieces of s (n bytes) for stage's pattern re, Isolated: each match and each gap between matches, in
// order, each through piece_next.
static void split_isolated(Tokenizer *t, pcre2_code *re, int stage, int map, const char *s, size_t n, Out *o) {
    size_t start = 0, off = 0;
    while (off < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, t->md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { off = ms + (size_t)utf8_len((unsigned char)s[ms]); continue; } // (an empty match: none)
        if (ms > start) piece_next(t, stage, map, s + start, ms - start, o);
        piece_next(t, stage, map, s + ms, me - ms, o);
        start = off = me;
    }
    if (start < n) piece_next(t, stage, map, s + start, n - start, o);
}

// Metaspace on piece s: every ' ' as the replacement, the replacement put first unless the piece starts with it
// (always; first: only where nothing of the text came before), then with split the pieces that each start at a
// replacement, through the next stage.
static void metaspace(Tokenizer *t, PreTok *p, int stage, const char *s, size_t n, Out *o) {
    size_t r = strlen(p->rep), m = r; // (the first r bytes: room for the prepended replacement)
    grow(&p->scratch, &p->cap, r * (n + 1) + 1);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(p->scratch + m, p->rep, r); m += r; }
        else p->scratch[m++] = s[i];
    }
    int first = t->at_start;
    t->at_start = 0;
    size_t from = r;
    if ((p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && first)) &&
        (m - r < r || memcmp(p->scratch + r, p->rep, r))) {
        memcpy(p->scratch, p->rep, r);
        from = 0;
    }
    const char *x = p->scratch;
    size_t start = from;
    for (size_t i = from + 1; p->split && i + r <= m; i++)
        if (!memcmp(x + i, p->rep, r)) { pre_stage(t, stage + 1, x + start, i - start, o); start = i; }
    if (start < m) pre_stage(t, stage + 1, x + start, m - start, o);
}

// Pre-tokenizer `stage` on piece s; past the last stage, the piece is a word.
static void pre_stage(Tokenizer *t, int stage, const char *s, size_t n, Out *o) {
    if (stage == t->n_pre && t->split_meta) { // (the same merges, piece by piece: each piece cached)
        size_t start = 0;
        for (size_t i = 1; i + 3 <= n; i++)
            if (!memcmp(s + i, "\xE2\x96\x81", 3)) { word_encode(t, s + start, i - start, o); start = i; }
        word_encode(t, s + start, n - start, o);
        return;
    }
    if (stage == t->n_pre) { word_encode(t, s, n, o); return; }
    PreTok *p = &t->pre[stage];
    if (p->kind == PRE_SPLIT) { split_isolated(t, p->re, stage, 0, s, n, o); return; }
    if (p->kind == PRE_METASPACE) { metaspace(t, p, stage, s, n, o); return; }
    // ByteLevel: a leading space (add_prefix_space), GPT-2's split (use_regex), then the byte mapping. The
    // split's pieces are mapped one by one: byte_level_map writes this stage's scratch, which the split's
    // input must not be, so the prefixed piece is built in a buffer of its own.
    char *own = NULL;
    if (p->add_prefix_space && (n == 0 || s[0] != ' ')) {
        own = mallocCheck(n + 1);
        own[0] = ' ';
        memcpy(own + 1, s, n);
        s = own;
        n++;
    }
    if (p->re) split_isolated(t, p->re, stage, 1, s, n, o);
    else byte_level_map(t, p, stage + 1, s, n, o);
    free(own);
}

// NFC of s (n bytes) into *dst: ASCII is copied, and each run of other characters is normalized together with
// the ASCII character before it (which a combining mark may compose with; nothing composes into an ASCII
// character that follows). Returns the bytes written.
static size_t nfc(Tokenizer *t, const char *s, size_t n, char **dst, size_t *cap) {
    size_t m = 0;
    grow(dst, cap, n + 1);
    for (size_t i = 0; i < n;) {
        if (!((unsigned char)s[i] & 0x80) && (i + 1 == n || !((unsigned char)s[i + 1] & 0x80))) {
            (*dst)[m++] = s[i++];
            continue;
        }
        size_t j = i + 1;
        while (j < n && ((unsigned char)s[j] & 0x80)) j++;
        grow(&t->norm_buf[2], &t->norm_cap[2], j - i + 1);
        memcpy(t->norm_buf[2], s + i, j - i);
        t->norm_buf[2][j - i] = '\0';
        utf8proc_uint8_t *r = utf8proc_NFC((const utf8proc_uint8_t *)t->norm_buf[2]);
        if (!r) fail("out of memory in NFC normalisation");
        size_t rn = strlen((const char *)r);
        grow(dst, cap, m + rn + (n - j) + 1);
        memcpy(*dst + m, r, rn);
        m += rn;
        free(r);
        i = j;
    }
    return m;
}

// The normalizers on s (n bytes): the result in one of t's two buffers (*out, *out_n). NFC leaves ASCII as it is.
static void normalize(Tokenizer *t, const char *s, size_t n, const char **out, size_t *out_n) {
    int cur = 0;
    for (int i = 0; i < t->n_norm; i++) {
        const Normalizer *z = &t->norm[i];
        char **dst = &t->norm_buf[cur];
        size_t m = 0, *cap = &t->norm_cap[cur];
        if (z->kind == NORM_NFC) {
            size_t j = 0;
            while (j < n && !((unsigned char)s[j] & 0x80)) j++;
            if (j == n) continue; // ASCII
            m = nfc(t, s, n, dst, cap);
        } else if (z->kind == NORM_PREPEND) {
            if (!n) continue;
            size_t a = strlen(z->a);
            grow(dst, cap, a + n + 1);
            memcpy(*dst, z->a, a);
            memcpy(*dst + a, s, n);
            m = a + n;
        } else { // Replace every occurrence of a by b
            size_t a = strlen(z->a), b = strlen(z->b);
            grow(dst, cap, n * (b > a ? b / a + 1 : 1) + 1);
            for (size_t j = 0; j < n;) {
                if (j + a <= n && !memcmp(s + j, z->a, a)) { memcpy(*dst + m, z->b, b); m += b; j += a; }
                else (*dst)[m++] = s[j++];
            }
        }
        s = *dst;
        n = m;
        cur ^= 1;
    }
    *out = s;
    *out_n = n;
}

// The longest added token (of those whose `normalized` flag is normalized) that s starts with, or NULL.
static const Added *added_at(const Tokenizer *t, const char *s, size_t n, int normalized) {
    for (int i = 0; i < t->n_added; i++) {
        const Added *a = &t->added[i];
        if (a->normalized == normalized && (size_t)a->len <= n && a->text[0] == s[0] && !memcmp(a->text, s, a->len))
            return a;
    }
    return NULL;
}

static void added_split(Tokenizer *t, const char *s, size_t n, int normalized, Out *o);

// A gap between added tokens: pre-tokenized (normalized = 1), or normalized, then split at the normalized added
// tokens (0).
static void gap_encode(Tokenizer *t, const char *s, size_t n, int normalized, Out *o) {
    if (normalized) { pre_stage(t, 0, s, n, o); return; }
    const char *z;
    size_t zn;
    normalize(t, s, n, &z, &zn);
    char *copy = mallocCheck(zn + 1); // (normalize's buffers are reused by the next gap)
    memcpy(copy, z, zn);
    added_split(t, copy, zn, 1, o);
    free(copy);
}

// s split at the added tokens of `normalized`: each token's id; each gap through gap_encode.
static void added_split(Tokenizer *t, const char *s, size_t n, int normalized, Out *o) {
    size_t start = 0;
    for (size_t i = 0; i < n;) {
        const Added *a = t->n_added ? added_at(t, s + i, n - i, normalized) : NULL;
        if (!a) { i++; continue; }
        if (i > start) gap_encode(t, s + start, i - start, normalized, o);
        out_push(o, a->id);
        t->at_start = 0;
        i += (size_t)a->len;
        start = i;
    }
    if (start < n) gap_encode(t, s + start, n - start, normalized, o);
}

// The offset of the first byte of s that does not begin valid UTF-8, or n.
static size_t utf8_invalid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        int l = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!l || i + (size_t)l > n) return i;
        uint32_t cp = l == 1 ? c : c & (0x7F >> l);
        for (int j = 1; j < l; j++) {
            unsigned char d = (unsigned char)s[i + j];
            if ((d & 0xC0) != 0x80) return i;
            cp = cp << 6 | (d & 0x3F);
        }
        if ((l == 2 && cp < 0x80) || (l == 3 && cp < 0x800) || (l == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += (size_t)l;
    }
    return n;
}

int tokenizer_encode(Tokenizer *t, const char *text, size_t n, Token **ids, size_t *count, size_t *cap, char *err,
                     size_t len) {
    size_t bad = utf8_invalid(text, n);
    if (bad < n) return error_set(err, len, "not UTF-8 at byte %zu", bad);
    Out o = {ids, count, cap};
    t->at_start = 1;
    added_split(t, text, n, 0, &o);
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Decoding: the ids' texts through the decoders, as the tokenizers library runs them over the list of tokens.

typedef struct {
    char *s;
    size_t n, cap;
} Piece;

static void piece_add(Piece *p, const char *s, size_t n) {
    grow(&p->s, &p->cap, p->n + n + 1);
    memcpy(p->s + p->n, s, n);
    p->n += n;
    p->s[p->n] = '\0';
}

// The bytes as text, each byte that does not begin valid UTF-8 replaced by U+FFFD.
static void lossy_add(Piece *p, const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t ok = utf8_invalid(s + i, n - i);
        piece_add(p, s + i, ok);
        i += ok;
        if (i < n) { piece_add(p, "\xEF\xBF\xBD", 3); i++; }
    }
}

// ByteLevel: every token's characters as GPT-2's bytes (a token with a character outside the map keeps its
// own bytes); all tokens joined, as UTF-8 with replacement characters: one piece.
static int decode_byte_level(const Tokenizer *t, const Piece *in, int n, Piece *out) {
    Piece bytes = {0};
    for (int i = 0; i < n; i++) {
        size_t start = bytes.n, j = 0;
        int mapped = 1;
        while (j < in[i].n && mapped) {
            const unsigned char *c = (const unsigned char *)in[i].s + j;
            int l = utf8_len(c[0]);
            uint32_t cp = l == 1 ? c[0] : c[0] & (0x7Fu >> l);
            for (int k = 1; k < l && j + (size_t)k < in[i].n; k++) cp = cp << 6 | (c[k] & 0x3F);
            mapped = cp < 324 && t->char_byte[cp] >= 0;
            if (mapped) { char b = (char)t->char_byte[cp]; piece_add(&bytes, &b, 1); }
            j += (size_t)l;
        }
        if (!mapped) { bytes.n = start; piece_add(&bytes, in[i].s, in[i].n); }
    }
    out[0] = (Piece){0};
    lossy_add(&out[0], bytes.s ? bytes.s : "", bytes.n);
    free(bytes.s);
    return 1;
}

// ByteFallback: each run of <0xXX> tokens becomes its bytes when they are UTF-8, else one U+FFFD a byte.
static int decode_byte_fallback(const Piece *in, int n, Piece *out) {
    Piece run = {0};
    int m = 0;
    for (int i = 0; i <= n; i++) {
        unsigned b = 0;
        if (i < n && in[i].n == 6 && !memcmp(in[i].s, "<0x", 3) && in[i].s[5] == '>' &&
            sscanf(in[i].s + 3, "%2x", &b) == 1) {
            char c = (char)b;
            piece_add(&run, &c, 1);
            continue;
        }
        if (run.n) {
            out[m] = (Piece){0};
            if (utf8_invalid(run.s, run.n) == run.n) piece_add(&out[m], run.s, run.n);
            else for (size_t k = 0; k < run.n; k++) piece_add(&out[m], "\xEF\xBF\xBD", 3);
            m++;
            run.n = 0;
        }
        if (i < n) { out[m] = (Piece){0}; piece_add(&out[m++], in[i].s ? in[i].s : "", in[i].n); }
    }
    free(run.s);
    return m;
}

// Replace, Fuse, Strip, Metaspace: token by token (Fuse: all into one).
static int decode_simple(const Decoder *d, const Piece *in, int n, Piece *out) {
    if (d->kind == DEC_FUSE) {
        out[0] = (Piece){0};
        for (int i = 0; i < n; i++) piece_add(&out[0], in[i].s ? in[i].s : "", in[i].n);
        return 1;
    }
    size_t a = strlen(d->a), b = d->b ? strlen(d->b) : 0;
    for (int i = 0; i < n; i++) {
        const char *s = in[i].s ? in[i].s : "";
        size_t from = 0, to = in[i].n;
        out[i] = (Piece){0};
        if (d->kind == DEC_STRIP) {
            for (int k = 0; k < d->start && from + a <= to && !memcmp(s + from, d->a, a); k++) from += a;
            for (int k = 0; k < d->stop && to >= from + a && !memcmp(s + to - a, d->a, a); k++) to -= a;
            piece_add(&out[i], s + from, to - from);
            continue;
        }
        // Replace a by b; Metaspace: the replacement by ' ', dropped in the first token (unless prepend is never)
        const char *by = d->kind == DEC_REPLACE ? d->b : i == 0 && d->start != PREPEND_NEVER ? "" : " ";
        size_t bn = d->kind == DEC_REPLACE ? b : strlen(by);
        for (size_t j = 0; j < to;) {
            if (j + a <= to && !memcmp(s + j, d->a, a)) { piece_add(&out[i], by, bn); j += a; }
            else piece_add(&out[i], s + j++, 1);
        }
        if (!out[i].s) piece_add(&out[i], "", 0);
    }
    return n;
}

void tokenizer_decode(const Tokenizer *t, const Token *ids, size_t n, char **out, size_t *out_len, size_t *out_cap) {
    Piece *p = callocCheck(n + 1, sizeof(Piece)), *q = callocCheck(n + 1, sizeof(Piece));
    int m = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < (Token)t->n_ids && t->text[ids[i]]) piece_add(&p[m++], t->text[ids[i]], strlen(t->text[ids[i]]));
    for (int k = 0; k < t->n_dec; k++) {
        const Decoder *d = &t->dec[k];
        int r = d->kind == DEC_BYTELEVEL     ? decode_byte_level(t, p, m, q)
                : d->kind == DEC_BYTEFALLBACK ? decode_byte_fallback(p, m, q)
                                              : decode_simple(d, p, m, q);
        for (int i = 0; i < m; i++) free(p[i].s);
        Piece *x = p;
        p = q;
        q = x;
        memset(q, 0, sizeof(Piece) * (n + 1));
        m = r;
    }
    for (int i = 0; i < m; i++) {
        grow(out, out_cap, *out_len + p[i].n + 1);
        memcpy(*out + *out_len, p[i].s ? p[i].s : "", p[i].n);
        *out_len += p[i].n;
        (*out)[*out_len] = '\0';
        free(p[i].s);
    }
    if (!*out) { grow(out, out_cap, 1); (*out)[0] = '\0'; }
    free(p);
    free(q);
}

// ---------------------------------------------------------------------------------------------------
// pcmoe tokenize

// The bytes of path ("-" or NULL: standard input) into *buf (*n). Returns 0, or 2 with err set.
static int read_input(const char *path, unsigned char **buf, size_t *n, char *err, size_t len) {
    size_t cap = 0;
    *buf = NULL;
    *n = 0;
    if (path && strcmp(path, "-")) {
        int rc = file_append(path, buf, n, &cap);
        return rc ? error_set(err, len, "%s: cannot read", path) : 0;
    }
    unsigned char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, stdin)) > 0) {
        if (*n + got > cap) {
            cap = (*n + got) * 2;
            unsigned char *b = realloc(*buf, cap);
            if (!b) fail("out of memory reading standard input");
            *buf = b;
        }
        memcpy(*buf + *n, chunk, got);
        *n += got;
    }
    return 0;
}

// --decode: the whitespace-separated ids of text (n bytes) decoded to stdout.
static int decode_ids(const Tokenizer *t, const char *name, const char *text, size_t n, char *err, size_t len) {
    Token *ids = NULL;
    size_t count = 0, cap = 0;
    int rc = 0;
    for (size_t i = 0; i < n && !rc;) {
        while (i < n && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r')) i++;
        if (i == n) break;
        size_t j = i;
        unsigned long v = 0;
        while (j < n && text[j] >= '0' && text[j] <= '9' && v < (1ul << 31))
            v = v * 10 + (unsigned long)(text[j++] - '0');
        if (j == i || (j < n && !(text[j] == ' ' || text[j] == '\n' || text[j] == '\t' || text[j] == '\r')) ||
            v >= (unsigned long)t->n_ids) {
            rc = error_set(err, len, "%s: '%.20s' at byte %zu: not a token id below %d", name, text + i, i, t->n_ids);
            break;
        }
        if (count == cap) { cap = cap ? 2 * cap : 1024; ids = realloc(ids, sizeof(Token) * cap); }
        if (!ids) fail("out of memory");
        ids[count++] = (Token)v;
        i = j;
    }
    if (!rc) {
        char *out = NULL;
        size_t out_n = 0, out_cap = 0;
        tokenizer_decode(t, ids, count, &out, &out_n, &out_cap);
        fwrite(out, 1, out_n, stdout);
        free(out);
    }
    free(ids);
    return rc;
}

// The ids to stdout, space-separated, then a newline.
static void ids_print(const Token *ids, size_t n) {
    char buf[1 << 16];
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (at > sizeof buf - 16) { fwrite(buf, 1, at, stdout); at = 0; }
        char digits[12];
        int k = 0;
        unsigned v = (unsigned)ids[i];
        do { digits[k++] = (char)('0' + v % 10); v /= 10; } while (v);
        if (i) buf[at++] = ' ';
        while (k) buf[at++] = digits[--k];
    }
    buf[at++] = '\n';
    fwrite(buf, 1, at, stdout);
}

int tokenizer_main(int argc, char **argv) {
    const char *json = NULL, *file = NULL;
    int decode = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--decode")) decode = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "pcmoe: error: tokenize: unknown option %s (usage: pcmoe tokenize TOKENIZER.json "
                            "[FILE] [--decode])\n", argv[i]);
            return 2;
        } else if (!json) json = argv[i];
        else if (!file) file = argv[i];
        else { fprintf(stderr, "pcmoe: error: tokenize: one TOKENIZER.json and at most one FILE\n"); return 2; }
    }
    if (!json) {
        fprintf(stderr, "pcmoe: error: tokenize needs a TOKENIZER.json (pcmoe tokenize TOKENIZER.json [FILE])\n");
        return 2;
    }
    char err[2048];
    Tokenizer *t = tokenizer_load(json, err, sizeof err);
    if (!t) { fprintf(stderr, "pcmoe: error: %s\n", err); return 2; }
    unsigned char *text;
    size_t n;
    int rc = read_input(file, &text, &n, err, sizeof err);
    if (!rc && decode) rc = decode_ids(t, file ? file : "<stdin>", (const char *)text, n, err, sizeof err);
    else if (!rc) {
        Token *ids = NULL;
        size_t count = 0, cap = 0;
        char why[256];
        rc = tokenizer_encode(t, (const char *)text, n, &ids, &count, &cap, why, sizeof why);
        if (rc) snprintf(err, sizeof err, "%.1500s: %s", file ? file : "<stdin>", why);
        if (!rc) ids_print(ids, count);
        free(ids);
    }
    if (rc) fprintf(stderr, "pcmoe: error: %s\n", err);
    free(text);
    tokenizer_free(t);
    return rc;
}
