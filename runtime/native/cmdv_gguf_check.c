/* cmdv_gguf_check.c - strict bounded GGUF walk (see cmdv_gguf_check.h; twin of runtime/pack/gguf_strict.py). C11. */

#include "cmdv_gguf_check.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdv_text.h"

#define MIN_KV_BYTES (8 + 4 + 1)                 /* key length, value type, smallest value */
#define MIN_TENSOR_INFO_BYTES (8 + 4 + 8 + 4 + 8) /* name length, n_dims, one dim, type, offset */

cmdv_gguf_limits cmdv_gguf_pack_limits(void) {
    /* runtime/pack/gguf_io.py: Limits(max_kv=64 + 8 * MAX_ENTRIES, max_tensors=6 * MAX_ENTRIES, max_string=1 MiB) */
    const cmdv_gguf_limits lim = {64 + 8 * 4096, 6 * 4096, 256, 1u << 20, 1u << 16, 4, (1ull << 31) - 1, 256, 2};
    return lim;
}

typedef struct {
    const unsigned char *d;
    size_t n, pos;
    const char *source;
    char *msg;
    size_t cap;
    bool failed;
} cur_t;

static int fail(cur_t *c, const char *fmt, ...) {
    if (!c->failed) {
        int k = snprintf(c->msg, c->cap, "%s: ", c->source);
        if (k < 0) k = 0;
        if ((size_t)k < c->cap) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->msg + k, c->cap - (size_t)k, fmt, ap);
            va_end(ap);
        }
        c->failed = true;
    }
    return 1;
}

static size_t left(const cur_t *c) { return c->n - c->pos; }

/* n bytes at the cursor, or NULL after a "truncated" failure. */
static const unsigned char *take(cur_t *c, uint64_t n, const char *what) {
    if (n > left(c)) {
        fail(c, "truncated GGUF: %s at byte %zu needs %" PRIu64 " bytes, %zu left", what, c->pos, n, left(c));
        return NULL;
    }
    const unsigned char *p = c->d + c->pos;
    c->pos += (size_t)n;
    return p;
}

