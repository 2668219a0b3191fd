/*
 * cmdv_core.c - Command-V behavior-pack edits inside a llama.cpp / ggml eval callback.
 *
 * Plain C11, no Python dependency: the same file serves the Python runtime
 * (loaded with ctypes) and native apps (android_demo). API: cmdv_core.h.
 *
 * A behavior-pack entry edits the residual stream after block `layer`:
 *     h += s * delta(h),   delta(h) = act(h A + b) C - (h P) Q + e
 * with A [d, r], b [r], C [r, d], optional P [d, q], Q [q, d], e [d]
 * (row-major float32, owned by the caller and kept alive while in use).
 *
 * Use:
 *   st = cmdv_state_new(d, n_layer);
 *   cmdv_state_add_entry(st, ...)            per entry, in order (packs in list order)
 *   pass cmdv_eval_cb / st as cb_eval / cb_eval_user_data of the llama context;
 *   for every llama_decode call of the prompt:
 *       cmdv_state_begin(st, pos0, n_tokens, out_pos, n_out);  llama_decode(...);  cmdv_state_end(st);
 *   generated tokens: leave the state inactive (the callback answers false at once).
 *
 * Rows: `l_out-N` holds one row per token of the micro-batch (row i = absolute
 * position pos0 + i), except the last layer, which holds only the rows that
 * produce outputs (row i = out_pos[i]). Rows are matched by count.
 * Arithmetic is done in double; each edited value is rounded to float once.
 */

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-backend.h"

#include "cmdv_core.h"

typedef struct cmdv_entry {
    int32_t layer, rank, q, act;
    const float *A, *b, *C, *P, *Q, *e;
    double strength;
    int32_t *rows; /* sorted absolute prompt positions (owned copy) */
    int32_t n_rows;
} cmdv_entry;

typedef struct cmdv_edit_state {
    int32_t d, n_layer;
    cmdv_entry *entries;
    int32_t n_entries, cap;
    int32_t max_rank, max_q;
    uint8_t *need;    /* [n_layer]: layer has an entry row inside the current micro-batch */
    int32_t active;   /* 0: no edit pending */
    int32_t pos0, n_tokens;
    int32_t *out_pos; /* absolute positions of the output rows (owned copy) */
    int32_t n_out, out_cap;
    float *rec;       /* optional record buffer [n_layer, rec_T, d] */
    int32_t rec_T;
    double *work;     /* d + max_rank + max_q + d doubles */
    float *rowbuf;    /* d floats, for tensors outside host memory */
    int64_t n_applied;
    int32_t error;
    char msg[192];
} cmdv_edit_state;

static void set_error(cmdv_edit_state *st, const char *msg) {
    if (!st->error) {
        st->error = 1;
        snprintf(st->msg, sizeof st->msg, "%s", msg);
    }
}

int32_t cmdv_abi_version(void) { return CMDV_ABI_VERSION; }

/* sizeof(struct ggml_tensor) this file was compiled against (checked against the loaded library). */
size_t cmdv_tensor_struct_size(void) { return sizeof(struct ggml_tensor); }

cmdv_edit_state *cmdv_state_new(int32_t d, int32_t n_layer) {
    if (d < 1 || n_layer < 1) return NULL;
    cmdv_edit_state *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->d = d;
    st->n_layer = n_layer;
    st->need = calloc((size_t)n_layer, 1);
    st->rowbuf = calloc((size_t)d, sizeof(float));
    st->work = calloc((size_t)2 * d, sizeof(double));
    if (!st->need || !st->rowbuf || !st->work) {
        free(st->need); free(st->rowbuf); free(st->work); free(st);
        return NULL;
    }
    return st;
}

void cmdv_state_clear(cmdv_edit_state *st) {
    if (!st) return;
    for (int32_t i = 0; i < st->n_entries; i++) free(st->entries[i].rows);
    st->n_entries = 0;
    st->active = 0;
    memset(st->need, 0, (size_t)st->n_layer);
}

