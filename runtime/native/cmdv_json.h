/*
 * cmdv_json.h - bounded checks of the pack's JSON metadata (commandv.meta, commandv.diagnostics).
 *
 * The Python reader runs json.loads on them and checks the result; these
 * functions accept and refuse the same texts without building a tree:
 * strict JSON plus NaN / Infinity / -Infinity, control characters refused in
 * strings, integers of more than 4300 digits refused (Python's int limit),
 * a leading UTF-8 BOM refused. Nesting deeper than CMDV_JSON_MAX_DEPTH is
 * refused ("nested too deeply"; Python's own limit is its recursion limit,
 * about 1000 minus the caller's stack depth). Iterative: bounded stack use.
 */
#ifndef CMDV_JSON_H
#define CMDV_JSON_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CMDV_JSON_MAX_DEPTH 900
#define CMDV_JSON_MAX_INT_DIGITS 4300
#define CMDV_DIAG_MAX_ITEMS 4096

typedef enum {
    CMDV_JSON_NULL, CMDV_JSON_BOOL, CMDV_JSON_INT, CMDV_JSON_FLOAT, CMDV_JSON_STRING, CMDV_JSON_ARRAY,
    CMDV_JSON_OBJECT
} cmdv_json_kind;

/* Check that s[0..n) (valid UTF-8) is one JSON document; its top-level kind in *kind.
 * 0 on success; -1 with a json.loads-like reason in msg. */
int cmdv_json_check(const char *s, size_t n, cmdv_json_kind *kind, char *msg, size_t cap);

/* Check a diagnostics document (already accepted by cmdv_json_check, top level an array) the way the
 * Python reader does: at most CMDV_DIAG_MAX_ITEMS items; each an object of scalar values (duplicate keys:
 * the last one counts) with integer donor_layer and recipient_layer; r2_r2d, r2_d2r, cycle_err,
 * delta_energy, donor_delta_energy numbers when present. 0, -1 (msg set) or -2 (out of memory). */
int cmdv_json_check_diagnostics(const char *s, size_t n, char *msg, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* CMDV_JSON_H */
