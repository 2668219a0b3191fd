/*
 * cmdv_session.h - a llama.cpp model + context that applies behavior packs per request (plain C11).
 *
 * The native twin of runtime/engines/llama/engine.py Recipient, for apps (android_demo's JNI bridge) and the
 * host test: the context's eval callback is cmdv_eval_cb (cmdv_core.c); every request clears the KV
 * memory, binds the enabled packs to the prompt (cmdv_pack_bind), decodes the prompt in chunks of at
 * most n_ubatch tokens with the edit active, then samples new tokens with the edit inactive (generated
 * tokens see the edit through the KV cache). Same semantics as the Python engine: packs in list order,
 * entries in file order, s = entry strength * pack strength, positions relative to the prompt.
 *
 * Not thread-safe: one request at a time per session.
 */
#ifndef CMDV_SESSION_H
#define CMDV_SESSION_H

#include <stdint.h>

#include "cmdv_pack.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CMDV_SESSION_MAX_PACKS 16

typedef struct cmdv_session cmdv_session;

typedef struct {
    int32_t n_ctx;      /* context length in tokens (0: 2048) */
    int32_t n_ubatch;   /* prompt chunk = llama batch size (0: 512; capped at n_ctx) */
    int32_t n_threads;  /* CPU threads (0: 4) */
    int32_t kv_f32;     /* 1: f32 K/V cache (exact), 0: f16 (llama.cpp's default) */
    int32_t flash_attn; /* -1: llama.cpp decides, 0: off, 1: on */
    int32_t quiet;      /* 1: drop llama.cpp's log output (errors are still kept for messages) */
    int32_t extra_bufts; /* llama.cpp's repacked-weight buffer types: 1 on, 0 off, -1 auto (see below) */
} cmdv_session_params;

/* The environment variable that overrides the extra-buffer rule (runtime/cpu.py reads the same name). */
#define CMDV_ENV_EXTRA_BUFTS "COMMANDV_EXTRA_BUFTS"

/* 1 when this CPU has Intel AMX (CPUID leaf 7: AMX-TILE, AMX-INT8 or AMX-BF16), else 0 (always 0 off x86). */
int32_t cmdv_cpu_has_amx(void);

/* Whether a model load uses llama.cpp's extra buffer types. requested 1/0 wins; -1 (auto): env_value
 * ("1"/"on"/"true"/"yes" or "0"/"off"/"false"/"no", NULL or ""/"auto" = no override), else off when
 * cpu_has_amx (llama.cpp's AMX matmul crashes on long prompts and is wrong for Q4_0/Q4_1), else on.
 * Returns 1 or 0, or -1 for an env_value it does not understand. Pure: tests pass simulated inputs. */
int32_t cmdv_extra_bufts_decide(int32_t requested, const char *env_value, int32_t cpu_has_amx);

typedef struct {
    float temperature; /* <= 0: greedy (argmax, first maximum) */
    float top_p;       /* nucleus mass in (0, 1]; 1 = off */
    uint64_t seed;
} cmdv_sampling;

/* Called with each generated token and its text piece (not NUL-terminated, may be a partial UTF-8
 * sequence); return nonzero to stop. */
typedef int (*cmdv_token_cb)(int32_t token, const char *piece, int32_t piece_len, void *user_data);

cmdv_session_params cmdv_session_default_params(void);

/* Load the GGUF model and create the context; NULL with err set on failure. */
cmdv_session *cmdv_session_open(const char *model_path, const cmdv_session_params *params, cmdv_error *err);
void cmdv_session_close(cmdv_session *s);

/* 1 when the model was loaded with llama.cpp's extra buffer types, 0 without. */
int32_t cmdv_session_extra_bufts(const cmdv_session *s);
int32_t cmdv_session_n_layer(const cmdv_session *s);
int32_t cmdv_session_d_model(const cmdv_session *s);
int32_t cmdv_session_n_vocab(const cmdv_session *s);
int32_t cmdv_session_n_ctx(const cmdv_session *s);
/* general.architecture of the model ("" if absent). */
const char *cmdv_session_arch(const cmdv_session *s);

/* The model file's sha256 (hex), used to check packs' recipient fingerprints; NULL (default) = not checked. */
void cmdv_session_set_fingerprint(cmdv_session *s, const char *sha256_hex);

/* Load a pack file, check it fits this model (cmdv_pack_check_model; force skips arch and fingerprint),
 * and append it (enabled, with this strength). Returns its index, or -1 with err set. */
int32_t cmdv_session_add_pack(cmdv_session *s, const char *path, float strength, int force, cmdv_error *err);
int32_t cmdv_session_n_packs(const cmdv_session *s);
const cmdv_pack *cmdv_session_pack(const cmdv_session *s, int32_t index);
int cmdv_session_set_pack_enabled(cmdv_session *s, int32_t index, int enabled);
int cmdv_session_set_pack_strength(cmdv_session *s, int32_t index, float strength);
void cmdv_session_clear_packs(cmdv_session *s);

/* Token ids of text (llama_tokenize). *ids is malloc'ed (free()); returns the count or -1. */
int32_t cmdv_session_tokenize(cmdv_session *s, const char *text, int add_special, int parse_special, int32_t **ids,
                              cmdv_error *err);

/* Token ids of one user message rendered with the model's chat template by llama_chat_apply_template
 * (llama.cpp's built-in template families; generation header included). Only the template's markup can be
 * special tokens: a message holding special-token text (typed "<|im_end|>\n<|im_start|>system") is cut out of
 * the rendered text and tokenized with parse_special=false, the template pieces around it with true; a message
 * without any is tokenized as the whole rendered string. The same ids as the Python engines
 * (runtime/models/chat_template.py tokenize_chat). */
int32_t cmdv_session_tokenize_chat(cmdv_session *s, const char *user_text, int32_t **ids, cmdv_error *err);

/* Text of one token (llama_token_to_piece, control tokens dropped); bytes written, or -(needed). */
int32_t cmdv_session_piece(const cmdv_session *s, int32_t token, char *buf, int32_t cap);

/* One edited prompt pass: clears the memory, binds the enabled packs, decodes ids. With record != NULL
 * (float [n_layer, n, d]) every block's output rows after the edits are stored there (and logits are
 * computed for all tokens, like Recipient.prompt_pass(record_layers=True)). The last token's logits are
 * then cmdv_session_logits(s). 0 or -1 (err). */
int cmdv_session_prompt(cmdv_session *s, const int32_t *ids, int32_t n, float *record, cmdv_error *err);

/* Logits [n_vocab] of the last decoded token, or NULL. */
const float *cmdv_session_logits(const cmdv_session *s);

/* Rows edited by the packs in the last prompt pass (0 without packs). */
int64_t cmdv_session_n_edited(const cmdv_session *s);

/* Prompt pass, then up to max_tokens new tokens (stops before an end-of-generation token, on cb's
 * request, or when the context is full). New ids go to out (capacity max_tokens) when out != NULL.
 * Returns how many were generated, or -1 (err). */
int32_t cmdv_session_generate(cmdv_session *s, const int32_t *ids, int32_t n, int32_t max_tokens,
                              const cmdv_sampling *sampling, int32_t *out, cmdv_token_cb cb, void *user_data,
                              cmdv_error *err);

#ifdef __cplusplus
}
#endif

#endif /* CMDV_SESSION_H */
