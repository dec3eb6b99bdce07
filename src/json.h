// json.h: the one JSON writer. Every JSON file and JSON line pcmoe writes (metrics.jsonl, summary.json, the
// audit, bench/generate/attack --json) is built here, in memory, then written whole (json_write) or
// appended as a line by its caller. Compact output: no spaces, numbers as %.9g (non-finite ones as null),
// strings escaped (", \, control bytes; other bytes pass through, so UTF-8 stays UTF-8).
//
//   Json j = {0};
//   json_open_object(&j);
//   json_member_int(&j, "step", 3);        // {"step":3
//   json_key(&j, "bytes");                 // ,"bytes":
//   json_open_array(&j);
//   json_int(&j, 7);                       // [7
//   json_close_array(&j);
//   json_close_object(&j);                 // ]}
//   json_end_line(&j);                     // a newline: the next value is another JSON line
//
// The writer adds the commas between members and array items. json_break adds layout whitespace
// between items (summary.json puts each party on its own line).
#ifndef PCMOE_JSON_H
#define PCMOE_JSON_H

#include <stddef.h> // size_t

#include "util.h"   // Text

#define JSON_MAX_DEPTH 16

typedef struct {
    Text out;                             // the text so far
    int depth;                            // open objects and arrays
    unsigned char started[JSON_MAX_DEPTH + 1]; // the container at each depth has an item already (a comma next)
    int bare;                             // the next value takes no comma (it follows a key or a json_break)
} Json;

void json_open_object(Json *j);
void json_close_object(Json *j);
void json_open_array(Json *j);
void json_close_array(Json *j);
// "key": in the open object (the value comes next)
void json_key(Json *j, const char *key);

void json_string(Json *j, const char *s);
void json_int(Json *j, long long v);
void json_uint(Json *j, unsigned long long v);
void json_number(Json *j, double v);              // %.9g
void json_number_digits(Json *j, double v, int digits); // %.<digits>g
void json_fixed(Json *j, double v, int decimals); // %.<decimals>f
void json_bool(Json *j, int v);

// key and value in one call
void json_member_string(Json *j, const char *key, const char *s);
void json_member_int(Json *j, const char *key, long long v);
void json_member_uint(Json *j, const char *key, unsigned long long v);
void json_member_number(Json *j, const char *key, double v);
void json_member_fixed(Json *j, const char *key, double v, int decimals);
void json_member_bool(Json *j, const char *key, int v);

// The comma before the next item of the open container (none before the first), then whitespace ws.
void json_break(Json *j, const char *ws);
// Whitespace ws as it is (no comma).
void json_space(Json *j, const char *ws);
// Ends a top-level value with a newline (JSON lines).
void json_end_line(Json *j);

// Writes the text to path whole or not at all (util.h write_file_atomic) and frees it. Returns 0, or 1 with
// "PATH: cannot write: why" in err.
int json_write(Json *j, const char *path, char *err, size_t len);
// The same for a file a command-line option names (--json OUT): the message is then "OPTION PATH: cannot write: why".
int json_write_option(Json *j, const char *option, const char *path, char *err, size_t len);
void json_free(Json *j);

#endif
