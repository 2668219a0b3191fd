/* cmdv_session.c - llama.cpp model + context applying behavior packs per request (see cmdv_session.h). C11. */

#include "cmdv_session.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include "cmdv_core.h"

typedef struct {
    cmdv_pack *pack;
    float strength;
    int enabled;
} pack_slot;

struct cmdv_session {
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    int32_t n_layer, d, n_vocab, n_ctx, n_ubatch, n_past;
    char arch[128];
    char *fingerprint;
    cmdv_edit_state *st;
    pack_slot packs[CMDV_SESSION_MAX_PACKS];
    int32_t n_packs;
    struct llama_batch batch; /* capacity n_ubatch */
    int32_t *out_pos;         /* [n_ubatch] */
    const float *logits;      /* of the last decoded token (owned by llama.cpp until the next decode) */
    int64_t n_edited;
    int32_t extra_bufts; /* what the model was loaded with (cmdv_extra_bufts_decide) */
};

/* ------------------------------------------------------------------ logging: keep the last error line */

static char g_last_log[256];

static void quiet_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void)user_data;
    if ((level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) && text) {
        snprintf(g_last_log, sizeof g_last_log, "%s", text);
        size_t k = strlen(g_last_log);
        while (k > 0 && (g_last_log[k - 1] == '\n' || g_last_log[k - 1] == ' ')) g_last_log[--k] = 0;
    }
}

static const char *log_tail(void) { return g_last_log[0] ? g_last_log : "no reason logged"; }

/* ------------------------------------------------------------------ open / close */

cmdv_session_params cmdv_session_default_params(void) {
    const cmdv_session_params p = {2048, 512, 4, 0, -1, 0, -1};
    return p;
}

/* ------------------------------------------------------------------ CPU: the extra-buffer rule */

int32_t cmdv_cpu_has_amx(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    unsigned int a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    (void)a; (void)b; (void)c;
    return (d & ((1u << 22) | (1u << 24) | (1u << 25))) ? 1 : 0; /* AMX-BF16, AMX-TILE, AMX-INT8 */
#else
    return 0;
#endif
}

static int word_in(const char *v, const char *const *words) {
    for (; *words; words++)
        if (strcmp(v, *words) == 0) return 1;
    return 0;
}

int32_t cmdv_extra_bufts_decide(int32_t requested, const char *env_value, int32_t cpu_has_amx) {
    static const char *const on[] = {"1", "on", "true", "yes", NULL};
    static const char *const off[] = {"0", "off", "false", "no", NULL};
    if (requested == 0 || requested == 1) return requested;
    if (env_value) {
        char v[16];
        size_t i = 0, j = 0, n = strlen(env_value);
        while (i < n && isspace((unsigned char)env_value[i])) i++;
        while (n > i && isspace((unsigned char)env_value[n - 1])) n--;
        if (n - i >= sizeof v) return -1;
        for (; i < n; i++) v[j++] = (char)tolower((unsigned char)env_value[i]);
        v[j] = 0;
        if (word_in(v, on)) return 1;
        if (word_in(v, off)) return 0;
        if (v[0] && strcmp(v, "auto") != 0) return -1;
    }
    return cpu_has_amx ? 0 : 1;
}

