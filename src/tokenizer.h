// tokenizer.h: the BPE tokenizers of Hugging Face's tokenizer.json, computed as the `tokenizers` library
// does (tests/test_tokenizer.sh holds the ids to it):
// - byte-level BPE (GPT-2, OLMoE, Qwen): the text split by the pre-tokenizer's regex (a Split pattern, or
//   ByteLevel's own GPT-2 pattern; PCRE2 with Unicode properties), each piece's bytes mapped to GPT-2's
//   printable characters, then merged;
// - SentencePiece-style BPE (Llama, Mixtral): "▁" for spaces (Prepend + Replace normalizers, or the Metaspace
//   pre-tokenizer), characters outside the vocabulary as <0xXX> byte tokens (byte_fallback), then merged;
// - added and special tokens, matched before (normalized: false) or after (true) normalization; NFC.
// Merges are applied lowest rank first, leftmost first (a heap over the word's pairs), so a whole document
// with no pre-tokenizer costs n log n. Encoding adds no special tokens (tokenizers' add_special_tokens=False).
#ifndef PCMOE_TOKENIZER_H
#define PCMOE_TOKENIZER_H

#include <stddef.h> // size_t

#include "token.h"  // Token

typedef struct Tokenizer Tokenizer;

// Reads tokenizer.json at path. Returns the tokenizer, or NULL with one line naming the file and the key in
// err (not JSON, a model other than BPE, a normalizer, pre-tokenizer or decoder pcmoe does not compute, a
// merge of tokens outside the vocabulary, a regex PCRE2 cannot compile).
Tokenizer *tokenizer_load(const char *path, char *err, size_t len);
void tokenizer_free(Tokenizer *t);

// One more than the largest id (the vocabulary and the added tokens).
int tokenizer_vocab_size(const Tokenizer *t);
// The id of a token's text (vocabulary or added), or -1.
int tokenizer_id(const Tokenizer *t, const char *text);

// Appends the ids of text (n bytes of UTF-8) to *ids (*count in use, *cap allocated; grown). Returns 0, or 2
// with err set when text is not UTF-8 (the byte offset named).
int tokenizer_encode(Tokenizer *t, const char *text, size_t n, Token **ids, size_t *count, size_t *cap, char *err,
                     size_t len);
// The text of ids (n): appended to *out (*out_len in use, *out_cap allocated; grown; NUL-terminated). Ids
// outside the vocabulary decode to nothing. Special tokens are included, as tokenizers' decode does.
void tokenizer_decode(const Tokenizer *t, const Token *ids, size_t n, char **out, size_t *out_len, size_t *out_cap);

// pcmoe tokenize TOKENIZER.json [FILE] [--decode]: the ids of FILE (or stdin), whitespace-separated, or with
// --decode the text of the ids read. Returns the exit status.
int tokenizer_main(int argc, char **argv);

#endif
