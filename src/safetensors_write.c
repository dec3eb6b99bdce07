// safetensors_write.c: writing safetensors files (the header through the one JSON writer, json.h).
#include "safetensors.h"

#include <stdlib.h> // free
#include <string.h> // memcpy

#include "json.h"   // Json
#include "util.h"   // mallocCheck, write_file_atomic

size_t st_write_bytes(const StWrite *t, int dtype) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n * (dtype == ST_BF16 ? 2 : 4);
}

// The header: each tensor's dtype, shape and byte range, in the given order; padded with spaces to a
// multiple of 8 bytes (as Hugging Face's writer does).
static void header_write(Json *j, const StWrite *t, int n, int dtype) {
    json_open_object(j);
    json_key(j, "__metadata__");
    json_open_object(j);
    json_member_string(j, "format", "pt");
    json_close_object(j);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        json_key(j, t[i].name);
        json_open_object(j);
        json_member_string(j, "dtype", dtype == ST_BF16 ? "BF16" : "F32");
        json_key(j, "shape");
        json_open_array(j);
        for (int k = 0; k < t[i].ndim; k++) json_int(j, t[i].shape[k]);
        json_close_array(j);
        json_key(j, "data_offsets");
        json_open_array(j);
        json_uint(j, at);
        at += st_write_bytes(&t[i], dtype);
        json_uint(j, at);
        json_close_array(j);
        json_close_object(j);
    }
    json_close_object(j);
    while (j->out.len % 8) json_space(j, " ");
}

int st_write(const char *path, const StWrite *t, int n, int dtype, char *err, size_t len) {
    Json j = {0};
    header_write(&j, t, n, dtype);
    size_t data = 0;
    for (int i = 0; i < n; i++) data += st_write_bytes(&t[i], dtype);
    size_t hn = j.out.len, total = 8 + hn + data;
    unsigned char *buf = mallocCheck(total), *p = buf + 8 + hn;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hn >> (8 * i));
    memcpy(buf + 8, j.out.s, hn);
    json_free(&j);
    for (int i = 0; i < n; i++) {
        size_t m = st_write_bytes(&t[i], dtype) / (dtype == ST_BF16 ? 2 : 4);
        if (dtype != ST_BF16) { memcpy(p, t[i].data, 4 * m); p += 4 * m; continue; }
        for (size_t k = 0; k < m; k++, p += 2) {
            uint16_t b = st_f32_to_bf16(t[i].data[k]);
            p[0] = (unsigned char)b;
            p[1] = (unsigned char)(b >> 8);
        }
    }
    int rc = write_file_atomic(path, buf, total, err, len);
    free(buf);
    return rc;
}
