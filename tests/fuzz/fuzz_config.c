// fuzz_config: libFuzzer harness for the INI parser: arbitrary bytes as a config file and as stored
// config text (what a checkpoint carries). Must never crash, leak or read out of bounds.
#include <stdint.h> // uint8_t
#include <stdio.h>  // FILE
#include <stdlib.h> // malloc
#include <string.h> // memcpy
#include <unistd.h> // close, unlink

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static Config c;
    char err[2048];
    char path[] = "/tmp/pcmoe-fuzz-config-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 0;
    FILE *f = fdopen(fd, "wb");
    fwrite(data, 1, size, f);
    fclose(f);
    char *sets[1] = {"train.steps=3"};
    config_load(&c, path, sets, size % 2, err, sizeof err);
    unlink(path);
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    config_load_text(&c, text, err, sizeof err);
    free(text);
    return 0;
}