void cmdv_state_free(cmdv_edit_state *st) {
    if (!st) return;
    cmdv_state_clear(st);
    free(st->entries); free(st->need); free(st->out_pos); free(st->work); free(st->rowbuf);
    free(st);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Append an entry; returns its index, or -1 (see cmdv_state_error). P/Q/e may be NULL (q = 0). */
int32_t cmdv_state_add_entry(cmdv_edit_state *st, int32_t layer, int32_t rank, int32_t act,
                             const float *A, const float *b, const float *C,
                             int32_t q, const float *P, const float *Q, const float *e,
                             double strength, const int32_t *rows, int32_t n_rows) {
    if (!st) return -1;
    if (layer < 0 || layer >= st->n_layer) { set_error(st, "entry layer out of range"); return -1; }
    if (rank < 1 || !A || !b || !C) { set_error(st, "entry needs rank >= 1 and A, b, C"); return -1; }
    if (act < 0 || act >= CMDV_ACT_COUNT) { set_error(st, "unknown activation id"); return -1; }
    if (q < 0 || (q > 0 && (!P || !Q))) { set_error(st, "entry P/Q missing for q > 0"); return -1; }
    if (n_rows < 0 || (n_rows > 0 && !rows)) { set_error(st, "entry rows missing"); return -1; }
    if (!isfinite(strength)) { set_error(st, "entry strength is not finite"); return -1; }
    if (st->n_entries == st->cap) {
        int32_t cap = st->cap ? 2 * st->cap : 16;
        cmdv_entry *ne = realloc(st->entries, (size_t)cap * sizeof *ne);
        if (!ne) { set_error(st, "out of memory"); return -1; }
        st->entries = ne;
        st->cap = cap;
    }
    if (rank > st->max_rank || q > st->max_q) {
        int32_t mr = rank > st->max_rank ? rank : st->max_rank;
        int32_t mq = q > st->max_q ? q : st->max_q;
        double *w = realloc(st->work, ((size_t)2 * st->d + mr + mq) * sizeof(double));
        if (!w) { set_error(st, "out of memory"); return -1; }
        st->work = w;
        st->max_rank = mr;
        st->max_q = mq;
    }
    cmdv_entry *en = &st->entries[st->n_entries];
    memset(en, 0, sizeof *en);
    en->rows = malloc((size_t)(n_rows > 0 ? n_rows : 1) * sizeof(int32_t));
    if (!en->rows) { set_error(st, "out of memory"); return -1; }
    if (n_rows > 0) memcpy(en->rows, rows, (size_t)n_rows * sizeof(int32_t));
    qsort(en->rows, (size_t)n_rows, sizeof(int32_t), cmp_i32);
    en->n_rows = n_rows;
    en->layer = layer; en->rank = rank; en->act = act; en->q = q;
    en->A = A; en->b = b; en->C = C;
    en->P = q > 0 ? P : NULL; en->Q = q > 0 ? Q : NULL; en->e = e;
    en->strength = strength;
    return st->n_entries++;
}

/* Announce the next llama_decode call: tokens at absolute positions pos0 .. pos0+n_tokens-1, and the
 * absolute positions of its output rows. Returns how many layers must be edited (0: nothing to do).
 * While recording, the state is active for every micro-batch. */
int32_t cmdv_state_begin(cmdv_edit_state *st, int32_t pos0, int32_t n_tokens, const int32_t *out_pos, int32_t n_out) {
    if (!st) return 0;
    if (n_out < 0 || (n_out > 0 && !out_pos)) { set_error(st, "bad output rows"); n_out = 0; }
    if (n_out > st->out_cap) {
        int32_t *p = realloc(st->out_pos, (size_t)n_out * sizeof(int32_t));
        if (!p) { set_error(st, "out of memory"); return 0; }
        st->out_pos = p;
        st->out_cap = n_out;
    }
    if (n_out > 0) memcpy(st->out_pos, out_pos, (size_t)n_out * sizeof(int32_t));
    st->n_out = n_out;
    st->pos0 = pos0;
    st->n_tokens = n_tokens;
    memset(st->need, 0, (size_t)st->n_layer);
    int32_t n_need = 0;
    for (int32_t i = 0; i < st->n_entries; i++) {
        const cmdv_entry *en = &st->entries[i];
        if (st->need[en->layer] || en->strength == 0.0) continue;
        for (int32_t k = 0; k < en->n_rows; k++) {
            if (en->rows[k] >= pos0 && en->rows[k] < pos0 + n_tokens) {
                st->need[en->layer] = 1;
                n_need++;
                break;
            }
        }
    }
    st->active = (n_need > 0 || st->rec != NULL) ? 1 : 0;
    return n_need;
}

void cmdv_state_end(cmdv_edit_state *st) {
    if (st) st->active = 0;
}

/* Record every layer's output rows into rec [n_layer, T, d] (after the edits); NULL stops recording. */
void cmdv_state_set_record(cmdv_edit_state *st, float *rec, int32_t T) {
    if (!st) return;
    st->rec = (rec && T > 0) ? rec : NULL;
    st->rec_T = st->rec ? T : 0;
}

int64_t cmdv_state_n_applied(const cmdv_edit_state *st) { return st ? st->n_applied : 0; }

int32_t cmdv_state_n_entries(const cmdv_edit_state *st) { return st ? st->n_entries : 0; }

/* The first error since the last reset, or NULL. */
const char *cmdv_state_error(const cmdv_edit_state *st) { return (st && st->error) ? st->msg : NULL; }

void cmdv_state_reset_error(cmdv_edit_state *st) {
    if (st) { st->error = 0; st->msg[0] = 0; }
}

static double act_fn(int32_t act, double x) {
    switch (act) {
    case CMDV_ACT_RELU: return x > 0.0 ? x : 0.0;
    case CMDV_ACT_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case CMDV_ACT_GELU_TANH: {
        const double c = sqrt(2.0 / 3.14159265358979323846);
        return 0.5 * x * (1.0 + tanh(c * (x + 0.044715 * x * x * x)));
    }
    case CMDV_ACT_SILU: return x / (1.0 + exp(-x));
    case CMDV_ACT_TANH: return tanh(x);
    case CMDV_ACT_SIGMOID: return 1.0 / (1.0 + exp(-x));
    default: return x;
    }
}

/* h[d] += s * delta(h[d]) for one entry (double accumulation, one rounding per element). */
static void apply_row(const cmdv_entry *en, float *h, int32_t d, double *work) {
    double *hd = work, *delta = work + d, *z = work + 2 * d, *y = z + en->rank;
    const int32_t r = en->rank, q = en->q;
    for (int32_t i = 0; i < d; i++) hd[i] = h[i];
    for (int32_t j = 0; j < r; j++) z[j] = 0.0;
    for (int32_t i = 0; i < d; i++) {
        const double hi = hd[i];
        const float *Ai = en->A + (size_t)i * r;
        for (int32_t j = 0; j < r; j++) z[j] += hi * Ai[j];
    }
    for (int32_t j = 0; j < r; j++) z[j] = act_fn(en->act, z[j] + en->b[j]);
    for (int32_t k = 0; k < d; k++) delta[k] = 0.0;
    for (int32_t j = 0; j < r; j++) {
        const double zj = z[j];
        const float *Cj = en->C + (size_t)j * d;
        for (int32_t k = 0; k < d; k++) delta[k] += zj * Cj[k];
    }
    if (q > 0) {
        for (int32_t m = 0; m < q; m++) y[m] = 0.0;
        for (int32_t i = 0; i < d; i++) {
            const double hi = hd[i];
            const float *Pi = en->P + (size_t)i * q;
            for (int32_t m = 0; m < q; m++) y[m] += hi * Pi[m];
        }
        for (int32_t m = 0; m < q; m++) {
            const double ym = y[m];
            const float *Qm = en->Q + (size_t)m * d;
            for (int32_t k = 0; k < d; k++) delta[k] -= ym * Qm[k];
        }
    }
    if (en->e) for (int32_t k = 0; k < d; k++) delta[k] += en->e[k];
    for (int32_t k = 0; k < d; k++) h[k] = (float)(hd[k] + en->strength * delta[k]);
}

/* Apply entry `idx` to n rows of h (row stride in floats): for tests and non-ggml callers. */
int32_t cmdv_apply_entry(cmdv_edit_state *st, int32_t idx, float *h, int32_t n, int64_t stride) {
    if (!st || idx < 0 || idx >= st->n_entries || !h || n < 0 || stride < st->d) return -1;
    for (int32_t i = 0; i < n; i++) apply_row(&st->entries[idx], h + (size_t)i * stride, st->d, st->work);
    return 0;
}

/* "l_out-<N>" -> N, else -1. */
static int32_t lout_layer(const char *name) {
    if (memcmp(name, "l_out-", 6) != 0) return -1;
    const char *p = name + 6;
    if (*p < '0' || *p > '9') return -1;
    int32_t v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > (1 << 20)) return -1;
    }
    return *p == 0 ? v : -1;
}

