/* cmdv_pack.c - behavior-pack reader over ggml's gguf.h, same rules as the Python reader (see cmdv_pack.h). C11. */

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* open(), fstat(), fcntl(), read() */
#endif

#include "cmdv_pack.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "ggml.h"
#include "gguf.h"

#include "cmdv_gguf_check.h"
#include "cmdv_json.h"
#include "cmdv_spec.h"
#include "cmdv_text.h"

enum { T_A, T_B, T_C, T_P, T_Q, T_E, N_T };
static const char T_NAMES[N_T] = {'A', 'b', 'C', 'P', 'Q', 'e'};

static const char *gguf_type_label(uint32_t t) {
    static const char *names[] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                  "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "UNKNOWN";
}

int cmdv_error_set(cmdv_error *e, int code, const char *fmt, ...) {
    if (!e) return code;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

void cmdv_error_clear(cmdv_error *e) {
    if (e) { e->code = CMDV_PACK_OK; e->msg[0] = 0; }
}

const char *cmdv_pack_status_name(int code) {
    static const char *names[] = {"ok", "io", "nomem", "gguf", "format", "meta", "entry", "model", "prompt", "arg",
                                  "ggml", "llama"};
    return code >= 0 && code < (int)(sizeof names / sizeof names[0]) ? names[code] : "unknown";
}

/* ------------------------------------------------------------------ reader state */

typedef struct {
    const char *key;
    size_t len, index;
} key_ref;

typedef struct {
    const char *path;
    const unsigned char *data;
    size_t n;
    cmdv_gguf_file g;          /* strict walk (step 2) */
    struct gguf_context *gg;   /* ggml's view of the same bytes (step 3) */
    key_ref *keys;             /* sorted key index into g.kv / gg (same order, cross-checked) */
    int64_t (*slots)[N_T];     /* per entry: tensor index of A, b, C, P, Q, e or -1 */
    cmdv_error *err;
    cmdv_error ggml_refusal;   /* ggml refused what the strict walk accepted (reported after the pack rules) */
} reader;

static int cmp_key(const void *a, const void *b) {
    const key_ref *x = a, *y = b;
    const size_t m = x->len < y->len ? x->len : y->len;
    const int r = m ? memcmp(x->key, y->key, m) : 0;
    if (r) return r;
    return (x->len > y->len) - (x->len < y->len);
}

/* Index of key (a C string) in the file, or -1. */
static int64_t find_key(const reader *r, const char *key) {
    if (!r->g.n_kv) return -1;
    const key_ref probe = {key, strlen(key), 0};
    const key_ref *hit = bsearch(&probe, r->keys, (size_t)r->g.n_kv, sizeof *r->keys, cmp_key);
    return hit ? (int64_t)hit->index : -1;
}

static int str_copy(cmdv_str *dst, const char *s, size_t n) {
    dst->s = malloc(n + 1);
    if (!dst->s) return -1;
    if (n) memcpy(dst->s, s, n);
    dst->s[n] = 0;
    dst->len = n;
    return 0;
}

/* ------------------------------------------------------------------ step 3: ggml's gguf.h on the same bytes */

typedef struct {
    char text[256];
    bool got;
} log_capture;

static void capture_log(enum ggml_log_level level, const char *text, void *user_data) {
    log_capture *lc = user_data;
    if (level != GGML_LOG_LEVEL_ERROR || lc->got || !text) return;
    snprintf(lc->text, sizeof lc->text, "%s", text);
    size_t k = strlen(lc->text);
    while (k > 0 && (lc->text[k - 1] == '\n' || lc->text[k - 1] == ' ')) lc->text[--k] = 0;
    lc->got = true;
}

/* ggml's view cannot be used: keep the reason (reported if the pack rules pass) and read the strict walk's
 * values from now on. Returns 0 (not an error yet). */
static int ggml_refused(reader *r, const char *why) {
    if (!r->ggml_refusal.code)
        cmdv_error_set(&r->ggml_refusal, CMDV_PACK_ERR_GGML, "%s: ggml's GGUF reader %s", r->path, why);
    if (r->gg) gguf_free(r->gg);
    r->gg = NULL;
    return 0;
}

/* True when ggml's C string equals the n bytes at s (reads at most n + 1 bytes of it). */
static bool same_text(const char *ggml_s, const char *s, size_t n) {
    if (!ggml_s) return false;
    size_t k = 0;
    while (k <= n && ggml_s[k]) k++; /* strnlen(ggml_s, n + 1), in C11 */
    if (k > n) return false;
    if (k < n) return memcmp(ggml_s, s, k) == 0 && s[k] == 0; /* an embedded NUL: compare up to it */
    return memcmp(ggml_s, s, n) == 0;
}

/* Step 3. When ggml refuses the bytes or its view disagrees with the strict walk, r->gg is NULL and the reason
 * is kept in r->ggml_refusal: the pack rules then run on the strict walk's values, so a file the Python reader
 * refuses gets the Python reader's reason, and the ggml problem is reported only for a file that passes them. */
static int ggml_view(reader *r) {
    const struct gguf_init_params ip = {true, NULL};
    r->gg = gguf_init_from_buffer(r->data, r->n, ip);
    if (!r->gg) {
        /* run it again with ggml's log captured, to name ggml's reason */
        log_capture lc = {{0}, false};
        ggml_log_callback old_cb = NULL;
        void *old_ud = NULL;
        ggml_log_get(&old_cb, &old_ud);
        ggml_log_set(capture_log, &lc);
        struct gguf_context *again = gguf_init_from_buffer(r->data, r->n, ip);
        ggml_log_set(old_cb, old_ud);
        if (again) gguf_free(again);
        char why[300];
        snprintf(why, sizeof why, "refused the file (%s)", lc.got ? lc.text : "no reason given");
        return ggml_refused(r, why);
    }
    const cmdv_gguf_file *g = &r->g;
    if ((uint64_t)gguf_get_n_kv(r->gg) != g->n_kv || (uint64_t)gguf_get_n_tensors(r->gg) != g->n_tensors)
        return ggml_refused(r, "disagrees with the strict reader on the number of keys or tensors");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const cmdv_gguf_kv *kv = &g->kv[i];
        const int64_t id = (int64_t)i;
        if ((uint32_t)gguf_get_kv_type(r->gg, id) != kv->type ||
            !same_text(gguf_get_key(r->gg, id), kv->key, kv->key_len))
            return ggml_refused(r, "disagrees with the strict reader on a metadata key");
        if (kv->type == CMDV_GGUF_ARRAY &&
            ((uint32_t)gguf_get_arr_type(r->gg, id) != kv->item_type || gguf_get_arr_n(r->gg, id) != kv->n_items))
            return ggml_refused(r, "disagrees with the strict reader on an array value");
    }
    if (g->n_tensors > 0 && gguf_get_data_offset(r->gg) != g->data_offset)
        return ggml_refused(r, "disagrees with the strict reader on the data offset");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const cmdv_gguf_tensor *t = &g->tensors[i];
        const int64_t id = (int64_t)i;
        const int64_t *ne = gguf_get_tensor_ne(r->gg, id);
        bool same = (uint32_t)gguf_get_tensor_type(r->gg, id) == t->type &&
                    gguf_get_tensor_offset(r->gg, id) == t->offset && memchr(t->name, 0, t->name_len) == NULL &&
                    same_text(gguf_get_tensor_name(r->gg, id), t->name, t->name_len);
        for (int j = 0; j < 4 && same; j++) same = (uint64_t)ne[j] == (j < (int)t->n_dims ? t->dims[j] : 1);
        if (!same) return ggml_refused(r, "disagrees with the strict reader on a tensor");
    }
    return CMDV_PACK_OK;
}

