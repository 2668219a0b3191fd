/*
 * cmdv_gguf_check.h - strict, bounded walk of a GGUF file held in memory (C twin of runtime/pack/gguf_strict.py).
 *
 * Every count, length and offset is checked against a fixed limit and against
 * the bytes left before it is used, so a hostile header fails in time linear
 * in the file size with memory bounded by it, and every failure names the
 * field (same wording as the Python parser). Scope: GGUF v2/v3 little-endian,
 * scalar / string / non-nested array values, tensors with 1..4 dims of type
 * F32 or F16, data offsets aligned and inside the buffer, no two tensors sharing
 * a byte, and all tensors as float32 at most max_expansion times the buffer size
 * (so a small file cannot make a reader allocate gigabytes).
 *
 * The result points into the caller's buffer (keep it alive).
 */
#ifndef CMDV_GGUF_CHECK_H
#define CMDV_GGUF_CHECK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { CMDV_GGUF_U32 = 4, CMDV_GGUF_I32 = 5, CMDV_GGUF_F32 = 6, CMDV_GGUF_STRING = 8, CMDV_GGUF_ARRAY = 9 };

typedef struct {
    uint64_t max_kv, max_tensors, max_key, max_string, max_array, max_dims, max_dim_len, max_name;
    uint64_t max_expansion; /* all tensors widened to float32 take at most this many times the file size */
} cmdv_gguf_limits;

typedef struct {
    const char *key;
    size_t key_len;
    uint32_t type;      /* GGUF value type */
    uint32_t item_type; /* arrays: item type */
    uint64_t n_items;   /* arrays: item count */
    const unsigned char *val; /* scalars: the little-endian bytes; strings: the text */
    size_t val_len;
} cmdv_gguf_kv;

typedef struct {
    const char *name;
    size_t name_len;
    uint32_t n_dims;
    uint64_t dims[4];   /* GGUF order (fastest-varying first); numpy shape is reversed */
    uint32_t type;      /* 0 F32, 1 F16 */
    uint64_t offset;    /* relative to the data section */
    uint64_t start;     /* absolute byte offset of the data */
    uint64_t n_bytes;
} cmdv_gguf_tensor;

typedef struct {
    uint32_t version;
    uint64_t n_kv, n_tensors, alignment, data_offset;
    cmdv_gguf_kv *kv;
    cmdv_gguf_tensor *tensors;
} cmdv_gguf_file;

/* The pack reader's limits (runtime/pack/gguf_io.py _LIMITS). */
cmdv_gguf_limits cmdv_gguf_pack_limits(void);

/* Walk data[0..n); 0 on success (free with cmdv_gguf_file_free), 1 = malformed (msg set, prefixed with
 * "<source>: "), 2 = out of memory. */
int cmdv_gguf_check(const unsigned char *data, size_t n, const char *source, const cmdv_gguf_limits *lim,
                    cmdv_gguf_file *out, char *msg, size_t cap);

void cmdv_gguf_file_free(cmdv_gguf_file *f);

/* Index of key in f, or -1. */
int64_t cmdv_gguf_find_key(const cmdv_gguf_file *f, const char *key);

#ifdef __cplusplus
}
#endif

#endif /* CMDV_GGUF_CHECK_H */