static bool tensor_is_host(const struct ggml_tensor *t) {
    const struct ggml_tensor *base = t->view_src ? t->view_src : t;
    ggml_backend_buffer_t buf = t->buffer ? t->buffer : base->buffer;
    return buf != NULL && ggml_backend_buffer_is_host(buf);
}

/* Byte offset of flat row r (over ne1*ne2*ne3). */
static size_t row_offset(const struct ggml_tensor *t, int64_t r) {
    const int64_t i1 = r % t->ne[1], i2 = (r / t->ne[1]) % t->ne[2], i3 = r / (t->ne[1] * t->ne[2]);
    return (size_t)i1 * t->nb[1] + (size_t)i2 * t->nb[2] + (size_t)i3 * t->nb[3];
}

/* Local row of absolute position pos in this tensor, or -1. */
static int64_t local_row(const cmdv_edit_state *st, bool full, int32_t pos) {
    if (full) {
        const int64_t r = (int64_t)pos - st->pos0;
        return (r >= 0 && r < st->n_tokens) ? r : -1;
    }
    for (int32_t i = 0; i < st->n_out; i++)
        if (st->out_pos[i] == pos) return i;
    return -1;
}

static void edit_tensor(cmdv_edit_state *st, struct ggml_tensor *t, int32_t il) {
    const int32_t d = st->d;
    if (t->type != GGML_TYPE_F32 || t->ne[0] != d || t->nb[0] != sizeof(float)) {
        set_error(st, "l_out tensor is not f32 [d, n] with contiguous rows");
        return;
    }
    const int64_t n_rows = t->ne[1] * t->ne[2] * t->ne[3];
    if (n_rows == 0) return;
    bool full;
    if (n_rows == st->n_tokens) full = true;
    else if (n_rows == st->n_out) full = false;
    else { set_error(st, "l_out tensor row count matches neither the micro-batch nor its outputs"); return; }
    if (!t->data) { set_error(st, "l_out tensor has no data"); return; }
    const bool host = tensor_is_host(t);
    const size_t row_bytes = (size_t)d * sizeof(float);

    if (st->need[il]) {
        for (int32_t i = 0; i < st->n_entries; i++) {
            const cmdv_entry *en = &st->entries[i];
            if (en->layer != il || en->strength == 0.0) continue;
            for (int32_t k = 0; k < en->n_rows; k++) {
                const int64_t r = local_row(st, full, en->rows[k]);
                if (r < 0) continue;
                const size_t off = row_offset(t, r);
                if (host) {
                    apply_row(en, (float *)((char *)t->data + off), d, st->work);
                } else {
                    ggml_backend_tensor_get(t, st->rowbuf, off, row_bytes);
                    apply_row(en, st->rowbuf, d, st->work);
                    ggml_backend_tensor_set(t, st->rowbuf, off, row_bytes);
                }
                st->n_applied++;
            }
        }
    }
    if (st->rec) {
        for (int64_t r = 0; r < n_rows; r++) {
            const int32_t pos = full ? (int32_t)(st->pos0 + r) : st->out_pos[r];
            if (pos < 0 || pos >= st->rec_T) continue;
            float *dst = st->rec + ((size_t)il * st->rec_T + (size_t)pos) * d;
            const size_t off = row_offset(t, r);
            if (host) memcpy(dst, (const char *)t->data + off, row_bytes);
            else ggml_backend_tensor_get(t, dst, off, row_bytes);
        }
    }
}

/* ggml_backend_sched_eval_callback: ask -> "do I need this tensor?"; !ask -> tensor computed, edit it. */
bool cmdv_eval_cb(struct ggml_tensor *t, bool ask, void *user_data) {
    cmdv_edit_state *st = (cmdv_edit_state *)user_data;
    if (!st || !st->active || !t) return !ask; /* fast path: no edit pending (decode steps) */
    const int32_t il = lout_layer(t->name);
    if (il < 0 || il >= st->n_layer) return !ask;
    const bool want = st->need[il] || st->rec != NULL;
    if (ask) return want;
    if (want) edit_tensor(st, t, il);
    return true; /* always let the graph continue */
}