/* ------------------------------------------------------------------ typed metadata (runtime/pack/gguf_io.py _Fields) */

/* A string value; def (may be NULL = required) when the key is absent. */
static int get_string(reader *r, const char *key, const char *def, cmdv_str *out) {
    const int64_t id = find_key(r, key);
    char rk[160];
    if (id < 0) {
        if (def) return str_copy(out, def, strlen(def)) ? cmdv_error_set(r->err, CMDV_PACK_ERR_NOMEM, "out of memory") : 0;
        cmdv_py_repr(rk, sizeof rk, key, strlen(key));
        return cmdv_error_set(r->err, CMDV_PACK_ERR_FORMAT, "%s: metadata key %s missing", r->path, rk);
    }
    const cmdv_gguf_kv *kv = &r->g.kv[id];
    if (kv->type != CMDV_GGUF_STRING) {
        cmdv_py_repr(rk, sizeof rk, key, strlen(key));
        return cmdv_error_set(r->err, CMDV_PACK_ERR_FORMAT, "%s: metadata key %s is not a string", r->path, rk);
    }
    if (r->gg && !same_text(gguf_get_val_str(r->gg, id), (const char *)kv->val, kv->val_len))
        ggml_refused(r, "disagrees with the strict reader on a string value");
    /* embedded NULs: ggml's C string stops early; the strict walk holds the whole (identical) bytes */
    if (str_copy(out, (const char *)kv->val, kv->val_len)) return cmdv_error_set(r->err, CMDV_PACK_ERR_NOMEM, "out of memory");
    return 0;
}