cmdv_session *cmdv_session_open(const char *model_path, const cmdv_session_params *params, cmdv_error *err) {
    cmdv_error_clear(err);
    if (!model_path) { cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_session_open: NULL model path"); return NULL; }
    const cmdv_session_params P = params ? *params : cmdv_session_default_params();
    static bool backend_ready = false;
    if (P.quiet) llama_log_set(quiet_log, NULL);
    if (!backend_ready) {
        llama_backend_init();
        backend_ready = true;
    }
    g_last_log[0] = 0;
    cmdv_session *s = calloc(1, sizeof *s);
    if (!s) { cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory"); return NULL; }
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    const int32_t extra = cmdv_extra_bufts_decide(P.extra_bufts, getenv(CMDV_ENV_EXTRA_BUFTS), cmdv_cpu_has_amx());
    if (extra < 0) {
        cmdv_error_set(err, CMDV_PACK_ERR_ARG, "%s is not understood; use 1/on, 0/off or auto", CMDV_ENV_EXTRA_BUFTS);
        free(s);
        return NULL;
    }
    mp.use_extra_bufts = extra != 0; /* off on AMX CPUs unless asked: see cmdv_extra_bufts_decide */
    s->extra_bufts = extra;
    s->model = llama_model_load_from_file(model_path, mp);
    if (!s->model) {
        cmdv_error_set(err, CMDV_PACK_ERR_LLAMA, "llama.cpp could not load %s (%s)", model_path, log_tail());
        free(s);
        return NULL;
    }
    s->vocab = llama_model_get_vocab(s->model);
    s->n_layer = llama_model_n_layer(s->model);
    s->d = llama_model_n_embd(s->model);
    s->n_vocab = llama_vocab_n_tokens(s->vocab);
    if (llama_model_meta_val_str(s->model, "general.architecture", s->arch, sizeof s->arch) < 0) s->arch[0] = 0;
    s->st = cmdv_state_new(s->d, s->n_layer);
    if (!s->st) {
        cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "cmdv_state_new(%d, %d) failed", (int)s->d, (int)s->n_layer);
        cmdv_session_close(s);
        return NULL;
    }
    struct llama_context_params cp = llama_context_default_params();
    const int32_t n_ctx = P.n_ctx > 0 ? P.n_ctx : 2048;
    int32_t n_ub = P.n_ubatch > 0 ? P.n_ubatch : 512;
    if (n_ub > n_ctx) n_ub = n_ctx;
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = cp.n_ubatch = (uint32_t)n_ub;
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = P.n_threads > 0 ? P.n_threads : 4;
    cp.kv_unified = true;
    cp.type_k = cp.type_v = P.kv_f32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    if (P.flash_attn >= 0)
        cp.flash_attn_type = P.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.cb_eval = cmdv_eval_cb;
    cp.cb_eval_user_data = s->st;
    s->ctx = llama_init_from_model(s->model, cp);
    if (!s->ctx) {
        cmdv_error_set(err, CMDV_PACK_ERR_LLAMA, "llama.cpp could not create a context (n_ctx=%d, n_batch=%d): %s",
                (int)n_ctx, (int)n_ub, log_tail());
        cmdv_session_close(s);
        return NULL;
    }
    s->n_ctx = (int32_t)llama_n_ctx(s->ctx);
    const uint32_t nb = llama_n_batch(s->ctx), nu = llama_n_ubatch(s->ctx);
    s->n_ubatch = (int32_t)(nu < nb ? nu : nb);
    s->batch = llama_batch_init(s->n_ubatch, 0, 1);
    s->out_pos = malloc((size_t)s->n_ubatch * sizeof *s->out_pos);
    if (!s->batch.token || !s->out_pos) {
        cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory");
        cmdv_session_close(s);
        return NULL;
    }
    return s;
}

void cmdv_session_close(cmdv_session *s) {
    if (!s) return;
    cmdv_session_clear_packs(s);
    if (s->batch.token) llama_batch_free(s->batch);
    if (s->ctx) llama_free(s->ctx);
    if (s->model) llama_model_free(s->model);
    cmdv_state_free(s->st);
    free(s->out_pos);
    free(s->fingerprint);
    free(s);
}

int32_t cmdv_session_extra_bufts(const cmdv_session *s) { return s ? s->extra_bufts : 0; }

int32_t cmdv_session_n_layer(const cmdv_session *s) { return s ? s->n_layer : 0; }
int32_t cmdv_session_d_model(const cmdv_session *s) { return s ? s->d : 0; }
int32_t cmdv_session_n_vocab(const cmdv_session *s) { return s ? s->n_vocab : 0; }
int32_t cmdv_session_n_ctx(const cmdv_session *s) { return s ? s->n_ctx : 0; }
const char *cmdv_session_arch(const cmdv_session *s) { return s ? s->arch : ""; }
const float *cmdv_session_logits(const cmdv_session *s) { return s ? s->logits : NULL; }
int64_t cmdv_session_n_edited(const cmdv_session *s) { return s ? s->n_edited : 0; }

void cmdv_session_set_fingerprint(cmdv_session *s, const char *sha256_hex) {
    if (!s) return;
    free(s->fingerprint);
    s->fingerprint = NULL;
    if (sha256_hex) {
        const size_t n = strlen(sha256_hex);
        s->fingerprint = malloc(n + 1);
        if (s->fingerprint) memcpy(s->fingerprint, sha256_hex, n + 1);
    }
}

/* ------------------------------------------------------------------ packs */

int32_t cmdv_session_add_pack(cmdv_session *s, const char *path, float strength, int force, cmdv_error *err) {
    cmdv_error_clear(err);
    if (!s || !path) { cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_session_add_pack: NULL argument"); return -1; }
    if (!isfinite(strength)) { cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "strength is not a finite number"); return -1; }
    if (s->n_packs >= CMDV_SESSION_MAX_PACKS) {
        cmdv_error_set(err, CMDV_PACK_ERR_ARG, "at most %d packs per session", CMDV_SESSION_MAX_PACKS);
        return -1;
    }
    cmdv_pack *p = NULL;
    if (cmdv_pack_load(path, &p, err)) return -1;
    if (cmdv_pack_check_model(p, s->fingerprint, s->arch, s->n_layer, s->d, force, err)) {
        cmdv_pack_free(p);
        return -1;
    }
    s->packs[s->n_packs] = (pack_slot){p, strength, 1};
    return s->n_packs++;
}

int32_t cmdv_session_n_packs(const cmdv_session *s) { return s ? s->n_packs : 0; }

const cmdv_pack *cmdv_session_pack(const cmdv_session *s, int32_t i) {
    return (s && i >= 0 && i < s->n_packs) ? s->packs[i].pack : NULL;
}

int cmdv_session_set_pack_enabled(cmdv_session *s, int32_t i, int enabled) {
    if (!s || i < 0 || i >= s->n_packs) return -1;
    s->packs[i].enabled = enabled != 0;
    return 0;
}

int cmdv_session_set_pack_strength(cmdv_session *s, int32_t i, float strength) {
    if (!s || i < 0 || i >= s->n_packs || !isfinite(strength)) return -1;
    s->packs[i].strength = strength;
    return 0;
}

void cmdv_session_clear_packs(cmdv_session *s) {
    if (!s) return;
    if (s->st) cmdv_state_clear(s->st); /* the state points into the packs' tensors */
    for (int32_t i = 0; i < s->n_packs; i++) cmdv_pack_free(s->packs[i].pack);
    s->n_packs = 0;
}

/* ------------------------------------------------------------------ tokens */

/* llama_tokenize of text[0, len) into a malloc'ed *ids; the count, or -1 with err set. */
static int32_t tokenize_len(cmdv_session *s, const char *text, size_t len, int add_special, int parse_special,
                            int32_t **ids, cmdv_error *err) {
    *ids = NULL;
    if (len > INT32_MAX - 8) { cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "text too long"); return -1; }
    int32_t cap = (int32_t)len + 8;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *buf = malloc((size_t)cap * sizeof *buf);
        if (!buf) { cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory"); return -1; }
        const int32_t n = llama_tokenize(s->vocab, text, (int32_t)len, buf, cap, add_special != 0, parse_special != 0);
        if (n >= 0) { *ids = buf; return n; }
        free(buf);
        if (n == INT32_MIN) break;
        cap = -n;
    }
    cmdv_error_set(err, CMDV_PACK_ERR_LLAMA, "tokenization failed for a text of %zu bytes", len);
    return -1;
}

