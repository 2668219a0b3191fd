/* cmdv_json.c - bounded JSON checks with Python json.loads semantics (see cmdv_json.h). Plain C11. */

#include "cmdv_json.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdv_text.h"

typedef struct {
    const char *s;
    size_t n, i;
    char *msg;
    size_t cap;
} cursor;

/* The reason as the Python reader shows it (json.JSONDecodeError.msg: no position). */
static int fail(cursor *c, const char *what) {
    snprintf(c->msg, c->cap, "%s", what);
    return -1;
}

static void skip_ws(cursor *c) {
    while (c->i < c->n && (c->s[c->i] == ' ' || c->s[c->i] == '\t' || c->s[c->i] == '\n' || c->s[c->i] == '\r'))
        c->i++;
}

static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static int hex4(const char *s, size_t n, size_t i, uint32_t *v) {
    if (n < 4 || i > n - 4) return -1;
    uint32_t x = 0;
    for (size_t k = 0; k < 4; k++) {
        const char h = s[i + k];
        const int d = (h >= '0' && h <= '9')   ? h - '0'
                      : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                      : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                               : -1;
        if (d < 0) return -1;
        x = (x << 4) | (uint32_t)d;
    }
    *v = x;
    return 0;
}

/* A string starting at s[i] == '"'; advances past the closing quote. With out != NULL, appends the
 * decoded code points (WTF-8: a lone surrogate escape is kept as its own code point) to out[*olen..]
 * (out must hold the raw string's length). */
static int scan_string(cursor *c, char *out, size_t *olen) {
    const size_t start = c->i;
    c->i++;
    for (;;) {
        if (c->i >= c->n) { c->i = start; return fail(c, "Unterminated string starting at"); }
        const unsigned char ch = (unsigned char)c->s[c->i];
        if (ch == '"') { c->i++; return 0; }
        if (ch < 0x20) return fail(c, "Invalid control character at");
        if (ch != '\\') {
            if (out) out[(*olen)++] = (char)ch;
            c->i++;
            continue;
        }
        if (c->i + 1 >= c->n) { c->i = start; return fail(c, "Unterminated string starting at"); }
        const char e = c->s[c->i + 1];
        uint32_t cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u': cp = 0; break;
        default: return fail(c, "Invalid \\escape");
        }
        if (e != 'u') {
            if (out) out[(*olen)++] = (char)cp;
            c->i += 2;
            continue;
        }
        if (hex4(c->s, c->n, c->i + 2, &cp) != 0) return fail(c, "Invalid \\uXXXX escape");
        c->i += 6;
        uint32_t lo;
        if (cp >= 0xD800 && cp <= 0xDBFF && c->i + 1 < c->n && c->s[c->i] == '\\' && c->s[c->i + 1] == 'u' &&
            hex4(c->s, c->n, c->i + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            c->i += 6;
        }
        if (out) *olen += cmdv_utf8_put(out + *olen, cp); /* <= 4 bytes for >= 6 bytes of input */
    }
}

/* A number at s[i] ('-' or a digit); *is_float set. Python's scanner: -?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)? */
static int scan_number(cursor *c, bool *is_float) {
    const size_t start = c->i;
    size_t i = c->i;
    if (c->s[i] == '-') i++;
    const size_t d0 = i;
    if (i < c->n && c->s[i] == '0') i++;
    else if (i < c->n && c->s[i] >= '1' && c->s[i] <= '9') { while (i < c->n && is_digit(c->s[i])) i++; }
    else return fail(c, "Expecting value");
    const size_t n_digits = i - d0;
    bool fl = false;
    if (i + 1 < c->n && c->s[i] == '.' && is_digit(c->s[i + 1])) {
        i += 2;
        while (i < c->n && is_digit(c->s[i])) i++;
        fl = true;
    }
    if (i < c->n && (c->s[i] == 'e' || c->s[i] == 'E')) {
        size_t j = i + 1;
        if (j < c->n && (c->s[j] == '+' || c->s[j] == '-')) j++;
        if (j < c->n && is_digit(c->s[j])) {
            while (j < c->n && is_digit(c->s[j])) j++;
            i = j;
            fl = true;
        }
    }
    if (!fl && n_digits > CMDV_JSON_MAX_INT_DIGITS) {
        c->i = start;
        /* Python raises ValueError("Exceeds the limit ...: value has N digits; ..."); the reader shows the part
         * before the first colon */
        snprintf(c->msg, c->cap, "Exceeds the limit (%d digits) for integer string conversion",
                 CMDV_JSON_MAX_INT_DIGITS);
        return -1;
    }
    c->i = i;
    *is_float = fl;
    return 0;
}