/* A number of GGUF type want (UINT32, INT32 or FLOAT32) as double; has_def: absent -> def. */
static int get_number(reader *r, const char *key, uint32_t want, bool has_def, double def, double *out) {
    const int64_t id = find_key(r, key);
    char rk[160];
    if (id < 0) {
        if (has_def) { *out = def; return 0; }
        cmdv_py_repr(rk, sizeof rk, key, strlen(key));
        return cmdv_error_set(r->err, CMDV_PACK_ERR_FORMAT, "%s: metadata key %s missing", r->path, rk);
    }
    const uint32_t t = r->g.kv[id].type;
    if (t != want) {
        cmdv_py_repr(rk, sizeof rk, key, strlen(key));
        return cmdv_error_set(r->err, CMDV_PACK_ERR_FORMAT, "%s: metadata key %s has type %s, expected %s", r->path, rk,
                       gguf_type_label(t), gguf_type_label(want));
    }
    const unsigned char *v = r->g.kv[id].val; /* little-endian bytes of the strict walk (ggml refused) */
    const uint32_t bits = (uint32_t)v[0] | (uint32_t)v[1] << 8 | (uint32_t)v[2] << 16 | (uint32_t)v[3] << 24;
    if (want == CMDV_GGUF_U32) *out = r->gg ? (double)gguf_get_val_u32(r->gg, id) : (double)bits;
    else if (want == CMDV_GGUF_I32) *out = r->gg ? (double)gguf_get_val_i32(r->gg, id) : (double)(int32_t)bits;
    else {
        float f;
        memcpy(&f, &bits, 4);
        *out = r->gg ? (double)gguf_get_val_f32(r->gg, id) : (double)f;
    }
    return 0;
}

/* A JSON value (runtime/pack/gguf_io.py _Fields.json): string, then json.loads rules. */
static int get_json(reader *r, const char *key, const char *def, cmdv_str *out, cmdv_json_kind *kind) {
    int rc = get_string(r, key, def, out);
    if (rc) return rc;
    char why[200];
    if (cmdv_json_check(out->s, out->len, kind, why, sizeof why) != 0) {
        char rk[160];
        cmdv_py_repr(rk, sizeof rk, key, strlen(key));
        return cmdv_error_set(r->err, CMDV_PACK_ERR_META, "%s: metadata key %s is not valid JSON (%s)", r->path, rk, why);
    }
    return 0;
}

/* ------------------------------------------------------------------ tensors */

/* "entry.<i>.<X>" with i canonical decimal -> (i, X index), else -1. */
static int parse_tensor_name(const char *s, size_t n, uint64_t *entry) {
    if (n < 9 || memcmp(s, "entry.", 6) != 0) return -1;
    size_t i = 6;
    if (s[i] < '0' || s[i] > '9' || (s[i] == '0' && i + 1 < n && s[i + 1] != '.')) return -1;
    uint64_t v = 0;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
        v = v * 10 + (uint64_t)(s[i] - '0');
        if (v > CMDV_PACK_MAX_ENTRIES) return -1;
    }
    if (i + 2 != n || s[i] != '.') return -1;
    for (int k = 0; k < N_T; k++)
        if (s[i + 1] == T_NAMES[k]) { *entry = v; return k; }
    return -1;
}

/* numpy shape of tensor t as "[a, b]" (GGUF dims reversed). */
static void shape_str(const cmdv_gguf_tensor *t, char *out, size_t cap) {
    size_t k = (size_t)snprintf(out, cap, "[");
    for (uint32_t j = 0; j < t->n_dims && k < cap; j++)
        k += (size_t)snprintf(out + k, cap - k, "%s%" PRIu64, j ? ", " : "", t->dims[t->n_dims - 1 - j]);
    if (k < cap) snprintf(out + k, cap - k, "]");
}

/* numpy shape dimension k (0 = slowest) */
static uint64_t np_dim(const cmdv_gguf_tensor *t, uint32_t k) { return t->dims[t->n_dims - 1 - k]; }

static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: exact as man * 2^-24 */
            const float v = (float)man * 5.9604644775390625e-8f;
            memcpy(&bits, &v, 4);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Owned float32 copy of tensor t (little-endian f32 or f16 data). */
static float *load_tensor(const reader *r, const cmdv_gguf_tensor *t) {
    const size_t esz = t->type == 0 ? 4 : 2;
    const size_t count = (size_t)(t->n_bytes / esz);
    float *out = malloc((count ? count : 1) * sizeof(float));
    if (!out) return NULL;
    const unsigned char *p = r->data + t->start;
    for (size_t i = 0; i < count; i++) {
        if (esz == 4) {
            const uint32_t bits = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                                  (uint32_t)p[4 * i + 3] << 24;
            memcpy(&out[i], &bits, 4);
        } else {
            out[i] = half_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        }
    }
    return out;
}

/* ------------------------------------------------------------------ pack rules */

static void free_entry(cmdv_pack_entry *e) {
    free(e->act_name.s); free(e->positions.s);
    free(e->A); free(e->b); free(e->C); free(e->P); free(e->Q); free(e->e);
}

void cmdv_pack_free(cmdv_pack *p) {
    if (!p) return;
    for (int32_t i = 0; i < p->n_entries; i++) free_entry(&p->entries[i]);
    free(p->entries);
    free(p->name.s); free(p->fingerprint.s); free(p->arch.s); free(p->rec_name.s);
    free(p->created_by.s); free(p->meta_json.s); free(p->diagnostics_json.s);
    free(p);
}