int32_t cmdv_session_tokenize(cmdv_session *s, const char *text, int add_special, int parse_special, int32_t **ids,
                              cmdv_error *err) {
    cmdv_error_clear(err);
    if (!s || !text || !ids) { cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_session_tokenize: NULL argument"); return -1; }
    return tokenize_len(s, text, strlen(text), add_special, parse_special, ids, err);
}

/* One user message rendered by llama_chat_apply_template: a malloc'ed NUL-terminated string (its length in *n),
 * or NULL with err set. */
static char *render_user(const char *tmpl, const char *content, int32_t *n_out, cmdv_error *err) {
    const struct llama_chat_message msg = {"user", content};
    const size_t len = strlen(content);
    if (len > (INT32_MAX - 1024) / 2) { cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "text too long"); return NULL; }
    int32_t cap = (int32_t)(2 * len + 256);
    char *buf = malloc((size_t)cap);
    if (!buf) { cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory"); return NULL; }
    int32_t n = llama_chat_apply_template(tmpl, &msg, 1, true, buf, cap);
    if (n >= cap) {
        char *nb = realloc(buf, (size_t)n + 1);
        if (!nb) { free(buf); cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory"); return NULL; }
        buf = nb;
        cap = n + 1;
        n = llama_chat_apply_template(tmpl, &msg, 1, true, buf, cap);
    }
    if (n < 0 || n >= cap) {
        free(buf);
        cmdv_error_set(err, CMDV_PACK_ERR_LLAMA, "llama_chat_apply_template does not know this model's template");
        return NULL;
    }
    buf[n] = 0;
    *n_out = n;
    return buf;
}

/* Token ids of the pieces (text, length, parse_special), concatenated into a malloc'ed *ids; count or -1. */
static int32_t tokenize_pieces(cmdv_session *s, const char *const *text, const size_t *len, const int *special,
                               int n_pieces, int32_t **ids, cmdv_error *err) {
    int32_t *all = NULL, total = 0;
    *ids = NULL;
    for (int i = 0; i < n_pieces; i++) {
        int32_t *part = NULL;
        const int32_t k = tokenize_len(s, text[i], len[i], 0, special[i], &part, err);
        if (k < 0) { free(all); return -1; }
        int32_t *grown = k > 0 ? realloc(all, ((size_t)total + (size_t)k) * sizeof *grown) : all;
        if (k > 0 && !grown) {
            free(part);
            free(all);
            cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory");
            return -1;
        }
        all = grown;
        if (k > 0) memcpy(all + total, part, (size_t)k * sizeof *part);
        total += k;
        free(part);
    }
    if (!all) all = malloc(sizeof *all); /* callers free() *ids on success */
    if (!all) { cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory"); return -1; }
    *ids = all;
    return total;
}

/* The rendered text cut at the message: the template text before and after it is found by rendering a sentinel
 * in place of the message; the message (as the template put it) is what lies between them in `rendered`. */
static int32_t tokenize_split(cmdv_session *s, const char *tmpl, const char *rendered, int32_t n_r, int32_t **ids,
                              cmdv_error *err) {
    char mark[48];
    unsigned long long nonce = 0x9E3779B97F4A7C15ull;
    do {
        nonce = nonce * 6364136223846793005ull + 1442695040888963407ull;
        snprintf(mark, sizeof mark, "cmdv%016llxm0x", nonce);
    } while (strstr(rendered, mark));
    int32_t n_s = 0;
    char *shape = render_user(tmpl, mark, &n_s, err);
    if (!shape) return -1;
    const size_t ml = strlen(mark);
    const char *at = strstr(shape, mark);
    int32_t k = -1;
    if (!at) { /* the template drops the message: nothing of it to keep apart */
        if (n_s == n_r && memcmp(shape, rendered, (size_t)n_r) == 0)
            k = tokenize_len(s, rendered, (size_t)n_r, 0, 1, ids, err);
        else
            cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "message 1 holds special-token text and the chat template "
                            "changes its markup with the message's text, so that text cannot be kept out of the "
                            "template's markup; remove it");
        free(shape);
        return k;
    }
    const size_t head = (size_t)(at - shape), tail = (size_t)n_s - head - ml;
    if (strstr(at + ml, mark)) {
        cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "message 1 holds special-token text and the chat template renders "
                       "a message more than once or out of order, so that text cannot be kept out of the template's "
                       "markup; remove it");
    } else if ((size_t)n_r < head + tail || memcmp(rendered, shape, head) != 0 ||
               memcmp(rendered + (size_t)n_r - tail, at + ml, tail) != 0) {
        cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "message 1 holds special-token text and the chat template changes "
                       "its markup with the message's text, so that text cannot be kept out of the template's "
                       "markup; remove it");
    } else {
        const char *text[3] = {shape, rendered + head, at + ml};
        const size_t len[3] = {head, (size_t)n_r - head - tail, tail};
        const int special[3] = {1, 0, 1};
        k = tokenize_pieces(s, text, len, special, 3, ids, err);
    }
    free(shape);
    return k;
}

