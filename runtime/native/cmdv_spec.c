/* cmdv_spec.c - activation names and position specs of pack entries (see cmdv_spec.h). Plain C11. */

#include "cmdv_spec.h"

#include <stdio.h>
#include <string.h>

#include "cmdv_core.h"
#include "cmdv_text.h"

/* Names and aliases of runtime/edit/activations.py (KINDS, ALIASES); tests/test_activations.py checks both agree. */
static const struct { const char *name; int32_t id; } ACTS[] = {
    {"linear", CMDV_ACT_LINEAR}, {"identity", CMDV_ACT_LINEAR}, {"none", CMDV_ACT_LINEAR}, {"", CMDV_ACT_LINEAR},
    {"relu", CMDV_ACT_RELU},     {"gelu", CMDV_ACT_GELU},       {"gelu_new", CMDV_ACT_GELU_TANH},
    {"gelu_pytorch_tanh", CMDV_ACT_GELU_TANH}, {"silu", CMDV_ACT_SILU}, {"swish", CMDV_ACT_SILU},
    {"tanh", CMDV_ACT_TANH},     {"sigmoid", CMDV_ACT_SIGMOID},
};
#define SUPPORTED_ACTS "gelu, gelu_new, gelu_pytorch_tanh, linear, relu, sigmoid, silu, swish, tanh"

int32_t cmdv_act_parse(const char *name, size_t n, char *msg, size_t cap) {
    size_t a, b;
    cmdv_py_strip(name, n, &a, &b);
    char low[32];
    const size_t len = b - a;
    if (len < sizeof low) {
        for (size_t i = 0; i < len; i++) {
            const char c = name[a + i];
            low[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c; /* non-ASCII never lowers to a name */
        }
        for (size_t i = 0; i < sizeof ACTS / sizeof ACTS[0]; i++)
            if (strlen(ACTS[i].name) == len && memcmp(ACTS[i].name, low, len) == 0) return ACTS[i].id;
    }
    char r[96];
    cmdv_py_repr(r, sizeof r, name, n);
    snprintf(msg, cap, "unknown activation %s; supported: %s", r, SUPPORTED_ACTS);
    return -1;
}

static int bad_spec(char *msg, size_t cap, const char *spec, size_t n, const char *fmt_tail, const char *part,
                    size_t part_n, long count) {
    char rs[96], rp[64];
    cmdv_py_repr(rs, sizeof rs, spec, n);
    if (part) {
        cmdv_py_repr(rp, sizeof rp, part, part_n);
        snprintf(msg, cap, "bad positions spec %s: part %s %s", rs, rp, fmt_tail);
    } else {
        snprintf(msg, cap, "bad positions spec %s: count %ld outside 1..%d", rs, count, CMDV_MAX_SPAN);
    }
    return -1;
}

int cmdv_positions_parse(const char *spec, size_t n, int32_t *first, int32_t *last, char *msg, size_t cap) {
    size_t a, b;
    cmdv_py_strip(spec, n, &a, &b);
    if (a == b) {
        snprintf(msg, cap, "empty positions spec (expected e.g. 'l1' or 'f1+l1')");
        return -1;
    }
    int32_t f = 0, l = 0;
    size_t p = a;
    for (;;) { /* parts of spec.strip().lower().split("+") */
        size_t q = p;
        while (q < b && spec[q] != '+') q++;
        size_t s0, s1;
        cmdv_py_strip(spec + p, q - p, &s0, &s1);
        s0 += p;
        s1 += p;
        /* ^([fl])(\d{1,4})$ on the stripped part (lower-cased: only ASCII F/L can lower to f/l) */
        const char kind = (s1 > s0) ? spec[s0] : 0;
        const bool is_f = kind == 'f' || kind == 'F', is_l = kind == 'l' || kind == 'L';
        long value = 0;
        int digits = 0;
        bool ok = is_f || is_l;
        for (size_t i = s0 + 1; ok && i < s1;) {
            uint32_t cp;
            const size_t len = cmdv_utf8_next(spec, s1, i, &cp);
            const int dv = cmdv_unicode_digit(cp);
            if (dv < 0 || ++digits > 4) ok = false;
            else value = value * 10 + dv;
            i += len;
        }
        if (!ok || digits == 0) {
            /* the message shows the part as Python does: lower-cased, before its own strip() */
            char low[64];
            size_t m = q - p < sizeof low ? q - p : sizeof low;
            for (size_t i = 0; i < m; i++) {
                const char c = spec[p + i];
                low[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
            }
            if (m < q - p) { /* cut: do not end inside a UTF-8 sequence */
                size_t j = m;
                while (j > 0 && ((unsigned char)low[j - 1] & 0xC0) == 0x80) j--;
                if (j > 0) {
                    const unsigned char lead = (unsigned char)low[j - 1];
                    const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
                    if (m - (j - 1) < need) m = j - 1;
                }
            }
            return bad_spec(msg, cap, spec, n, "is not fN or lN", low, m, 0);
        }
        if (value < 1 || value > CMDV_MAX_SPAN) return bad_spec(msg, cap, spec, n, NULL, NULL, 0, value);
        if (is_f && value > f) f = (int32_t)value;
        if (is_l && value > l) l = (int32_t)value;
        if (q >= b) break;
        p = q + 1;
    }
    *first = f;
    *last = l;
    return 0;
}

int32_t cmdv_positions_rows(int32_t first, int32_t last, int32_t n_tokens, int32_t *rows, char *msg, size_t cap) {
    const int32_t need = first > last ? first : last;
    if (n_tokens < need) {
        char spec[32];
        if (first && last) snprintf(spec, sizeof spec, "f%d+l%d", (int)first, (int)last);
        else if (first) snprintf(spec, sizeof spec, "f%d", (int)first);
        else snprintf(spec, sizeof spec, "l%d", (int)last);
        snprintf(msg, cap, "positions '%s' need at least %d prompt tokens, prompt has %d", spec, (int)need,
                 (int)n_tokens);
        return -1;
    }
    int32_t k = 0;
    for (int32_t i = 0; i < n_tokens; i++)
        if (i < first || i >= n_tokens - last) rows[k++] = i;
    return k;
}