/* Path(path).stem: the name without its last suffix ("x.gguf" -> "x"; ".x", "x." and "x" unchanged) */
static void path_stem(const char *path, char *out, size_t cap) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    const char *dot = strrchr(base, '.');
    if (dot && dot != base && dot[1] != 0) n = (size_t)(dot - base);
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), base);
}

/* Header-level rules of runtime/pack/gguf_io.py decode_pack, up to entry_count. */
static int read_header(reader *r, cmdv_pack *p, uint32_t *n_entries) {
    int rc;
    cmdv_str arch = {0};
    if ((rc = get_string(r, "general.architecture", NULL, &arch))) return rc;
    const bool is_pack = arch.len == strlen(CMDV_PACK_ARCH) && memcmp(arch.s, CMDV_PACK_ARCH, arch.len) == 0;
    if (!is_pack) {
        char ra[160];
        cmdv_py_repr(ra, sizeof ra, arch.s, arch.len);
        free(arch.s);
        return cmdv_error_set(r->err, CMDV_PACK_ERR_FORMAT, "%s: GGUF architecture is %s, not a behavior pack ('%s')",
                       r->path, ra, CMDV_PACK_ARCH);
    }
    free(arch.s);
    double v;
    if ((rc = get_number(r, "commandv.format_version", CMDV_GGUF_U32, false, 0, &v))) return rc;
    if (v != CMDV_PACK_FORMAT_VERSION)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_FORMAT, "%s: pack format version %.0f is not supported (known: (%d,))",
                       r->path, v, CMDV_PACK_FORMAT_VERSION);
    if ((rc = get_string(r, "commandv.recipient.fingerprint", NULL, &p->fingerprint))) return rc;
    if ((rc = get_string(r, "commandv.recipient.arch", NULL, &p->arch))) return rc;
    if ((rc = get_string(r, "commandv.recipient.name", "", &p->rec_name))) return rc;
    double nl, dm;
    if ((rc = get_number(r, "commandv.recipient.n_layer", CMDV_GGUF_U32, false, 0, &nl))) return rc;
    if ((rc = get_number(r, "commandv.recipient.d_model", CMDV_GGUF_U32, false, 0, &dm))) return rc;
    /* ranges are checked by validate (later, as in Python); u32 values are stored saturated */
    p->n_layer = nl > INT32_MAX ? INT32_MAX : (int32_t)nl;
    p->d_model = dm > INT32_MAX ? INT32_MAX : (int32_t)dm;
    cmdv_json_kind mk = CMDV_JSON_NULL, dk = CMDV_JSON_NULL;
    if ((rc = get_json(r, "commandv.meta", "{}", &p->meta_json, &mk))) return rc;
    if ((rc = get_json(r, "commandv.diagnostics", "[]", &p->diagnostics_json, &dk))) return rc;
    if (mk != CMDV_JSON_OBJECT || dk != CMDV_JSON_ARRAY)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_META,
                       "%s: commandv.meta must be a JSON object and commandv.diagnostics a list", r->path);
    char why[200];
    const int drc = cmdv_json_check_diagnostics(p->diagnostics_json.s, p->diagnostics_json.len, why, sizeof why);
    if (drc == -2) return cmdv_error_set(r->err, CMDV_PACK_ERR_NOMEM, "out of memory");
    if (drc) return cmdv_error_set(r->err, CMDV_PACK_ERR_META, "%s: %s", r->path, why);
    if ((rc = get_string(r, "commandv.created_by", "", &p->created_by))) return rc;
    double n;
    if ((rc = get_number(r, "commandv.entry_count", CMDV_GGUF_U32, false, 0, &n))) return rc;
    if (n < 1 || n > CMDV_PACK_MAX_ENTRIES)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_FORMAT, "%s: entry_count %.0f outside 1..%d", r->path, n,
                       CMDV_PACK_MAX_ENTRIES);
    *n_entries = (uint32_t)n;
    return 0;
}