int32_t cmdv_session_tokenize_chat(cmdv_session *s, const char *user_text, int32_t **ids, cmdv_error *err) {
    cmdv_error_clear(err);
    if (!s || !user_text || !ids) {
        cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_session_tokenize_chat: NULL argument");
        return -1;
    }
    *ids = NULL;
    const char *tmpl = llama_model_chat_template(s->model, NULL);
    if (!tmpl) { cmdv_error_set(err, CMDV_PACK_ERR_LLAMA, "the model has no chat template"); return -1; }
    int32_t n_r = 0;
    char *rendered = render_user(tmpl, user_text, &n_r, err);
    if (!rendered) return -1;
    /* special-token text in the message: its ids differ with and without parse_special */
    const size_t ulen = strlen(user_text);
    int32_t *with = NULL, *without = NULL;
    const int32_t nw = tokenize_len(s, user_text, ulen, 0, 1, &with, err);
    const int32_t nwo = nw < 0 ? -1 : tokenize_len(s, user_text, ulen, 0, 0, &without, err);
    if (nwo < 0) {
        free(with);
        free(rendered);
        return -1;
    }
    const int plain = nw == nwo && (nw == 0 || memcmp(with, without, (size_t)nw * sizeof *with) == 0);
    free(with);
    free(without);
    const int32_t k = plain ? tokenize_len(s, rendered, (size_t)n_r, 0, 1, ids, err)
                            : tokenize_split(s, tmpl, rendered, n_r, ids, err);
    free(rendered);
    return k;
}

