/*
 * cmdv_spec.h - the two small languages inside a pack entry: activation names and position specs.
 *
 * Same rules as runtime/edit/lowrank.py canonical_activation() and runtime/edit/positions.py Positions:
 *   act:        (name or "linear").strip().lower(), aliases identity/none/"" -> linear;
 *               known: linear relu gelu gelu_new gelu_pytorch_tanh silu swish tanh sigmoid.
 *   positions:  parts joined by '+', each (after strip) fN (first N tokens) or lN (last N tokens),
 *               N = 1..4 decimal digits with value 1..1024; the largest N of each kind counts.
 * Strings are byte ranges of valid UTF-8 (not NUL-terminated).
 */
#ifndef CMDV_SPEC_H
#define CMDV_SPEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CMDV_MAX_SPAN 1024

/* Activation id (CMDV_ACT_*, cmdv_core.h) of a name, or -1 with a message in msg. */
int32_t cmdv_act_parse(const char *name, size_t n, char *msg, size_t cap);

/* Parse a positions spec into (first, last); 0 on success, -1 with a message in msg. */
int cmdv_positions_parse(const char *spec, size_t n, int32_t *first, int32_t *last, char *msg, size_t cap);

/* The sorted prompt rows of (first, last) for a prompt of n_tokens tokens, written to rows
 * (capacity n_tokens); returns how many, or -1 with a message when the prompt is too short. */
int32_t cmdv_positions_rows(int32_t first, int32_t last, int32_t n_tokens, int32_t *rows, char *msg, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* CMDV_SPEC_H */