/* Assign tensors to entry slots; the rest are "unexpected". */
static int assign_tensors(reader *r, uint32_t n) {
    r->slots = malloc((size_t)n * sizeof *r->slots);
    if (!r->slots) return cmdv_error_set(r->err, CMDV_PACK_ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++)
        for (int k = 0; k < N_T; k++) r->slots[i][k] = -1;
    for (uint64_t t = 0; t < r->g.n_tensors; t++) {
        uint64_t e;
        const int k = parse_tensor_name(r->g.tensors[t].name, r->g.tensors[t].name_len, &e);
        if (k >= 0 && e < n) r->slots[e][k] = (int64_t)t; /* names are unique (strict walk) */
    }
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b) {
    const cmdv_gguf_tensor *x = *(const cmdv_gguf_tensor *const *)a, *y = *(const cmdv_gguf_tensor *const *)b;
    const size_t m = x->name_len < y->name_len ? x->name_len : y->name_len;
    const int c = m ? memcmp(x->name, y->name, m) : 0;
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int check_extra_tensors(reader *r, uint32_t n) {
    const uint64_t nt = r->g.n_tensors;
    if (!nt) return 0;
    unsigned char *used = calloc((size_t)nt, 1);
    const cmdv_gguf_tensor **extra = malloc((size_t)nt * sizeof *extra);
    if (!used || !extra) { free(used); free(extra); return cmdv_error_set(r->err, CMDV_PACK_ERR_NOMEM, "out of memory"); }
    for (uint32_t i = 0; i < n; i++)
        for (int k = 0; k < N_T; k++)
            if (r->slots[i][k] >= 0) used[r->slots[i][k]] = 1;
    size_t m = 0;
    for (uint64_t t = 0; t < nt; t++)
        if (!used[t]) extra[m++] = &r->g.tensors[t];
    int rc = 0;
    if (m) {
        qsort(extra, m, sizeof *extra, cmp_tensor_name);
        char list[320];
        size_t k = (size_t)snprintf(list, sizeof list, "[");
        for (size_t i = 0; i < m && i < 5 && k < sizeof list; i++) {
            char rn[80];
            cmdv_py_repr(rn, sizeof rn, extra[i]->name, extra[i]->name_len);
            k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", i ? ", " : "", rn);
        }
        if (k < sizeof list) snprintf(list + k, sizeof list - k, "]");
        rc = cmdv_error_set(r->err, CMDV_PACK_ERR_FORMAT, "%s: unexpected tensors %s (not referenced by any entry)", r->path,
                     list);
    }
    free(used);
    free(extra);
    return rc;
}

/* Per-entry metadata (decode_pack's per-entry PackEntry arguments, in order). */
static int read_entry_meta(reader *r, uint32_t i, cmdv_pack_entry *e) {
    char key[96];
    for (int k = 0; k < 3; k++) { /* A, b, C required */
        if (r->slots[i][k] < 0)
            return cmdv_error_set(r->err, CMDV_PACK_ERR_FORMAT, "%s: entry %u: tensor 'entry.%u.%c' missing", r->path, i, i,
                           T_NAMES[k]);
    }
    double v;
    int rc;
    snprintf(key, sizeof key, "commandv.entry.%u.layer", i);
    if ((rc = get_number(r, key, CMDV_GGUF_U32, false, 0, &v))) return rc;
    e->layer = v > INT32_MAX ? INT32_MAX : (int32_t)v; /* the range check (validate_entry) uses the u32 value */
    snprintf(key, sizeof key, "commandv.entry.%u.donor_layer", i);
    double dl;
    if ((rc = get_number(r, key, CMDV_GGUF_I32, true, -1, &dl))) return rc;
    e->donor_layer = (int32_t)dl;
    snprintf(key, sizeof key, "commandv.entry.%u.act", i);
    if ((rc = get_string(r, key, NULL, &e->act_name))) return rc;
    snprintf(key, sizeof key, "commandv.entry.%u.positions", i);
    if ((rc = get_string(r, key, NULL, &e->positions))) return rc;
    snprintf(key, sizeof key, "commandv.entry.%u.strength", i);
    double s;
    if ((rc = get_number(r, key, CMDV_GGUF_F32, false, 0, &s))) return rc;
    e->strength = (float)s;
    return 0;
}

static int check_values(reader *r, uint32_t i, char name, const float *x, size_t count) {
    bool finite = true;
    float mx = 0;
    for (size_t k = 0; k < count; k++) {
        if (!isfinite(x[k])) { finite = false; break; }
        const float a = fabsf(x[k]);
        if (a > mx) mx = a;
    }
    if (!finite)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: tensor %c has NaN or Inf values", i, name);
    if ((double)mx > CMDV_PACK_MAX_ABS_VALUE)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: tensor %c has values beyond \xC2\xB1%g", i, name,
                       CMDV_PACK_MAX_ABS_VALUE);
    return 0;
}

