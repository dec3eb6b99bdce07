// json.c: the JSON writer (see json.h).
#include "json.h"

#include <math.h>   // isfinite

#include "util.h"   // Text, text_printf, write_file_atomic, fail

// Before a value: the comma that separates it from the previous item of its container, unless it follows
// a key or a json_break.
static void json_value_start(Json *j) {
    if (j->bare) {
        j->bare = 0;
        return;
    }
    if (j->depth > 0 && j->started[j->depth]) text_printf(&j->out, ",");
    j->started[j->depth] = 1;
}

static void json_open(Json *j, const char *bracket) {
    json_value_start(j);
    if (j->depth == JSON_MAX_DEPTH) fail("internal: JSON nested deeper than %d", JSON_MAX_DEPTH);
    text_printf(&j->out, "%s", bracket);
    j->started[++j->depth] = 0;
}

static void json_close(Json *j, const char *bracket) {
    if (j->depth == 0) fail("internal: JSON closes more than it opened");
    j->depth--;
    text_printf(&j->out, "%s", bracket);
}

void json_open_object(Json *j) { json_open(j, "{"); }
void json_close_object(Json *j) { json_close(j, "}"); }
void json_open_array(Json *j) { json_open(j, "["); }
void json_close_array(Json *j) { json_close(j, "]"); }

// s as a JSON string literal
static void json_quote(Json *j, const char *s) {
    text_printf(&j->out, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') text_printf(&j->out, "\\%c", *p);
        else if (*p == '\n') text_printf(&j->out, "\\n");
        else if (*p == '\t') text_printf(&j->out, "\\t");
        else if (*p == '\r') text_printf(&j->out, "\\r");
        else if (*p < 0x20) text_printf(&j->out, "\\u%04x", *p);
        else text_printf(&j->out, "%c", *p);
    }
    text_printf(&j->out, "\"");
}

void json_key(Json *j, const char *key) {
    json_value_start(j);
    json_quote(j, key);
    text_printf(&j->out, ":");
    j->bare = 1;
}

void json_string(Json *j, const char *s) {
    json_value_start(j);
    json_quote(j, s);
}

void json_int(Json *j, long long v) {
    json_value_start(j);
    text_printf(&j->out, "%lld", v);
}

void json_uint(Json *j, unsigned long long v) {
    json_value_start(j);
    text_printf(&j->out, "%llu", v);
}

void json_number_digits(Json *j, double v, int digits) {
    json_value_start(j);
    if (isfinite(v)) text_printf(&j->out, "%.*g", digits, v);
    else text_printf(&j->out, "null");
}

void json_number(Json *j, double v) { json_number_digits(j, v, 9); }

void json_fixed(Json *j, double v, int decimals) {
    json_value_start(j);
    if (isfinite(v)) text_printf(&j->out, "%.*f", decimals, v);
    else text_printf(&j->out, "null");
}

void json_bool(Json *j, int v) {
    json_value_start(j);
    text_printf(&j->out, "%s", v ? "true" : "false");
}

void json_member_string(Json *j, const char *key, const char *s) { json_key(j, key); json_string(j, s); }
void json_member_int(Json *j, const char *key, long long v) { json_key(j, key); json_int(j, v); }
void json_member_uint(Json *j, const char *key, unsigned long long v) { json_key(j, key); json_uint(j, v); }
void json_member_number(Json *j, const char *key, double v) { json_key(j, key); json_number(j, v); }
void json_member_fixed(Json *j, const char *key, double v, int decimals) {
    json_key(j, key);
    json_fixed(j, v, decimals);
}
void json_member_bool(Json *j, const char *key, int v) { json_key(j, key); json_bool(j, v); }

void json_break(Json *j, const char *ws) {
    json_value_start(j);
    text_printf(&j->out, "%s", ws);
    j->bare = 1;
}

void json_space(Json *j, const char *ws) { text_printf(&j->out, "%s", ws); }

void json_end_line(Json *j) {
    if (j->depth != 0) fail("internal: a JSON line ends inside an open object or array");
    text_printf(&j->out, "\n");
}

int json_write(Json *j, const char *path, char *err, size_t len) {
    int rc = write_file_atomic(path, j->out.s ? j->out.s : "", j->out.len, err, len);
    json_free(j);
    return rc;
}

int json_write_option(Json *j, const char *option, const char *path, char *err, size_t len) {
    char why[4400] = "";
    int rc = json_write(j, path, why, sizeof why);
    if (rc) error_set(err, len, "%s %s", option, why);
    return rc;
}

void json_free(Json *j) {
    text_free(&j->out);
    j->depth = 0;
    j->bare = 0;
}