int32_t cmdv_session_piece(const cmdv_session *s, int32_t token, char *buf, int32_t cap) {
    if (!s || token < 0 || token >= s->n_vocab) return 0;
    return llama_token_to_piece(s->vocab, token, buf, cap, 0, false);
}

/* ------------------------------------------------------------------ prompt pass */

static int check_ids(const cmdv_session *s, const int32_t *ids, int32_t n, cmdv_error *err) {
    if (!ids || n < 1) return cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "prompt has no tokens");
    if (n > s->n_ctx)
        return cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "prompt has %d tokens, longer than the context of %d tokens",
                       (int)n, (int)s->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->n_vocab)
            return cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "token id %d outside the vocabulary [0, %d)", (int)ids[i],
                           (int)s->n_vocab);
    return 0;
}

int cmdv_session_prompt(cmdv_session *s, const int32_t *ids, int32_t n, float *record, cmdv_error *err) {
    cmdv_error_clear(err);
    if (!s) return cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_session_prompt: NULL session");
    if (check_ids(s, ids, n, err)) return -1;
    s->logits = NULL;
    s->n_past = 0;
    llama_memory_clear(llama_get_memory(s->ctx), true);
    cmdv_state_clear(s->st);
    cmdv_state_reset_error(s->st);
    for (int32_t i = 0; i < s->n_packs; i++) {
        if (!s->packs[i].enabled) continue;
        if (cmdv_pack_bind(s->packs[i].pack, s->st, (double)s->packs[i].strength, n, err) < 0) {
            cmdv_state_clear(s->st);
            return -1;
        }
    }
    const int64_t applied0 = cmdv_state_n_applied(s->st);
    cmdv_state_set_record(s->st, record, record ? n : 0);
    const bool every = record != NULL;
    const int32_t U = s->n_ubatch;
    int rc = 0;
    for (int32_t pos0 = 0; pos0 < n && !rc; pos0 += U) {
        const int32_t m = n - pos0 < U ? n - pos0 : U;
        const bool last = pos0 + U >= n;
        int32_t n_out = 0;
        for (int32_t i = 0; i < m; i++) {
            s->batch.token[i] = ids[pos0 + i];
            s->batch.pos[i] = pos0 + i;
            s->batch.n_seq_id[i] = 1;
            s->batch.seq_id[i][0] = 0;
            const bool out = every || (last && i == m - 1);
            s->batch.logits[i] = out ? 1 : 0;
            if (out) s->out_pos[n_out++] = pos0 + i;
        }
        s->batch.n_tokens = m;
        g_last_log[0] = 0;
        cmdv_state_begin(s->st, pos0, m, s->out_pos, n_out);
        const int32_t drc = llama_decode(s->ctx, s->batch);
        cmdv_state_end(s->st);
        const char *edit_err = cmdv_state_error(s->st);
        if (edit_err) rc = cmdv_error_set(err, CMDV_PACK_ERR_PROMPT, "native edit failed: %s", edit_err);
        else if (drc != 0)
            rc = cmdv_error_set(err, CMDV_PACK_ERR_LLAMA, "llama_decode failed with code %d for a batch of %d tokens (%s)",
                         (int)drc, (int)m, log_tail());
        else if (last) s->logits = llama_get_logits_ith(s->ctx, m - 1);
    }
    cmdv_state_set_record(s->st, NULL, 0);
    s->n_edited = cmdv_state_n_applied(s->st) - applied0;
    if (rc) return -1;
    s->n_past = n;
    return 0;
}