/* PackEntry.validate (shapes, then values), then keep float32 copies. */
static int validate_entry(reader *r, const cmdv_pack *p, uint32_t i, cmdv_pack_entry *e) {
    const uint64_t d = (uint64_t)p->d_model;
    char msg[300], key[96];
    double layer;
    snprintf(key, sizeof key, "commandv.entry.%u.layer", i);
    get_number(r, key, CMDV_GGUF_U32, false, 0, &layer); /* present and typed: checked by read_entry_meta */
    if (layer >= p->n_layer)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: layer %.0f out of range 0..%d", i, layer,
                       (int)p->n_layer - 1);
    e->act = cmdv_act_parse(e->act_name.s, e->act_name.len, msg, sizeof msg);
    if (e->act < 0) return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: %s", i, msg);
    if (cmdv_positions_parse(e->positions.s, e->positions.len, &e->pos_first, &e->pos_last, msg, sizeof msg))
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: %s", i, msg);
    if (!isfinite(e->strength)) {
        char fs[32];
        cmdv_py_float_repr(fs, sizeof fs, e->strength);
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: strength %s is not finite", i, fs);
    }
    if (fabs((double)e->strength) > CMDV_PACK_MAX_ABS_VALUE)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: strength %g beyond \xC2\xB1%g", i,
                              (double)e->strength, CMDV_PACK_MAX_ABS_VALUE);
    const cmdv_gguf_tensor *T[N_T];
    for (int k = 0; k < N_T; k++) T[k] = r->slots[i][k] >= 0 ? &r->g.tensors[r->slots[i][k]] : NULL;
    char sh[96];
    const cmdv_gguf_tensor *A = T[T_A], *b = T[T_B], *C = T[T_C], *P = T[T_P], *Q = T[T_Q], *E = T[T_E];
    shape_str(A, sh, sizeof sh);
    if (A->n_dims != 2 || np_dim(A, 0) != d)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: A has shape %s, expected [d=%" PRIu64 ", r]", i, sh, d);
    const uint64_t rk = np_dim(A, 1);
    if (rk < 1 || rk > CMDV_PACK_MAX_RANK)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: rank %" PRIu64 " outside 1..%d", i, rk,
                       CMDV_PACK_MAX_RANK);
    shape_str(b, sh, sizeof sh);
    if (b->n_dims != 1 || np_dim(b, 0) != rk)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: b has shape %s, expected [r=%" PRIu64 "]", i, sh, rk);
    shape_str(C, sh, sizeof sh);
    if (C->n_dims != 2 || np_dim(C, 0) != rk || np_dim(C, 1) != d)
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: C has shape %s, expected [r=%" PRIu64 ", d=%" PRIu64 "]",
                       i, sh, rk, d);
    if ((P == NULL) != (Q == NULL))
        return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: P and Q must be given together", i);
    uint64_t q = 0;
    if (P) {
        shape_str(P, sh, sizeof sh);
        if (P->n_dims != 2 || np_dim(P, 0) != d)
            return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: P has shape %s, expected [d=%" PRIu64 ", q]", i,
                           sh, d);
        q = np_dim(P, 1);
        shape_str(Q, sh, sizeof sh);
        if (Q->n_dims != 2 || np_dim(Q, 0) != q || np_dim(Q, 1) != d)
            return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY,
                           "entry %u: Q has shape %s, expected [q=%" PRIu64 ", d=%" PRIu64 "]", i, sh, q, d);
    }
    if (E) {
        shape_str(E, sh, sizeof sh);
        if (E->n_dims != 1 || np_dim(E, 0) != d)
            return cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "entry %u: e has shape %s, expected [d=%" PRIu64 "]", i, sh, d);
    }
    e->rank = (int32_t)rk;
    e->q = (int32_t)q; /* q <= file size / (4 d): fits */
    float **dst[N_T] = {&e->A, &e->b, &e->C, &e->P, &e->Q, &e->e};
    for (int k = 0; k < N_T; k++) {
        if (!T[k]) continue;
        *dst[k] = load_tensor(r, T[k]);
        if (!*dst[k]) return cmdv_error_set(r->err, CMDV_PACK_ERR_NOMEM, "out of memory");
        const size_t count = (size_t)(T[k]->n_bytes / (T[k]->type == 0 ? 4 : 2));
        int rc = check_values(r, i, T_NAMES[k], *dst[k], count);
        if (rc) return rc;
    }
    return 0;
}

static int parse_pack(reader *r, cmdv_pack **out) {
    int rc;
    cmdv_pack *p = calloc(1, sizeof *p);
    if (!p) return cmdv_error_set(r->err, CMDV_PACK_ERR_NOMEM, "out of memory");
    uint32_t n = 0;
    if ((rc = read_header(r, p, &n))) goto fail;
    if ((rc = assign_tensors(r, n))) goto fail;
    p->entries = calloc(n, sizeof *p->entries);
    if (!p->entries) { rc = cmdv_error_set(r->err, CMDV_PACK_ERR_NOMEM, "out of memory"); goto fail; }
    p->n_entries = (int32_t)n;
    for (uint32_t i = 0; i < n; i++)
        if ((rc = read_entry_meta(r, i, &p->entries[i]))) goto fail;
    if ((rc = check_extra_tensors(r, n))) goto fail;
    char stem[256];
    path_stem(r->path, stem, sizeof stem);
    if ((rc = get_string(r, "general.name", stem, &p->name))) goto fail;
    /* BehaviorPack.validate */
    if (p->d_model < 1 || p->d_model > CMDV_PACK_MAX_DIM) {
        double dm;
        get_number(r, "commandv.recipient.d_model", CMDV_GGUF_U32, false, 0, &dm);
        rc = cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "recipient d_model %.0f outside 1..%d", dm, CMDV_PACK_MAX_DIM);
        goto fail;
    }
    if (p->n_layer < 1 || p->n_layer > CMDV_PACK_MAX_LAYERS) {
        double nl;
        get_number(r, "commandv.recipient.n_layer", CMDV_GGUF_U32, false, 0, &nl);
        rc = cmdv_error_set(r->err, CMDV_PACK_ERR_ENTRY, "recipient n_layer %.0f outside 1..%d", nl, CMDV_PACK_MAX_LAYERS);
        goto fail;
    }
    for (uint32_t i = 0; i < n; i++)
        if ((rc = validate_entry(r, p, i, &p->entries[i]))) goto fail;
    *out = p;
    return 0;
