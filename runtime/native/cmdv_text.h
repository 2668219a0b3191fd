/*
 * cmdv_text.h - the few text rules of Python that the pack format inherits.
 *
 * The Python pack reader decodes strings as strict UTF-8, strips them with
 * str.strip() (Unicode whitespace), matches digits with re's \d (Unicode
 * decimal digits) and quotes values in messages with repr(). These helpers do
 * the same on byte strings (not NUL-terminated), so the C reader accepts and
 * refuses exactly what the Python reader does.
 */
#ifndef CMDV_TEXT_H
#define CMDV_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* True when s[0..n) is valid UTF-8 as Python's bytes.decode("utf-8") (strict) accepts it:
 * no overlong forms, no surrogates, nothing above U+10FFFF, no truncated sequence. */
bool cmdv_utf8_valid(const char *s, size_t n);

/* Decode the code point at s[i] of *valid* UTF-8; returns its byte length (>= 1). */
size_t cmdv_utf8_next(const char *s, size_t n, size_t i, uint32_t *cp);

/* Append code point cp (any value up to 0x10FFFF, lone surrogates included) as (WTF-)8; returns bytes (1..4). */
size_t cmdv_utf8_put(char *out, uint32_t cp);

/* Python's str.isspace() for one code point. */
bool cmdv_py_isspace(uint32_t cp);

/* Python's str.strip() on valid UTF-8: [*a, *b) is the stripped range of s[0..n). */
void cmdv_py_strip(const char *s, size_t n, size_t *a, size_t *b);

/* Value 0..9 of a Unicode decimal digit (re's \d, category Nd), else -1. */
int cmdv_unicode_digit(uint32_t cp);

/* Python-like repr() of a str given as (valid) UTF-8: quoted, escaped; cut with "..." to fit cap. */
void cmdv_py_repr(char *out, size_t cap, const char *s, size_t n);

/* Python-like repr() of bytes (b'...'): for magic numbers in messages. */
void cmdv_py_bytes_repr(char *out, size_t cap, const unsigned char *s, size_t n);

/* Python repr() of a float: "nan", "inf", "-inf", else a round-trip decimal. */
void cmdv_py_float_repr(char *out, size_t cap, double v);

/* Write s[0..n) to f as a JSON string literal (quotes, \" \\ and \u00XX escapes for control bytes). */
void cmdv_json_write_str(FILE *f, const char *s, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* CMDV_TEXT_H */