static bool word(cursor *c, const char *w) {
    const size_t k = strlen(w);
    if (c->n - c->i < k || memcmp(c->s + c->i, w, k) != 0) return false;
    c->i += k;
    return true;
}

/* A scalar at s[i] (not '{' / '['); its kind in *kind. */
static int scan_scalar(cursor *c, cmdv_json_kind *kind) {
    const char ch = c->s[c->i];
    if (ch == '"') { *kind = CMDV_JSON_STRING; return scan_string(c, NULL, NULL); }
    if (ch == 'n' && word(c, "null")) { *kind = CMDV_JSON_NULL; return 0; }
    if (ch == 't' && word(c, "true")) { *kind = CMDV_JSON_BOOL; return 0; }
    if (ch == 'f' && word(c, "false")) { *kind = CMDV_JSON_BOOL; return 0; }
    if ((ch == 'N' && word(c, "NaN")) || (ch == 'I' && word(c, "Infinity")) || (ch == '-' && word(c, "-Infinity"))) {
        *kind = CMDV_JSON_FLOAT;
        return 0;
    }
    if (ch == '-' || is_digit(ch)) {
        bool fl = false;
        if (scan_number(c, &fl) != 0) return -1;
        *kind = fl ? CMDV_JSON_FLOAT : CMDV_JSON_INT;
        return 0;
    }
    return fail(c, "Expecting value");
}

/* After '{' or ',' inside an object (whitespace skipped): "key" ws ':' ws. */
static int member_key(cursor *c) {
    if (c->i >= c->n || c->s[c->i] != '"') return fail(c, "Expecting property name enclosed in double quotes");
    if (scan_string(c, NULL, NULL) != 0) return -1;
    skip_ws(c);
    if (c->i >= c->n || c->s[c->i] != ':') return fail(c, "Expecting ':' delimiter");
    c->i++;
    skip_ws(c);
    return 0;
}

int cmdv_json_check(const char *s, size_t n, cmdv_json_kind *kind, char *msg, size_t cap) {
    cursor c = {s, n, 0, msg, cap};
    char stack[CMDV_JSON_MAX_DEPTH]; /* '{' or '[' per open container */
    int depth = 0;
    bool have_top = false;
    if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) return fail(&c, "Unexpected UTF-8 BOM (decode using utf-8-sig)");
    skip_ws(&c);
    for (;;) {
        /* a value starts at c.i */
        if (c.i >= c.n) return fail(&c, "Expecting value");
        const char ch = s[c.i];
        if (ch == '{' || ch == '[') {
            if (!have_top) { *kind = ch == '{' ? CMDV_JSON_OBJECT : CMDV_JSON_ARRAY; have_top = true; }
            if (depth >= CMDV_JSON_MAX_DEPTH) return fail(&c, "nested too deeply");
            stack[depth++] = ch;
            c.i++;
            skip_ws(&c);
            const char close = ch == '{' ? '}' : ']';
            if (c.i < c.n && s[c.i] == close) {
                c.i++;
                depth--;
            } else if (ch == '{') {
                if (member_key(&c) != 0) return -1;
                continue;
            } else {
                continue;
            }
        } else {
            cmdv_json_kind k;
            if (scan_scalar(&c, &k) != 0) return -1;
            if (!have_top) { *kind = k; have_top = true; }
        }
        /* after a value: close containers or move to the next element */
        for (;;) {
            if (depth == 0) {
                skip_ws(&c);
                if (c.i != c.n) return fail(&c, "Extra data");
                return 0;
            }
            skip_ws(&c);
            const char top = stack[depth - 1];
            if (c.i < c.n && s[c.i] == ',') {
                c.i++;
                skip_ws(&c);
                if (top == '{' && member_key(&c) != 0) return -1;
                break; /* next value */
            }
            if (c.i < c.n && s[c.i] == (top == '{' ? '}' : ']')) {
                c.i++;
                depth--;
                continue;
            }
            return fail(&c, "Expecting ',' delimiter");
        }
    }
}