/* ------------------------------------------------------------------ sampling and generation */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    double p;
    int32_t id;
} prob;

static int cmp_prob_desc(const void *a, const void *b) {
    const prob *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* greedy: the first maximum; else temperature + top-p. -1 when out of memory. */
static int32_t sample(const float *logits, int32_t n, const cmdv_sampling *sp, uint64_t *rng) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    if (!sp || !(sp->temperature > 0)) return best;
    prob *pr = malloc((size_t)n * sizeof *pr);
    if (!pr) return -1;
    double sum = 0;
    for (int32_t i = 0; i < n; i++) {
        pr[i].id = i;
        pr[i].p = exp(((double)logits[i] - logits[best]) / sp->temperature);
        sum += pr[i].p;
    }
    qsort(pr, (size_t)n, sizeof *pr, cmp_prob_desc);
    const double top_p = (sp->top_p > 0 && sp->top_p < 1) ? sp->top_p : 1.0;
    double mass = 0;
    int32_t k = 0;
    while (k < n && (k == 0 || mass < top_p * sum)) mass += pr[k++].p;
    const double u = (double)(splitmix64(rng) >> 11) / 9007199254740992.0 * mass;
    double acc = 0;
    int32_t pick = pr[k - 1].id;
    for (int32_t i = 0; i < k; i++) {
        acc += pr[i].p;
        if (u < acc) { pick = pr[i].id; break; }
    }
    free(pr);
    return pick;
}

int32_t cmdv_session_generate(cmdv_session *s, const int32_t *ids, int32_t n, int32_t max_tokens,
                              const cmdv_sampling *sampling, int32_t *out, cmdv_token_cb cb, void *user_data,
                              cmdv_error *err) {
    cmdv_error_clear(err);
    if (!s) { cmdv_error_set(err, CMDV_PACK_ERR_ARG, "cmdv_session_generate: NULL session"); return -1; }
    if (max_tokens < 0) { cmdv_error_set(err, CMDV_PACK_ERR_ARG, "max_tokens must be >= 0"); return -1; }
    if (cmdv_session_prompt(s, ids, n, NULL, err)) return -1;
    uint64_t rng = sampling ? sampling->seed : 0;
    const float *logits = s->logits;
    int32_t count = 0;
    char piece[256];
    for (int32_t k = 0; k < max_tokens; k++) {
        const int32_t tok = sample(logits, s->n_vocab, sampling, &rng);
        if (tok < 0) { cmdv_error_set(err, CMDV_PACK_ERR_NOMEM, "out of memory"); return -1; }
        if (llama_vocab_is_eog(s->vocab, tok)) break;
        if (out) out[count] = tok;
        count++;
        if (cb) {
            int32_t len = cmdv_session_piece(s, tok, piece, (int32_t)sizeof piece);
            if (len < 0) len = 0; /* a piece over 256 bytes: not shown */
            if (cb(tok, piece, len, user_data)) break;
        }
        if (k == max_tokens - 1 || s->n_past >= s->n_ctx) break;
        s->batch.token[0] = tok;
        s->batch.pos[0] = s->n_past;
        s->batch.n_seq_id[0] = 1;
        s->batch.seq_id[0][0] = 0;
        s->batch.logits[0] = 1;
        s->batch.n_tokens = 1;
        const int32_t drc = llama_decode(s->ctx, s->batch);
        if (drc != 0) {
            cmdv_error_set(err, CMDV_PACK_ERR_LLAMA, "llama_decode failed with code %d (%s)", (int)drc, log_tail());
            return -1;
        }
        logits = s->logits = llama_get_logits_ith(s->ctx, 0);
        s->n_past++;
    }
    return count;
}
