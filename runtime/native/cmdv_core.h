/*
 * cmdv_core.h - public API of cmdv_core.c: behavior-pack edits inside llama.cpp's eval callback.
 *
 * Plain C11, no Python or Android dependency. The Python runtime loads the same
 * functions with ctypes (runtime/native/build.py declares the prototypes there;
 * keep both in step and bump CMDV_ABI_VERSION on any incompatible change).
 *
 * An entry edits the residual stream after block `layer`:
 *     h += s * delta(h),   delta(h) = act(h A + b) C - (h P) Q + e
 * with A [d, r], b [r], C [r, d], optional P [d, q], Q [q, d], e [d]
 * (row-major float32, owned by the caller and kept alive while the state uses them).
 *
 * Use:
 *   st = cmdv_state_new(d, n_layer);
 *   cmdv_state_add_entry(st, ...)    per entry, in order (packs in list order); or cmdv_pack_bind()
 *   pass cmdv_eval_cb / st as cb_eval / cb_eval_user_data of the llama context;
 *   for every llama_decode call of the prompt:
 *       cmdv_state_begin(st, pos0, n_tokens, out_pos, n_out);  llama_decode(...);  cmdv_state_end(st);
 *   generated tokens: leave the state inactive (the callback answers at once).
 */
#ifndef CMDV_CORE_H
#define CMDV_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CMDV_ABI_VERSION 1

/* Activation ids: the c_id of each entry of KINDS in runtime/edit/activations.py (tests/test_activations.py checks). */
enum {
    CMDV_ACT_LINEAR = 0,
    CMDV_ACT_RELU = 1,
    CMDV_ACT_GELU = 2,      /* erf form */
    CMDV_ACT_GELU_TANH = 3, /* tanh approximation (gelu_new, gelu_pytorch_tanh) */
    CMDV_ACT_SILU = 4,
    CMDV_ACT_TANH = 5,
    CMDV_ACT_SIGMOID = 6,
    CMDV_ACT_COUNT = 7
};

typedef struct cmdv_edit_state cmdv_edit_state;
struct ggml_tensor;

int32_t cmdv_abi_version(void);
/* sizeof(struct ggml_tensor) this file was compiled against (checked against the loaded library). */
size_t cmdv_tensor_struct_size(void);

/* A new state for a model with hidden size d and n_layer blocks; NULL on bad sizes or no memory. */
cmdv_edit_state *cmdv_state_new(int32_t d, int32_t n_layer);
/* Drop all entries (the state stays usable). */
void cmdv_state_clear(cmdv_edit_state *st);
void cmdv_state_free(cmdv_edit_state *st);

/* Append an entry; returns its index, or -1 (see cmdv_state_error). P/Q/e may be NULL (q = 0).
 * rows: absolute prompt positions to edit (copied). */
int32_t cmdv_state_add_entry(cmdv_edit_state *st, int32_t layer, int32_t rank, int32_t act,
                             const float *A, const float *b, const float *C,
                             int32_t q, const float *P, const float *Q, const float *e,
                             double strength, const int32_t *rows, int32_t n_rows);

/* Announce the next llama_decode: tokens at absolute positions pos0 .. pos0+n_tokens-1 and the absolute
 * positions of its output rows. Returns how many layers must be edited (0: nothing to do). */
int32_t cmdv_state_begin(cmdv_edit_state *st, int32_t pos0, int32_t n_tokens, const int32_t *out_pos, int32_t n_out);
void cmdv_state_end(cmdv_edit_state *st);

/* Record every layer's output rows into rec [n_layer, T, d] (after the edits); NULL stops recording. */
void cmdv_state_set_record(cmdv_edit_state *st, float *rec, int32_t T);
/* Edited rows so far (all entries, all calls). */
int64_t cmdv_state_n_applied(const cmdv_edit_state *st);
/* Number of entries currently loaded. */
int32_t cmdv_state_n_entries(const cmdv_edit_state *st);
/* The first error since the last reset, or NULL. */
const char *cmdv_state_error(const cmdv_edit_state *st);
void cmdv_state_reset_error(cmdv_edit_state *st);

/* Apply entry idx to n rows of h (row stride in floats): for tests and non-ggml callers. 0 or -1. */
int32_t cmdv_apply_entry(cmdv_edit_state *st, int32_t idx, float *h, int32_t n, int64_t stride);

/* ggml_backend_sched_eval_callback: ask -> "do I need this tensor?"; !ask -> tensor computed, edit it. */
bool cmdv_eval_cb(struct ggml_tensor *t, bool ask, void *user_data);

#ifdef __cplusplus
}
#endif

#endif /* CMDV_CORE_H */