fail:
    cmdv_pack_free(p);
    return rc;
}

int cmdv_pack_parse(const void *data, size_t n, const char *source, cmdv_pack **out, cmdv_error *err) {
    cmdv_error local;
    if (!err) err = &local;
    cmdv_error_clear(err);
    if (!out || (!data && n)) return cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_pack_parse: NULL argument");
    *out = NULL;
    reader r;
    memset(&r, 0, sizeof r);
    r.path = source ? source : "<buffer>";
    r.data = data;
    r.n = n;
    r.err = err;
    char msg[sizeof err->msg];
    const cmdv_gguf_limits lim = cmdv_gguf_pack_limits();
    int rc = cmdv_gguf_check(data, n, r.path, &lim, &r.g, msg, sizeof msg);
    if (rc == 2) return cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "%s", msg);
    if (rc) return cmdv_error_set(err, CMDV_PACK_ERR_GGUF, "%s", msg);
    rc = ggml_view(&r);
    if (!rc && r.g.n_kv) {
        r.keys = malloc((size_t)r.g.n_kv * sizeof *r.keys);
        if (!r.keys) rc = cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory");
        else {
            for (uint64_t i = 0; i < r.g.n_kv; i++) r.keys[i] = (key_ref){r.g.kv[i].key, r.g.kv[i].key_len, (size_t)i};
            qsort(r.keys, (size_t)r.g.n_kv, sizeof *r.keys, cmp_key);
        }
    }
    if (!rc) rc = parse_pack(&r, out);
    if (!rc && r.ggml_refusal.code) { /* the pack rules passed, but ggml cannot read this file */
        cmdv_pack_free(*out);
        *out = NULL;
        *err = r.ggml_refusal;
        rc = err->code;
    }
    free(r.keys);
    free(r.slots);
    if (r.gg) gguf_free(r.gg);
    cmdv_gguf_file_free(&r.g);
    if (!rc) cmdv_error_clear(err);
    return rc;
}

/* A file type in words (runtime/safe_io.py _kind). */
static const char *file_kind(mode_t m) {
    if (S_ISDIR(m)) return "a folder";
    if (S_ISFIFO(m)) return "a FIFO (named pipe)";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISLNK(m)) return "a symbolic link";
    return "not a regular file";
}

/* runtime/safe_io.py read_regular(path, CMDV_PACK_MAX_BYTES, what="pack file"): opened without blocking (a FIFO
 * cannot hang the reader), a regular file only (checked after opening: a symlink to /dev/zero is a character
 * device), never more than the cap read even if the file grows; same messages. */