/* ---------------------------------------------------------------- diagnostics (on checked JSON) */

static void skip_string(cursor *c) {
    c->i++;
    while (c->i < c->n && c->s[c->i] != '"') c->i += c->s[c->i] == '\\' ? 2 : 1;
    c->i++;
}

static void skip_value(cursor *c) {
    const char ch = c->s[c->i];
    if (ch == '"') { skip_string(c); return; }
    if (ch == '{' || ch == '[') {
        size_t depth = 0;
        while (c->i < c->n) {
            const char x = c->s[c->i];
            if (x == '"') { skip_string(c); continue; }
            if (x == '{' || x == '[') depth++;
            else if (x == '}' || x == ']') depth--;
            c->i++;
            if (depth == 0) return;
        }
        return;
    }
    while (c->i < c->n && !strchr(",]} \t\n\r", c->s[c->i])) c->i++;
}

static cmdv_json_kind classify(const cursor *c) {
    const char ch = c->s[c->i];
    switch (ch) {
    case '"': return CMDV_JSON_STRING;
    case '{': return CMDV_JSON_OBJECT;
    case '[': return CMDV_JSON_ARRAY;
    case 't': case 'f': return CMDV_JSON_BOOL;
    case 'n': return CMDV_JSON_NULL;
    case 'N': case 'I': return CMDV_JSON_FLOAT;
    default: break;
    }
    for (size_t i = c->i; i < c->n && !strchr(",]} \t\n\r", c->s[i]); i++)
        if (c->s[i] == '.' || c->s[i] == 'e' || c->s[i] == 'E' || c->s[i] == 'I') return CMDV_JSON_FLOAT;
    return CMDV_JSON_INT;
}

typedef struct {
    const char *key;
    size_t key_len, index, key_off;
    cmdv_json_kind kind;
} member;

