/* cmdv_text.c - Python's text rules for the pack reader (see cmdv_text.h). Plain C11. */

#include "cmdv_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool cmdv_utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        const unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return false;
        if (n - i < len) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

size_t cmdv_utf8_next(const char *str, size_t n, size_t i, uint32_t *cp) {
    const unsigned char *s = (const unsigned char *)str;
    const unsigned char c = s[i];
    size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (len > n - i) len = n - i; /* only for invalid input; callers validate first */
    uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
    for (size_t k = 1; k < len; k++) v = (v << 6) | (s[i + k] & 0x3Fu);
    *cp = v;
    return len;
}

size_t cmdv_utf8_put(char *out, uint32_t cp) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = (unsigned char)(0xC0 | (cp >> 6)); o[1] = (unsigned char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

bool cmdv_py_isspace(uint32_t c) {
    /* str.isspace() of Python 3.11 (Unicode 14): generated from unicodedata, see tests/test_native_core.py. */
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

void cmdv_py_strip(const char *s, size_t n, size_t *a, size_t *b) {
    size_t i = 0;
    while (i < n) { /* leading whitespace */
        uint32_t cp;
        const size_t len = cmdv_utf8_next(s, n, i, &cp);
        if (!cmdv_py_isspace(cp)) break;
        i += len;
    }
    size_t end = i; /* end of the last non-space code point */
    for (size_t j = i; j < n;) {
        uint32_t cp;
        j += cmdv_utf8_next(s, n, j, &cp);
        if (!cmdv_py_isspace(cp)) end = j;
    }
    *a = i;
    *b = end;
}

/* Code points of the digit zero of every Unicode 14 decimal-digit run (category Nd; each run is 0..9). */
static const uint32_t ND_ZEROS[] = {
    0x30, 0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66, 0xde6, 0xe50,
    0xed0, 0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90, 0x1b50, 0x1bb0, 0x1c40,
    0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0, 0xff10, 0x104a0, 0x10d30, 0x11066,
    0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650, 0x116c0, 0x11730, 0x118e0, 0x11950,
    0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50, 0x1d7ce, 0x1d7d8, 0x1d7e2, 0x1d7ec, 0x1d7f6,
    0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0,
};

int cmdv_unicode_digit(uint32_t cp) {
    if (cp >= '0' && cp <= '9') return (int)(cp - '0');
    for (size_t i = 0; i < sizeof ND_ZEROS / sizeof ND_ZEROS[0]; i++)
        if (cp >= ND_ZEROS[i] && cp < ND_ZEROS[i] + 10) return (int)(cp - ND_ZEROS[i]);
    return -1;
}

/* Append text to out[*k..cap) keeping room for the "..." tail; false when it did not fit. */
static bool put(char *out, size_t cap, size_t *k, const char *text, size_t len) {
    if (*k + len + 4 >= cap) return false; /* 3 for "...", 1 for NUL */
    memcpy(out + *k, text, len);
    *k += len;
    return true;
}

void cmdv_py_repr(char *out, size_t cap, const char *s, size_t n) {
    if (!out || cap == 0) return;
    if (cap < 8) { out[0] = 0; return; }
    const bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    const char q = (has_sq && !has_dq) ? '"' : '\'';
    size_t k = 0;
    out[k++] = q;
    bool cut = false;
    for (size_t i = 0; i < n && !cut;) {
        uint32_t cp;
        const size_t len = cmdv_utf8_next(s, n, i, &cp);
        char esc[16];
        if (cp == '\\') cut = !put(out, cap, &k, "\\\\", 2);
        else if (cp == (uint32_t)q) { esc[0] = '\\'; esc[1] = q; cut = !put(out, cap, &k, esc, 2); }
        else if (cp == '\n') cut = !put(out, cap, &k, "\\n", 2);
        else if (cp == '\r') cut = !put(out, cap, &k, "\\r", 2);
        else if (cp == '\t') cut = !put(out, cap, &k, "\\t", 2);
        else if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) {
            snprintf(esc, sizeof esc, "\\x%02x", (unsigned)cp);
            cut = !put(out, cap, &k, esc, 4);
        } else if (cp > 0x7F && (cmdv_py_isspace(cp) || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFEFF)) {
            snprintf(esc, sizeof esc, "\\u%04x", (unsigned)cp);
            cut = !put(out, cap, &k, esc, 6);
        } else {
            cut = !put(out, cap, &k, s + i, len);
        }
        i += len;
    }
    if (cut) { memcpy(out + k, "...", 3); k += 3; }
    else out[k++] = q;
    out[k] = 0;
}

void cmdv_py_bytes_repr(char *out, size_t cap, const unsigned char *s, size_t n) {
    if (!out || cap == 0) return;
    if (cap < 8) { out[0] = 0; return; }
    const bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    const char q = (has_sq && !has_dq) ? '"' : '\'';
    size_t k = 0;
    out[k++] = 'b';
    out[k++] = q;
    bool cut = false;
    for (size_t i = 0; i < n && !cut; i++) {
        char esc[8];
        const unsigned char c = s[i];
        if (c == '\\' || c == (unsigned char)q) { esc[0] = '\\'; esc[1] = (char)c; cut = !put(out, cap, &k, esc, 2); }
        else if (c == '\n') cut = !put(out, cap, &k, "\\n", 2);
        else if (c == '\r') cut = !put(out, cap, &k, "\\r", 2);
        else if (c == '\t') cut = !put(out, cap, &k, "\\t", 2);
        else if (c < 0x20 || c >= 0x7F) { snprintf(esc, sizeof esc, "\\x%02x", c); cut = !put(out, cap, &k, esc, 4); }
        else { esc[0] = (char)c; cut = !put(out, cap, &k, esc, 1); }
    }
    if (cut) { memcpy(out + k, "...", 3); k += 3; }
    else out[k++] = q;
    out[k] = 0;
}

void cmdv_py_float_repr(char *out, size_t cap, double v) {
    if (isnan(v)) { snprintf(out, cap, "nan"); return; }
    if (isinf(v)) { snprintf(out, cap, v > 0 ? "inf" : "-inf"); return; }
    for (int prec = 1; prec <= 17; prec++) { /* shortest form that reads back exactly */
        snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v) break;
    }
    if (!strpbrk(out, ".eni")) { /* Python writes 1.0, not 1 */
        size_t k = strlen(out);
        if (k + 2 < cap) { out[k] = '.'; out[k + 1] = '0'; out[k + 2] = 0; }
    }
}

void cmdv_json_write_str(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        const unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}
