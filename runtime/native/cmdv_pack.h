/*
 * cmdv_pack.h - read and validate a behavior pack (GGUF, architecture "commandv-pack") in C.
 *
 * The C twin of runtime/pack/model.py read_pack (runtime/pack/gguf_io.py decode_pack) + BehaviorPack.validate: it accepts
 * and refuses the same files, in the same order of checks, with the same
 * wording (the corpus in tests/data/bad is the contract; see tests/test_native_core.py):
 *
 *   1. the file is read once into memory (at most CMDV_PACK_MAX_BYTES; a regular file only, opened
 *      without blocking: a FIFO or a link to a device is refused, like runtime/safe_io.py read_regular);
 *   2. cmdv_gguf_check walks those bytes strictly (hostile counts, lengths, offsets, tensor data that
 *      overlaps or would widen to more than twice the file size as float32);
 *   3. ggml's gguf.h reads the same bytes (gguf_init_from_buffer, no tensor allocation);
 *      its view is cross-checked against step 2 and metadata numbers are taken from it.
 *      If ggml refuses the file, steps 4-5 still run on the strict walk's values, so a
 *      file the Python reader refuses is refused for the Python reader's reason; one
 *      that passes them is then refused with ggml's reason (CMDV_PACK_ERR_GGML);
 *   4. pack rules: architecture, format version, recipient, meta / diagnostics JSON,
 *      entries (layer, act, positions, strength, tensor shapes, finite values up to 1e6);
 *   5. tensors are converted to owned row-major float32 buffers (f16 widened exactly).
 *
 * Known differences, all refusals of files the Python reader accepts and that the
 * Python writer never produces: ggml also requires tensor data in header order,
 * tightly packed (each tensor padded to the alignment), and no empty key name;
 * such files fail with CMDV_PACK_ERR_GGML. JSON nested deeper than
 * CMDV_JSON_MAX_DEPTH is refused (Python's limit depends on its call stack).
 * A zero-size tensor whose other dimensions numpy cannot hold (e.g. [0, 2^31-1,
 * 2^31-1]) is refused by both, with different messages.
 * Signatures (<pack>.sig, runtime/pack/signing.py) are not checked here.
 *
 * Thread safety: loading is reentrant except that on a ggml refusal the ggml log
 * callback is swapped for the duration of one call to capture ggml's reason.
 */
#ifndef CMDV_PACK_H
#define CMDV_PACK_H

#include <stddef.h>
#include <stdint.h>

#include "cmdv_core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CMDV_PACK_ARCH "commandv-pack"
#define CMDV_PACK_FORMAT_VERSION 1
#define CMDV_PACK_MAX_ENTRIES 4096
#define CMDV_PACK_MAX_RANK 4096
#define CMDV_PACK_MAX_DIM (1 << 17)
#define CMDV_PACK_MAX_LAYERS 4096
#define CMDV_PACK_MAX_ABS_VALUE 1e6
#define CMDV_PACK_MAX_BYTES (1ull << 31)

typedef enum {
    CMDV_PACK_OK = 0,
    CMDV_PACK_ERR_IO = 1,     /* file missing, not a regular file, unreadable, or larger than CMDV_PACK_MAX_BYTES */
    CMDV_PACK_ERR_NOMEM = 2,  /* out of memory */
    CMDV_PACK_ERR_GGUF = 3,   /* not a well-formed GGUF within the limits (magic, version, truncation, caps...) */
    CMDV_PACK_ERR_FORMAT = 4, /* a GGUF but not a valid pack: architecture, format version, keys, tensors */
    CMDV_PACK_ERR_META = 5,   /* commandv.meta / commandv.diagnostics JSON */
    CMDV_PACK_ERR_ENTRY = 6,  /* recipient sizes or an entry: layer, act, positions, strength, shapes, values */
    CMDV_PACK_ERR_MODEL = 7,  /* the pack does not fit the model (cmdv_pack_check_model) */
    CMDV_PACK_ERR_PROMPT = 8, /* binding: positions beyond the prompt, strength not finite, core refused */
    CMDV_PACK_ERR_ARG = 9,    /* bad argument (NULL pointer ...) */
    CMDV_PACK_ERR_GGML = 10,  /* ggml's GGUF reader refused or disagreed with bytes the strict walk accepted */
    CMDV_PACK_ERR_LLAMA = 11  /* cmdv_session: llama.cpp refused (model load, context, template, decode) */
} cmdv_pack_status;

typedef struct {
    int code;      /* cmdv_pack_status */
    char msg[512]; /* NUL-terminated, empty when code == CMDV_PACK_OK */
} cmdv_error;

/* Fill `e` (if not NULL) with `code` and a printf-style message; returns `code`. */
int cmdv_error_set(cmdv_error *e, int code, const char *fmt, ...);
/* Reset `e` (if not NULL) to CMDV_PACK_OK with an empty message. */
void cmdv_error_clear(cmdv_error *e);

/* A string from the pack: owned, NUL-terminated, may hold NUL bytes before len (use len). */
typedef struct {
    char *s;
    size_t len;
} cmdv_str;

typedef struct {
    int32_t layer;       /* recipient block after which the edit applies */
    int32_t donor_layer; /* provenance, -1 if unknown */
    int32_t act;         /* CMDV_ACT_* */
    int32_t rank, q;     /* r >= 1; q = 0 without P/Q */
    int32_t pos_first, pos_last; /* parsed positions: first N / last N prompt tokens */
    float strength;
    cmdv_str act_name, positions; /* as stored */
    /* owned row-major float32: A [d, r], b [r], C [r, d]; P [d, q], Q [q, d], e [d] or NULL */
    float *A, *b, *C, *P, *Q, *e;
} cmdv_pack_entry;

typedef struct {
    cmdv_str name;                        /* general.name, else the file name without extension */
    cmdv_str fingerprint, arch, rec_name; /* commandv.recipient.* */
    int32_t n_layer, d_model;
    cmdv_str created_by, meta_json, diagnostics_json;
    int32_t n_entries;
    cmdv_pack_entry *entries;
} cmdv_pack;

/* Read and fully validate the pack at path; *out on success (free with cmdv_pack_free). Returns the status
 * (also in err->code); err->msg names the problem like the Python reader. */
int cmdv_pack_load(const char *path, cmdv_pack **out, cmdv_error *err);

/* Same on bytes in memory (source only names them in messages; data is not kept). */
int cmdv_pack_parse(const void *data, size_t n, const char *source, cmdv_pack **out, cmdv_error *err);

void cmdv_pack_free(cmdv_pack *p);

/* BehaviorPack.check_model: d_model and n_layer must match; unless force, arch must match and, when
 * fingerprint is not NULL, the recipient fingerprint too (sha256 hex of the model file). */
int cmdv_pack_check_model(const cmdv_pack *p, const char *fingerprint, const char *arch, int32_t n_layer,
                          int32_t d_model, int force, cmdv_error *err);

/* Add the pack's entries to the edit state for a prompt of n_tokens tokens (runtime/engines/llama/editor.py
 * compile_entries): effective strength = entry strength * strength; entries with strength 0 are skipped;
 * positions beyond the prompt fail (CMDV_PACK_ERR_PROMPT). The state points at the pack's tensors: keep
 * the pack alive while the state holds its entries. Returns the number of entries added, or -1. */
int32_t cmdv_pack_bind(const cmdv_pack *p, cmdv_edit_state *st, double strength, int32_t n_tokens, cmdv_error *err);

/* A short name for a status code ("gguf", "entry" ...). */
const char *cmdv_pack_status_name(int code);

#ifdef __cplusplus
}
#endif

#endif /* CMDV_PACK_H */