static uint64_t le(const unsigned char *p, int k) {
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static bool u32(cur_t *c, const char *what, uint32_t *v) {
    const unsigned char *p = take(c, 4, what);
    if (p) *v = (uint32_t)le(p, 4);
    return p != NULL;
}

static bool u64(cur_t *c, const char *what, uint64_t *v) {
    const unsigned char *p = take(c, 8, what);
    if (p) *v = le(p, 8);
    return p != NULL;
}

/* A length-prefixed UTF-8 string of at most limit bytes. */
static bool string(cur_t *c, const char *what, uint64_t limit, const char **s, size_t *len) {
    char w[160];
    uint64_t n;
    snprintf(w, sizeof w, "%s length", what);
    if (!u64(c, w, &n)) return false;
    if (n > limit) { fail(c, "%s claims %" PRIu64 " bytes (limit %" PRIu64 ")", what, n, limit); return false; }
    const unsigned char *p = take(c, n, what);
    if (!p) return false;
    if (!cmdv_utf8_valid((const char *)p, (size_t)n)) { fail(c, "%s is not valid UTF-8", what); return false; }
    *s = (const char *)p;
    *len = (size_t)n;
    return true;
}

static int scalar_size(uint32_t t) {
    switch (t) {
    case 0: case 1: case 7: return 1;
    case 2: case 3: return 2;
    case 4: case 5: case 6: return 4;
    case 10: case 11: case 12: return 8;
    default: return 0;
    }
}

/* One value of type vtype for key (repr in rk); fills kv. */
static bool value(cur_t *c, uint32_t vtype, const char *rk, const cmdv_gguf_limits *lim, bool in_array,
                  cmdv_gguf_kv *kv) {
    char what[160];
    snprintf(what, sizeof what, "metadata key %s", rk);
    const int sz = scalar_size(vtype);
    if (sz) {
        const unsigned char *p = take(c, (uint64_t)sz, what);
        if (!p) return false;
        if (kv) { kv->val = p; kv->val_len = (size_t)sz; }
        return true;
    }
    if (vtype == CMDV_GGUF_STRING) {
        char w[192];
        const char *s;
        size_t len;
        snprintf(w, sizeof w, "%s string value", what);
        if (!string(c, w, lim->max_string, &s, &len)) return false;
        if (kv) { kv->val = (const unsigned char *)s; kv->val_len = len; }
        return true;
    }
    if (vtype == CMDV_GGUF_ARRAY && !in_array) {
        char w[192];
        uint32_t itype;
        uint64_t n;
        snprintf(w, sizeof w, "%s array item type", what);
        if (!u32(c, w, &itype)) return false;
        snprintf(w, sizeof w, "%s array length", what);
        if (!u64(c, w, &n)) return false;
        if (n > lim->max_array) {
            fail(c, "%s is an array of %" PRIu64 " items (limit %" PRIu64 ")", what, n, lim->max_array);
            return false;
        }
        if (itype == CMDV_GGUF_ARRAY) { fail(c, "%s is a nested array (not supported)", what); return false; }
        if (!scalar_size(itype) && itype != CMDV_GGUF_STRING) {
            fail(c, "%s array has unknown item type %" PRIu32, what, itype);
            return false;
        }
        const uint64_t min_item = scalar_size(itype) ? (uint64_t)scalar_size(itype) : 8;
        if (n * min_item > left(c)) { /* n <= max_array: no overflow */
            fail(c, "truncated GGUF: %s array of %" PRIu64 " items needs at least %" PRIu64 " bytes, %zu left", what,
                 n, n * min_item, left(c));
            return false;
        }
        const size_t start = c->pos;
        for (uint64_t i = 0; i < n; i++)
            if (!value(c, itype, rk, lim, true, NULL)) return false;
        if (kv) { kv->item_type = itype; kv->n_items = n; kv->val = c->d + start; kv->val_len = c->pos - start; }
        return true;
    }
    fail(c, "%s has unknown value type %" PRIu32, what, vtype);
    return false;
}

/* ---- duplicates: sort pointers by (name, position) ---- */
typedef struct {
    const char *s;
    size_t n, index;
} named;

static int cmp_named(const void *a, const void *b) {
    const named *x = a, *y = b;
    const size_t m = x->n < y->n ? x->n : y->n;
    const int r = m ? memcmp(x->s, y->s, m) : 0;
    if (r) return r;
    if (x->n != y->n) return x->n < y->n ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* For names[0..count): sets dup[i] = 1 when an earlier name equals names[i]; returns the first such i or -1
 * (-2: out of memory). */
static int64_t mark_dups(named *v, size_t count, unsigned char *dup) {
    if (count < 2) return -1;
    named *s = malloc(count * sizeof *s);
    if (!s) return -2;
    memcpy(s, v, count * sizeof *s);
    qsort(s, count, sizeof *s, cmp_named);
    int64_t first = -1;
    for (size_t i = 1; i < count; i++) {
        if (s[i].n == s[i - 1].n && (s[i].n == 0 || memcmp(s[i].s, s[i - 1].s, s[i].n) == 0)) {
            if (dup) dup[s[i].index] = 1;
            if (first < 0 || (int64_t)s[i].index < first) first = (int64_t)s[i].index;
        }
    }
    free(s);
    return first;
}

/* Python gguf.GGMLQuantizationType names (for messages). */
static const char *type_name(uint32_t t, char *buf, size_t cap) {
    static const char *names[] = {"F32", "F16", "Q4_0", "Q4_1", NULL, NULL, "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
                                  "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
                                  "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
                                  "BF16", NULL, NULL, NULL, "TQ1_0", "TQ2_0", NULL, NULL, NULL, "MXFP4",
                                  "NVFP4", "Q1_0"};
    if (t < sizeof names / sizeof names[0] && names[t]) return names[t];
    snprintf(buf, cap, "unknown type %" PRIu32, t);
    return buf;
}

static int check_kvs(cur_t *c, cmdv_gguf_file *out, const cmdv_gguf_limits *lim) {
    named *keys = out->n_kv ? malloc((size_t)out->n_kv * sizeof *keys) : NULL;
    if (out->n_kv && !keys) return 2;
    uint64_t i = 0;
    bool ok = true;
    for (; i < out->n_kv && ok; i++) {
        cmdv_gguf_kv *kv = &out->kv[i];
        ok = string(c, "metadata key name", lim->max_key, &kv->key, &kv->key_len);
        if (!ok) break;
        char rk[128], what[160];
        cmdv_py_repr(rk, sizeof rk, kv->key, kv->key_len);
        if (kv->key_len && memchr(kv->key, 0, kv->key_len)) { /* ggml compares key names as C strings */
            ok = !fail(c, "metadata key name %s contains a NUL byte", rk);
            break;
        }
        snprintf(what, sizeof what, "metadata key %s value type", rk);
        ok = u32(c, what, &kv->type) && value(c, kv->type, rk, lim, false, kv);
        if (!ok) break;
        keys[i] = (named){kv->key, kv->key_len, (size_t)i};
    }
    /* a duplicate among the keys read before the failure (or all of them) is what Python reports first */
    const int64_t d = mark_dups(keys, (size_t)i, NULL);
    int rc = 0;
    if (d == -2) rc = 2;
    else if (d >= 0) {
        char rk[128];
        cmdv_py_repr(rk, sizeof rk, out->kv[d].key, out->kv[d].key_len);
        c->failed = false;
        rc = fail(c, "duplicate metadata key %s", rk);
    } else if (!ok) rc = 1;
    free(keys);
    return rc;
}

static int check_alignment(cur_t *c, cmdv_gguf_file *out) {
    out->alignment = 32;
    const int64_t k = cmdv_gguf_find_key(out, "general.alignment");
    if (k < 0) return 0;
    const cmdv_gguf_kv *kv = &out->kv[k];
    char shown[96];
    if (kv->type == CMDV_GGUF_U32) {
        const uint64_t a = le(kv->val, 4);
        if (a >= 1 && a <= (1u << 16) && (a & (a - 1)) == 0) { out->alignment = a; return 0; }
        snprintf(shown, sizeof shown, "%" PRIu64, a);
    } else if (kv->type == CMDV_GGUF_STRING) {
        cmdv_py_repr(shown, sizeof shown, (const char *)kv->val, kv->val_len);
    } else if (kv->type <= 12 && kv->type != CMDV_GGUF_ARRAY) { /* the other scalars, shown as Python would */
        static const int width[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
        const uint64_t u = le(kv->val, width[kv->type]);
        if (kv->type == 1 || kv->type == 3 || kv->type == CMDV_GGUF_I32 || kv->type == 11) {
            const int64_t v = kv->type == 1 ? (int8_t)u : kv->type == 3 ? (int16_t)u
                              : kv->type == CMDV_GGUF_I32 ? (int32_t)u : (int64_t)u;
            snprintf(shown, sizeof shown, "%" PRId64, v);
        } else if (kv->type == 7) {
            snprintf(shown, sizeof shown, "%s", u ? "True" : "False");
        } else if (kv->type == CMDV_GGUF_F32) {
            const uint32_t b = (uint32_t)u;
            float f;
            memcpy(&f, &b, sizeof f);
            cmdv_py_float_repr(shown, sizeof shown, f);
        } else if (kv->type == 12) {
            double d;
            memcpy(&d, &u, sizeof d);
            cmdv_py_float_repr(shown, sizeof shown, d);
        } else {
            snprintf(shown, sizeof shown, "%" PRIu64, u);
        }
    } else {
        snprintf(shown, sizeof shown, "(a value of GGUF type %" PRIu32 ")", kv->type);
    }
    return fail(c, "general.alignment %s is not a power of two up to 65536 (UINT32)", shown);
}

static int cmp_start(const void *a, const void *b) {
    const cmdv_gguf_tensor *x = *(const cmdv_gguf_tensor *const *)a, *y = *(const cmdv_gguf_tensor *const *)b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return (x > y) - (x < y); /* file order */
}

/* gguf_strict.py _check_tensor_ranges: the float32 size of all tensors is at most max_expansion times the file
 * size, and no two tensors share a byte (empty tensors hold none). Every tensor is inside the file here. */
static int check_ranges(cur_t *c, cmdv_gguf_file *out, const cmdv_gguf_limits *lim) {
    uint64_t decoded = 0; /* each term <= 2 * n (the tensor is inside the file); saturating all the same */
    size_t m = 0;
    for (uint64_t i = 0; i < out->n_tensors; i++) {
        const cmdv_gguf_tensor *t = &out->tensors[i];
        const uint64_t f32 = t->n_bytes / (t->type == 0 ? 4 : 2) * 4;
        decoded = f32 > UINT64_MAX - decoded ? UINT64_MAX : decoded + f32;
        m += t->n_bytes > 0;
    }
    const uint64_t n = c->n, k = lim->max_expansion ? lim->max_expansion : 1;
    if (decoded / k > n || (decoded / k == n && decoded % k)) /* decoded > k * n, without overflow */
        return fail(c, "tensors would expand to %" PRIu64 " bytes as float32, more than %" PRIu64 " times the file "
                    "size (%" PRIu64 " bytes): tensor data is shared or overlaps", decoded, lim->max_expansion, n);
    if (m < 2) return 0;
    const cmdv_gguf_tensor **order = malloc(m * sizeof *order);
    if (!order) return 2;
    m = 0;
    for (uint64_t i = 0; i < out->n_tensors; i++)
        if (out->tensors[i].n_bytes > 0) order[m++] = &out->tensors[i];
    qsort(order, m, sizeof *order, cmp_start);
    const cmdv_gguf_tensor *far = order[0]; /* the tensor reaching furthest so far */
    int rc = 0;
    for (size_t j = 1; j < m && !rc; j++) {
        const cmdv_gguf_tensor *t = order[j];
        const uint64_t far_end = far->start + far->n_bytes, t_end = t->start + t->n_bytes;
        if (t->start < far_end) {
            char ra[128], rb[128];
            cmdv_py_repr(ra, sizeof ra, far->name, far->name_len);
            cmdv_py_repr(rb, sizeof rb, t->name, t->name_len);
            rc = fail(c, "tensors %s and %s share data bytes %" PRIu64 "..%" PRIu64 " (each tensor needs its own "
                      "bytes)", ra, rb, t->start, far_end < t_end ? far_end : t_end);
        } else if (t_end > far_end) {
            far = t;
        }
    }
    free(order);
    return rc;
}

static int check_tensors(cur_t *c, cmdv_gguf_file *out, const cmdv_gguf_limits *lim) {
    for (uint64_t i = 0; i < out->n_tensors; i++) {
        cmdv_gguf_tensor *t = &out->tensors[i];
        if (!string(c, "tensor name", lim->max_name, &t->name, &t->name_len)) return 1;
        char rn[128], what[192];
        cmdv_py_repr(rn, sizeof rn, t->name, t->name_len);
        snprintf(what, sizeof what, "tensor %s dimension count", rn);
        if (!u32(c, what, &t->n_dims)) return 1;
        if (t->n_dims < 1 || t->n_dims > lim->max_dims)
            return fail(c, "tensor %s has %" PRIu32 " dimensions (allowed 1..%" PRIu64 ")", rn, t->n_dims,
                        lim->max_dims);
        snprintf(what, sizeof what, "tensor %s dims", rn);
        uint64_t mx = 0;
        for (uint32_t j = 0; j < t->n_dims; j++) {
            if (!u64(c, what, &t->dims[j])) return 1;
            if (t->dims[j] > mx) mx = t->dims[j];
        }
        if (mx > lim->max_dim_len)
            return fail(c, "tensor %s dimension %" PRIu64 " exceeds %" PRIu64, rn, mx, lim->max_dim_len);
        snprintf(what, sizeof what, "tensor %s type", rn);
        if (!u32(c, what, &t->type)) return 1;
        snprintf(what, sizeof what, "tensor %s offset", rn);
        if (!u64(c, what, &t->offset)) return 1;
    }
    const uint64_t pad = (out->alignment - c->pos % out->alignment) % out->alignment;
    out->data_offset = c->pos + pad;
    /* second pass, in file order: duplicate, type, alignment, bounds */
    named *names = out->n_tensors ? malloc((size_t)out->n_tensors * sizeof *names) : NULL;
    unsigned char *dup = out->n_tensors ? calloc((size_t)out->n_tensors, 1) : NULL;
    if (out->n_tensors && (!names || !dup)) { free(names); free(dup); return 2; }
    for (uint64_t i = 0; i < out->n_tensors; i++)
        names[i] = (named){out->tensors[i].name, out->tensors[i].name_len, (size_t)i};
    const int64_t d = mark_dups(names, (size_t)out->n_tensors, dup);
    free(names);
    if (d == -2) { free(dup); return 2; }
    int rc = 0;
    for (uint64_t i = 0; i < out->n_tensors && !rc; i++) {
        cmdv_gguf_tensor *t = &out->tensors[i];
        char rn[128], tb[48];
        cmdv_py_repr(rn, sizeof rn, t->name, t->name_len);
        if (dup[i]) { rc = fail(c, "duplicate tensor %s", rn); break; }
        if (t->type != 0 && t->type != 1) {
            rc = fail(c, "tensor %s has type %s; packs use F32 or F16", rn, type_name(t->type, tb, sizeof tb));
            break;
        }
        /* element count, saturating (a product beyond the file size is "beyond the end" anyway) */
        uint64_t n_el = 1;
        bool zero = false;
        for (uint32_t j = 0; j < t->n_dims; j++) zero |= t->dims[j] == 0;
        for (uint32_t j = 0; j < t->n_dims && !zero; j++)
            n_el = (n_el > UINT64_MAX / t->dims[j]) ? UINT64_MAX : n_el * t->dims[j];
        if (zero) n_el = 0;
        const uint64_t esz = t->type == 0 ? 4 : 2;
        t->n_bytes = n_el > UINT64_MAX / esz ? UINT64_MAX : n_el * esz;
        if (t->offset % out->alignment) {
            rc = fail(c, "tensor %s offset %" PRIu64 " is not a multiple of the alignment %" PRIu64, rn, t->offset,
                      out->alignment);
            break;
        }
        t->start = t->offset > UINT64_MAX - out->data_offset ? UINT64_MAX : out->data_offset + t->offset;
        if (t->start > c->n || t->n_bytes > c->n - t->start) {
            char end[32];
            if (t->n_bytes > UINT64_MAX - t->start) snprintf(end, sizeof end, "beyond 2^64");
            else snprintf(end, sizeof end, "%" PRIu64, t->start + t->n_bytes);
            rc = fail(c, "truncated GGUF: tensor %s data (bytes %" PRIu64 "..%s) lies beyond the end of the file "
                      "(%zu bytes)", rn, t->start, end, c->n);
        }
    }
    free(dup);
    if (!rc) rc = check_ranges(c, out, lim);
    return rc;
}

int cmdv_gguf_check(const unsigned char *data, size_t n, const char *source, const cmdv_gguf_limits *lim,
                    cmdv_gguf_file *out, char *msg, size_t cap) {
    memset(out, 0, sizeof *out);
    cur_t c = {data, n, 0, source ? source : "<buffer>", msg, cap, false};
    if (n < 4 || memcmp(data, "GGUF", 4) != 0) {
        char m[64];
        cmdv_py_bytes_repr(m, sizeof m, data, n < 4 ? n : 4);
        return fail(&c, "not a GGUF file (magic %s, expected b'GGUF')", m);
    }
    c.pos = 4;
    if (!u32(&c, "version", &out->version)) return 1;
    if (out->version != 2 && out->version != 3) {
        const uint32_t v = out->version;
        const uint32_t sw = (v >> 24) | ((v >> 8) & 0xFF00u) | ((v << 8) & 0xFF0000u) | (v << 24);
        if (sw == 2 || sw == 3) return fail(&c, "big-endian GGUF is not supported");
        return fail(&c, "GGUF version %" PRIu32 " not supported (known: (2, 3))", v);
    }
    if (!u64(&c, "tensor count", &out->n_tensors) || !u64(&c, "metadata key count", &out->n_kv)) return 1;
    if (out->n_kv > lim->max_kv)
        return fail(&c, "GGUF header claims %" PRIu64 " metadata keys (limit %" PRIu64 ")", out->n_kv, lim->max_kv);
    if (out->n_tensors > lim->max_tensors)
        return fail(&c, "GGUF header claims %" PRIu64 " tensors (limit %" PRIu64 ")", out->n_tensors, lim->max_tensors);
    if (out->n_kv * MIN_KV_BYTES + out->n_tensors * MIN_TENSOR_INFO_BYTES > left(&c))
        return fail(&c, "truncated GGUF: header claims %" PRIu64 " metadata keys and %" PRIu64 " tensors, only %zu "
                    "bytes follow", out->n_kv, out->n_tensors, left(&c));
    /* counts are capped and backed by bytes: these allocations are bounded by the file size */
    out->kv = calloc(out->n_kv ? (size_t)out->n_kv : 1, sizeof *out->kv);
    out->tensors = calloc(out->n_tensors ? (size_t)out->n_tensors : 1, sizeof *out->tensors);
    int rc = (!out->kv || !out->tensors) ? 2 : 0;
    if (!rc) rc = check_kvs(&c, out, lim);
    if (!rc) rc = check_alignment(&c, out);
    if (!rc) rc = check_tensors(&c, out, lim);
    if (rc == 2) snprintf(msg, cap, "%s: out of memory", c.source);
    if (rc) cmdv_gguf_file_free(out);
    return rc;
}

void cmdv_gguf_file_free(cmdv_gguf_file *f) {
    if (!f) return;
    free(f->kv);
    free(f->tensors);
    f->kv = NULL;
    f->tensors = NULL;
}

int64_t cmdv_gguf_find_key(const cmdv_gguf_file *f, const char *key) {
    const size_t k = strlen(key);
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (f->kv[i].key_len == k && memcmp(f->kv[i].key, key, k) == 0) return (int64_t)i;
    return -1;
}
