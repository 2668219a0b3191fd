/*
 * cmdv_host_test - drive the native core through llama.cpp on the host (the code path of android_demo).
 *
 *   cmdv_host_test --model M.gguf [--pack P.gguf [--strength S]]... [--force] [--fingerprint SHA256]
 *                  (--ids 1,2,3 | --prompt TEXT) [--n-gen N] [--n-ctx N] [--n-ubatch N] [--threads N]
 *                  [--kv f32|f16] [--flash 0|1] [--record OUT.f32] [--logits OUT.f32] [--step-logits OUT.f32]
 *
 * --ids: prompt token ids (already chat-templated, e.g. by the Python engine); --prompt: one user message
 * rendered with llama_chat_apply_template. --record: one edited prompt pass first, writing every block's
 * output rows after the edits as float32 [n_layer, T, d]. Then greedy generation of N tokens; --logits
 * writes that prompt pass's last-token logits as float32 [n_vocab]; --step-logits writes the logits each
 * generated token was picked from, float32 [n_tokens, n_vocab] (android_demo/cross_arm64.py compares them).
 * Prints one JSON object: n_layer, d_model, n_vocab, prompt_ids, tokens, n_edited, text; on failure
 * {"code", "status", "msg"} and exit status 1.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdv_text.h"

#include "cmdv_session.h"

#define MAX_PACKS 8

static void json_str(const char *s, size_t n) { cmdv_json_write_str(stdout, s, n); }

static int fail(const cmdv_error *e) {
    printf("{\"code\": %d, \"status\": \"%s\", \"msg\": ", e->code, cmdv_pack_status_name(e->code));
    json_str(e->msg, strlen(e->msg));
    printf("}\n");
    return 1;
}

static int usage(const char *argv0) {
    fprintf(stderr, "usage: %s --model M.gguf [--pack P.gguf [--strength S]]... (--ids 1,2,3 | --prompt TEXT) "
                    "[--n-gen N] [--record OUT.f32] [--logits OUT.f32] [--step-logits OUT.f32] [--n-ctx N] [--n-ubatch N] "
                    "[--threads N] [--kv f32|f16] [--flash 0|1] [--force] [--fingerprint HEX]\n", argv0);
    return 2;
}

static int32_t parse_ids(const char *s, int32_t **ids) {
    size_t cap = 16, n = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return -1;
    while (*s) {
        char *end;
        const long x = strtol(s, &end, 10);
        if (end == s) { free(v); return -1; }
        if (n == cap) {
            int32_t *nv = realloc(v, 2 * cap * sizeof *v);
            if (!nv) { free(v); return -1; }
            v = nv;
            cap *= 2;
        }
        v[n++] = (int32_t)x;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') { free(v); return -1; }
    }
    *ids = v;
    return (int32_t)n;
}

typedef struct { FILE *f; const cmdv_session *s; int32_t n_vocab; int failed; } step_logits;

static int on_token(int32_t token, const char *piece, int32_t piece_len, void *user_data) {
    step_logits *st = user_data; /* called after sampling, before the next decode: the logits used */
    (void)token; (void)piece; (void)piece_len;
    if (fwrite(cmdv_session_logits(st->s), sizeof(float), (size_t)st->n_vocab, st->f) != (size_t)st->n_vocab)
        st->failed = 1;
    return 0;
}