static int cmp_member(const void *a, const void *b) {
    const member *x = a, *y = b;
    const size_t m = x->key_len < y->key_len ? x->key_len : y->key_len;
    const int r = memcmp(x->key, y->key, m);
    if (r) return r;
    if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

static bool same_key(const member *x, const member *y) {
    return x->key_len == y->key_len && memcmp(x->key, y->key, x->key_len) == 0;
}

static const char *DIAG_NUMBERS[] = {"r2_r2d", "r2_d2r", "cycle_err", "delta_energy", "donor_delta_energy"};

/* The winning (last) member named key among sorted members, or NULL. */
static const member *find(const member *m, size_t count, const char *key) {
    const size_t k = strlen(key);
    const member *hit = NULL;
    for (size_t i = 0; i < count; i++)
        if (m[i].key_len == k && memcmp(m[i].key, key, k) == 0) hit = &m[i]; /* sorted: the last is the winner */
    return hit;
}

static int check_object(cursor *c, size_t item, member **mem, size_t *mem_cap, char **keys, size_t *keys_cap) {
    /* collect members: decoded key (into *keys), value kind */
    size_t count = 0, used = 0;
    c->i++; /* '{' */
    skip_ws(c);
    while (c->s[c->i] != '}') {
        if (c->s[c->i] == ',') { c->i++; skip_ws(c); }
        /* decoded keys never exceed their raw length; keep room for the whole rest */
        const size_t need = used + (c->n - c->i);
        if (need > *keys_cap) {
            char *p = realloc(*keys, need);
            if (!p) return -2;
            *keys = p;
            *keys_cap = need;
        }
        if (count == *mem_cap) {
            const size_t cap = *mem_cap ? 2 * *mem_cap : 16;
            member *p = realloc(*mem, cap * sizeof *p);
            if (!p) return -2;
            *mem = p;
            *mem_cap = cap;
        }
        member *m = &(*mem)[count];
        m->key_off = used;
        if (scan_string(c, *keys, &used) != 0) return -1; /* cannot fail on checked JSON */
        m->key_len = used - m->key_off;
        m->index = count++;
        skip_ws(c);
        c->i++; /* ':' */
        skip_ws(c);
        m->kind = classify(c);
        skip_value(c);
        skip_ws(c);
    }
    c->i++; /* '}' */
    member *ms = *mem;
    for (size_t i = 0; i < count; i++) ms[i].key = *keys + ms[i].key_off;
    if (count > 1) qsort(ms, count, sizeof *ms, cmp_member);
    for (size_t i = 0; i < count; i++) {
        const bool winner = i + 1 == count || !same_key(&ms[i], &ms[i + 1]);
        if (winner && (ms[i].kind == CMDV_JSON_ARRAY || ms[i].kind == CMDV_JSON_OBJECT)) {
            snprintf(c->msg, c->cap, "commandv.diagnostics item %zu is not an object of scalar values", item);
            return -1;
        }
    }
    const member *dl = find(ms, count, "donor_layer"), *rl = find(ms, count, "recipient_layer");
    if (!dl || dl->kind != CMDV_JSON_INT || !rl || rl->kind != CMDV_JSON_INT) {
        snprintf(c->msg, c->cap, "commandv.diagnostics item %zu lacks integer donor_layer/recipient_layer", item);
        return -1;
    }
    for (size_t k = 0; k < sizeof DIAG_NUMBERS / sizeof DIAG_NUMBERS[0]; k++) {
        const member *m = find(ms, count, DIAG_NUMBERS[k]);
        if (m && m->kind != CMDV_JSON_INT && m->kind != CMDV_JSON_FLOAT) {
            snprintf(c->msg, c->cap, "commandv.diagnostics item %zu: %s is not a number", item, DIAG_NUMBERS[k]);
            return -1;
        }
    }
    return 0;
}

int cmdv_json_check_diagnostics(const char *s, size_t n, char *msg, size_t cap) {
    cursor c = {s, n, 0, msg, cap};
    skip_ws(&c);
    if (c.i >= n || s[c.i] != '[') { snprintf(msg, cap, "commandv.diagnostics is not a list"); return -1; }
    const size_t first = c.i + 1;
    /* pass 1: count the items */
    size_t items = 0;
    c.i = first;
    skip_ws(&c);
    while (s[c.i] != ']') {
        if (s[c.i] == ',') { c.i++; skip_ws(&c); }
        skip_value(&c);
        items++;
        skip_ws(&c);
    }
    if (items > CMDV_DIAG_MAX_ITEMS) {
        snprintf(msg, cap, "commandv.diagnostics has %zu items, more than %d", items, CMDV_DIAG_MAX_ITEMS);
        return -1;
    }
    /* pass 2: check each item */
    member *mem = NULL;
    char *keys = NULL;
    size_t mem_cap = 0, keys_cap = 0, item = 0;
    int rc = 0;
    c.i = first;
    skip_ws(&c);
    while (rc == 0 && s[c.i] != ']') {
        if (s[c.i] == ',') { c.i++; skip_ws(&c); }
        if (s[c.i] != '{') {
            snprintf(msg, cap, "commandv.diagnostics item %zu is not an object of scalar values", item);
            rc = -1;
            break;
        }
        rc = check_object(&c, item, &mem, &mem_cap, &keys, &keys_cap);
        item++;
        skip_ws(&c);
    }
    free(mem);
    free(keys);
    return rc;
}
