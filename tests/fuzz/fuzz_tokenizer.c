// fuzz_tokenizer: libFuzzer harness for tokenizer.json reading: arbitrary bytes as a tokenizer.json; what it
// accepts then encodes a fixed text (ASCII, CJK, emoji, an added token) and decodes the ids. Must never crash,
// leak or read out of bounds.
#include <stdint.h> // uint8_t
#include <stdio.h>  // FILE
#include <stdlib.h> // free, mkstemp
#include <unistd.h> // close, unlink

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[] = "/tmp/pcmoe-fuzz-tok-XXXXXX", err[2048];
    int fd = mkstemp(path);
    if (fd < 0) return 0;
    FILE *f = fdopen(fd, "wb");
    fwrite(data, 1, size, f);
    fclose(f);
    Tokenizer *t = tokenizer_load(path, err, sizeof err);
    unlink(path);
    if (!t) return 0;
    static const char text[] = "Hello, world!  1234\r\n\t日本語 👍🏽 cafe\xcc\x81 <|endoftext|> <s>";
    Token *ids = NULL;
    size_t n = 0, cap = 0, out_n = 0, out_cap = 0;
    char *out = NULL;
    if (!tokenizer_encode(t, text, sizeof text - 1, &ids, &n, &cap, err, sizeof err))
        tokenizer_decode(t, ids, n, &out, &out_n, &out_cap);
    free(ids);
    free(out);
    tokenizer_free(t);
    return 0;
}