static int write_f32(const char *path, const float *x, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const size_t w = fwrite(x, sizeof(float), n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *model = NULL, *ids_arg = NULL, *prompt = NULL, *record_path = NULL, *logits_path = NULL;
    const char *fingerprint = NULL, *step_path = NULL, *packs[MAX_PACKS];
    float strengths[MAX_PACKS];
    int n_packs = 0, n_gen = 16, force = 0;
    cmdv_session_params sp = cmdv_session_default_params();
    sp.quiet = 1;
    for (int a = 1; a < argc; a++) {
        const char *k = argv[a], *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (strcmp(k, "--force") == 0) { force = 1; continue; }
        if (!v) return usage(argv[0]);
        a++;
        if (strcmp(k, "--model") == 0) model = v;
        else if (strcmp(k, "--pack") == 0 && n_packs < MAX_PACKS) { packs[n_packs] = v; strengths[n_packs++] = 1.0f; }
        else if (strcmp(k, "--strength") == 0 && n_packs > 0) strengths[n_packs - 1] = strtof(v, NULL);
        else if (strcmp(k, "--ids") == 0) ids_arg = v;
        else if (strcmp(k, "--prompt") == 0) prompt = v;
        else if (strcmp(k, "--n-gen") == 0) n_gen = atoi(v);
        else if (strcmp(k, "--record") == 0) record_path = v;
        else if (strcmp(k, "--logits") == 0) logits_path = v;
        else if (strcmp(k, "--step-logits") == 0) step_path = v;
        else if (strcmp(k, "--fingerprint") == 0) fingerprint = v;
        else if (strcmp(k, "--n-ctx") == 0) sp.n_ctx = atoi(v);
        else if (strcmp(k, "--n-ubatch") == 0) sp.n_ubatch = atoi(v);
        else if (strcmp(k, "--threads") == 0) sp.n_threads = atoi(v);
        else if (strcmp(k, "--kv") == 0) sp.kv_f32 = strcmp(v, "f32") == 0;
        else if (strcmp(k, "--flash") == 0) sp.flash_attn = atoi(v);
        else return usage(argv[0]);
    }
    if (!model || (!ids_arg == !prompt) || n_gen < 0) return usage(argv[0]);

    cmdv_error err;
    cmdv_session *s = cmdv_session_open(model, &sp, &err);
    if (!s) return fail(&err);
    cmdv_session_set_fingerprint(s, fingerprint);
    for (int i = 0; i < n_packs; i++) {
        if (cmdv_session_add_pack(s, packs[i], strengths[i], force, &err) < 0) {
            cmdv_session_close(s);
            return fail(&err);
        }
    }
    int32_t *ids = NULL;
    const int32_t n = ids_arg ? parse_ids(ids_arg, &ids) : cmdv_session_tokenize_chat(s, prompt, &ids, &err);
    if (n < 0) {
        if (ids_arg) { err.code = CMDV_PACK_ERR_ARG; snprintf(err.msg, sizeof err.msg, "bad --ids list"); }
        cmdv_session_close(s);
        return fail(&err);
    }
    const int32_t L = cmdv_session_n_layer(s), d = cmdv_session_d_model(s), V = cmdv_session_n_vocab(s);
    int rc = 0;
    if (record_path) {
        float *rec = calloc((size_t)L * (size_t)n * (size_t)d, sizeof(float));
        if (!rec) { err.code = CMDV_PACK_ERR_NOMEM; snprintf(err.msg, sizeof err.msg, "out of memory"); rc = 1; }
        else if (cmdv_session_prompt(s, ids, n, rec, &err)) rc = 1;
        else if (write_f32(record_path, rec, (size_t)L * n * d)) {
            err.code = CMDV_PACK_ERR_IO;
            snprintf(err.msg, sizeof err.msg, "cannot write %s", record_path);
            rc = 1;
        }
        free(rec);
    }
    int32_t *out = malloc((size_t)(n_gen > 0 ? n_gen : 1) * sizeof *out);
    int32_t k = -1;
    if (!rc && !out) { err.code = CMDV_PACK_ERR_NOMEM; snprintf(err.msg, sizeof err.msg, "out of memory"); rc = 1; }
    if (!rc) {
        const cmdv_sampling greedy = {0.0f, 1.0f, 0};
        step_logits st = {step_path ? fopen(step_path, "wb") : NULL, s, V, 0};
        if (step_path && !st.f) {
            err.code = CMDV_PACK_ERR_IO;
            snprintf(err.msg, sizeof err.msg, "cannot write %s", step_path);
            rc = 1;
        } else {
            k = cmdv_session_generate(s, ids, n, n_gen, &greedy, out, st.f ? on_token : NULL, &st, &err);
            if (k < 0) rc = 1;
        }
        if (st.f && ((fclose(st.f) != 0) | st.failed) && !rc) {
            err.code = CMDV_PACK_ERR_IO;
            snprintf(err.msg, sizeof err.msg, "cannot write %s", step_path);
            rc = 1;
        }
    }
    /* cmdv_session_generate's prompt pass left the last-token logits only until its first decode: recompute */
    if (!rc && logits_path) {
        if (cmdv_session_prompt(s, ids, n, NULL, &err)) rc = 1;
        else if (write_f32(logits_path, cmdv_session_logits(s), (size_t)V)) {
            err.code = CMDV_PACK_ERR_IO;
            snprintf(err.msg, sizeof err.msg, "cannot write %s", logits_path);
            rc = 1;
        }
    }
    if (rc) {
        free(out);
        free(ids);
        cmdv_session_close(s);
        return fail(&err);
    }
    printf("{\"n_layer\": %d, \"d_model\": %d, \"n_vocab\": %d, \"n_edited\": %lld, \"extra_bufts\": %d, "
           "\"prompt_ids\": [", (int)L, (int)d, (int)V, (long long)cmdv_session_n_edited(s),
           (int)cmdv_session_extra_bufts(s));
    for (int32_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", (int)ids[i]);
    printf("], \"tokens\": [");
    for (int32_t i = 0; i < k; i++) printf("%s%d", i ? ", " : "", (int)out[i]);
    printf("], \"text\": ");
    size_t tcap = 256, tn = 0;
    char *text = malloc(tcap);
    for (int32_t i = 0; text && i < k; i++) {
        char piece[256];
        const int32_t len = cmdv_session_piece(s, out[i], piece, (int32_t)sizeof piece);
        if (len <= 0) continue;
        if (tn + (size_t)len > tcap) {
            char *nt = realloc(text, 2 * (tn + (size_t)len));
            if (!nt) break;
            text = nt;
            tcap = 2 * (tn + (size_t)len);
        }
        memcpy(text + tn, piece, (size_t)len);
        tn += (size_t)len;
    }
    json_str(text ? text : "", text ? tn : 0);
    printf("}\n");
    free(text);
    free(out);
    free(ids);
    cmdv_session_close(s);
    return 0;
}
