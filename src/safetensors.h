// safetensors.h: Hugging Face's weight files. A file is an 8-byte little-endian header length n, n bytes of
// JSON header {"NAME": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
// "__metadata__": {...}}, then the data (offsets relative to its start). A checkpoint directory holds one
// model.safetensors, or shards listed in model.safetensors.index.json ({"weight_map": {"NAME": "FILE"}}).
// Files are memory-mapped; a tensor is read on its own, converted to fp32, and its pages are given back.
#ifndef PCMOE_SAFETENSORS_H
#define PCMOE_SAFETENSORS_H

#include <stddef.h> // size_t
#include <stdint.h> // int64_t

typedef enum { ST_F32, ST_BF16, ST_F16, ST_OTHER } StDtype; // ST_OTHER: listed, but not readable as fp32

#define ST_MAX_DIMS 4
#define ST_NAME_LEN 256

typedef struct {
    char name[ST_NAME_LEN];
    int dtype;                   // StDtype
    char dtype_name[16];         // as the header spells it ("BF16", "I64", ...)
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t begin, end;           // byte range in its file's data section
    int file;                    // index into the file table
} StTensor;

typedef struct {
    char path[1280];
    int fd;
    unsigned char *map;          // the whole file, read-only
    size_t size;                 // bytes of the file
    size_t data;                 // offset of the data section (8 + header length)
} StFile;

typedef struct {
    char dir[1024];
    int n_files;
    StFile *files;
    int n;                       // tensors, sorted by name
    StTensor *t;
} StModel;

// Opens DIR's model.safetensors, or the shards its model.safetensors.index.json lists, and validates every
// header: JSON, dtypes and shapes, offsets inside the file, sizes that match the shape, no two tensors
// overlapping, no name twice, every name of the index in the file it names. Returns 0, or 2 with one line
// naming the file (and the tensor) in err.
int st_open(StModel *s, const char *dir, char *err, size_t len);
// The same for one file.
int st_open_file(StModel *s, const char *path, char *err, size_t len);
// The same for the image of one file in memory (size bytes; kept, not copied, until st_close), named `name` in
// errors: the fuzzer's entry.
int st_open_bytes(StModel *s, const unsigned char *bytes, size_t size, const char *name, char *err, size_t len);
void st_close(StModel *s);
// The tensor called name, or NULL.
const StTensor *st_find(const StModel *s, const char *name);
// The number of elements of t.
int64_t st_numel(const StTensor *t);
// Reads tensor t as fp32 into out (st_numel(t) floats). Returns 0, or 2 (a dtype that is not F32, BF16 or
// F16) with err set.
int st_read_f32(const StModel *s, const StTensor *t, float *out, char *err, size_t len);

// Writing. One tensor of a file to be written: its name, shape and fp32 values (converted to dtype).
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float *data;
} StWrite;
// Writes the n tensors to path (through path.tmp and a rename) in dtype ST_F32 or ST_BF16 (round to nearest
// even), with metadata {"format": "pt"}. Returns 0, or 1 with err set.
int st_write(const char *path, const StWrite *t, int n, int dtype, char *err, size_t len);
// The bytes st_write would give tensor t in dtype.
size_t st_write_bytes(const StWrite *t, int dtype);

// fp32 from IEEE half and bfloat16 bits, and bfloat16 bits (nearest even) from fp32.
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t b);
uint16_t st_f32_to_bf16(float f);

#endif
