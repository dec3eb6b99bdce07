// token.h: a token id. A byte-level model's ids are its bytes (0..255); a model with a tokenizer
// (model.tokenizer, model.hf) uses its vocabulary's ids, 0 .. model.vocab_size - 1 (at most 262,144).
#ifndef PCMOE_TOKEN_H
#define PCMOE_TOKEN_H

#include <stdint.h> // uint32_t

typedef uint32_t Token;

#endif