int cmdv_pack_load(const char *path, cmdv_pack **out, cmdv_error *err) {
    cmdv_error local;
    if (!err) err = &local;
    cmdv_error_clear(err);
    if (!path || !out) return cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_pack_load: NULL argument");
    *out = NULL;
    const unsigned long long max = CMDV_PACK_MAX_BYTES;
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        const int e = errno;
        if (e == ENOENT) return cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file not found: %s", path);
        if (e == ENXIO) return cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file %s is not a regular file", path);
        return cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file %s cannot be read: %s", path, strerror(e));
    }
    struct stat st;
    int rc = 0;
    const int flags = fcntl(fd, F_GETFL);
    if (fstat(fd, &st) != 0)
        rc = cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file %s cannot be read: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file %s is %s, not a regular file", path,
                            file_kind(st.st_mode));
    else if (st.st_size < 0 || (unsigned long long)st.st_size > max)
        rc = cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file %s is larger than %llu bytes", path, max);
    else if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
        rc = cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file %s cannot be read: %s", path, strerror(errno));
    if (rc) { close(fd); return rc; }
    /* sized by the file (+1 to see the end), growing only if it grew, never past the cap + 1 */
    size_t cap = (size_t)st.st_size + 1, n = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) rc = cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory");
    while (!rc) {
        if (n == cap) {
            if (n > max) {
                rc = cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file %s is larger than %llu bytes", path, max);
                break;
            }
            const size_t ncap = cap > max / 2 ? (size_t)max + 1 : 2 * cap;
            unsigned char *nb = realloc(buf, ncap);
            if (!nb) { rc = cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory"); break; }
            buf = nb;
            cap = ncap;
        }
        const ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            rc = cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file %s cannot be read: %s", path, strerror(errno));
            break;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    close(fd);
    if (!rc && n > max) rc = cmdv_error_set(err, CMDV_PACK_ERR_IO, "pack file %s is larger than %llu bytes", path, max);
    if (!rc) rc = cmdv_pack_parse(buf, n, path, out, err);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ model check and binding */

/* The first k code points of s (valid UTF-8), as Python's s[:k]. */
static int prefix_len(const char *s, size_t n, int k) {
    size_t i = 0;
    for (int c = 0; c < k && i < n; c++) {
        uint32_t cp;
        i += cmdv_utf8_next(s, n, i, &cp);
    }
    return (int)i;
}

int cmdv_pack_check_model(const cmdv_pack *p, const char *fingerprint, const char *arch, int32_t n_layer,
                          int32_t d_model, int force, cmdv_error *err) {
    cmdv_error_clear(err);
    if (!p || (!force && !arch)) return cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_pack_check_model: NULL argument");
    char rn[160];
    cmdv_py_repr(rn, sizeof rn, p->name.s, p->name.len);
    if (d_model != p->d_model || n_layer != p->n_layer)
        return cmdv_error_set(err, CMDV_PACK_ERR_MODEL,
                       "pack %s is for a model with d=%d, n_layer=%d; this model has d=%d, n_layer=%d", rn,
                       (int)p->d_model, (int)p->n_layer, (int)d_model, (int)n_layer);
    if (force) return CMDV_PACK_OK;
    if (strlen(arch) != p->arch.len || memcmp(arch, p->arch.s, p->arch.len) != 0) {
        char ra[96], rm[96];
        cmdv_py_repr(ra, sizeof ra, p->arch.s, p->arch.len);
        cmdv_py_repr(rm, sizeof rm, arch, strlen(arch));
        return cmdv_error_set(err, CMDV_PACK_ERR_MODEL, "pack %s is for arch %s, model is %s (use force to override)", rn, ra,
                       rm);
    }
    if (fingerprint && (strlen(fingerprint) != p->fingerprint.len ||
                        memcmp(fingerprint, p->fingerprint.s, p->fingerprint.len) != 0)) {
        return cmdv_error_set(err, CMDV_PACK_ERR_MODEL,
                       "pack %s was made for model %.*s\xE2\x80\xA6, this model is %.*s\xE2\x80\xA6 "
                       "(use force to override)",
                       rn, prefix_len(p->fingerprint.s, p->fingerprint.len, 16), p->fingerprint.s,
                       prefix_len(fingerprint, strlen(fingerprint), 16), fingerprint);
    }
    return CMDV_PACK_OK;
}

int32_t cmdv_pack_bind(const cmdv_pack *p, cmdv_edit_state *st, double strength, int32_t n_tokens, cmdv_error *err) {
    cmdv_error_clear(err);
    if (!p || !st) { cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_pack_bind: NULL argument"); return -1; }
    if (!isfinite(strength)) { cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "strength is not a finite number"); return -1; }
    if (n_tokens < 1) { cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "prompt has no tokens"); return -1; }
    int32_t *rows = malloc((size_t)n_tokens * sizeof *rows);
    if (!rows) { cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory"); return -1; }
    char rn[160], msg[256];
    cmdv_py_repr(rn, sizeof rn, p->name.s, p->name.len);
    /* pass 1: everything that can fail, so a refused pack adds nothing */
    for (int32_t i = 0; i < p->n_entries; i++) {
        const cmdv_pack_entry *e = &p->entries[i];
        const double eff = (double)e->strength * strength;
        if (!isfinite(eff)) {
            char fs[32];
            cmdv_py_float_repr(fs, sizeof fs, eff);
            cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "pack %s entry %d: strength %s is not finite", rn, (int)i, fs);
            free(rows);
            return -1;
        }
        if (cmdv_positions_rows(e->pos_first, e->pos_last, n_tokens, rows, msg, sizeof msg) < 0) {
            cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "pack %s entry %d: %s", rn, (int)i, msg);
            free(rows);
            return -1;
        }
    }
    int32_t added = 0;
    for (int32_t i = 0; i < p->n_entries; i++) {
        const cmdv_pack_entry *e = &p->entries[i];
        const double eff = (double)e->strength * strength;
        const int32_t n_rows = cmdv_positions_rows(e->pos_first, e->pos_last, n_tokens, rows, msg, sizeof msg);
        if (eff == 0.0 || n_rows <= 0) continue;
        if (cmdv_state_add_entry(st, e->layer, e->rank, e->act, e->A, e->b, e->C, e->q, e->P, e->Q, e->e, eff, rows,
                                 n_rows) < 0) {
            const char *why = cmdv_state_error(st);
            cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "the edit core refused pack %s entry %d: %s", rn, (int)i,
                    why ? why : "unknown error");
            free(rows);
            return -1;
        }
        added++;
    }
    free(rows);
    return added;
}
