/*
 * cmdv_jni.c - JNI bridge of dev.commandv.demo.NativeBridge (Kotlin) to the native core (runtime/native).
 *
 * Thin on purpose: everything that matters (pack reading and validation, the edit callback, the
 * llama.cpp session) lives in runtime/native, which is tested on the host. This file only converts
 * Java strings to UTF-8 and back and streams generated text to a TokenListener.
 * Not thread-safe: NativeBridge is called from one thread (see NativeBridge.kt).
 */

#include <jni.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdv_session.h"

typedef struct {
    cmdv_session *s;
    int pack_enabled;
    float strength;
} jni_session;

static _Thread_local char g_error[512];

static void set_error(const char *msg) { snprintf(g_error, sizeof g_error, "%s", msg ? msg : ""); }

static jni_session *from_handle(jlong h) { return (jni_session *)(intptr_t)h; }

/* A Java string as malloc'ed UTF-8 (String.getBytes("UTF-8"): real UTF-8, not JNI's modified UTF-8). */
static char *utf8_from_jstring(JNIEnv *env, jstring s) {
    if (!s) return NULL;
    jclass cls = (*env)->GetObjectClass(env, s);
    jmethodID get_bytes = (*env)->GetMethodID(env, cls, "getBytes", "(Ljava/lang/String;)[B");
    jstring charset = (*env)->NewStringUTF(env, "UTF-8");
    jbyteArray bytes = get_bytes && charset ? (jbyteArray)(*env)->CallObjectMethod(env, s, get_bytes, charset) : NULL;
    char *out = NULL;
    if (bytes && !(*env)->ExceptionCheck(env)) {
        const jsize n = (*env)->GetArrayLength(env, bytes);
        out = malloc((size_t)n + 1);
        if (out) {
            (*env)->GetByteArrayRegion(env, bytes, 0, n, (jbyte *)out);
            out[n] = 0;
        }
    }
    if (bytes) (*env)->DeleteLocalRef(env, bytes);
    if (charset) (*env)->DeleteLocalRef(env, charset);
    (*env)->DeleteLocalRef(env, cls);
    return out;
}

/* A Java string from UTF-8 bytes (new String(bytes, "UTF-8"): malformed bytes become U+FFFD). */
static jstring jstring_from_utf8(JNIEnv *env, const char *s, size_t n) {
    jclass cls = (*env)->FindClass(env, "java/lang/String");
    if (!cls) return NULL;
    jmethodID ctor = (*env)->GetMethodID(env, cls, "<init>", "([BLjava/lang/String;)V");
    jbyteArray bytes = (*env)->NewByteArray(env, (jsize)n);
    jstring charset = (*env)->NewStringUTF(env, "UTF-8");
    jstring out = NULL;
    if (ctor && bytes && charset) {
        (*env)->SetByteArrayRegion(env, bytes, 0, (jsize)n, (const jbyte *)s);
        out = (jstring)(*env)->NewObject(env, cls, ctor, bytes, charset);
    }
    if (bytes) (*env)->DeleteLocalRef(env, bytes);
    if (charset) (*env)->DeleteLocalRef(env, charset);
    (*env)->DeleteLocalRef(env, cls);
    return out;
}

static jstring jstring_from_cstr(JNIEnv *env, const char *s) { return jstring_from_utf8(env, s, strlen(s)); }

static void throw_state(JNIEnv *env, const char *msg) {
    jclass cls = (*env)->FindClass(env, "java/lang/IllegalStateException");
    if (cls) (*env)->ThrowNew(env, cls, msg);
}

/* Length of the longest prefix of buf that does not end inside a UTF-8 sequence. */
static size_t utf8_complete(const char *buf, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        const unsigned char c = (unsigned char)buf[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation byte: look further back */
        const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

/* ------------------------------------------------------------------ NativeBridge */

JNIEXPORT jlong JNICALL Java_dev_commandv_demo_NativeBridge_loadModel(JNIEnv *env, jobject thiz, jstring path,
                                                                       jint n_ctx, jint n_threads) {
    char *p = utf8_from_jstring(env, path);
    if (!p) { set_error("no model path"); return 0; }
    jni_session *js = calloc(1, sizeof *js);
    if (!js) { free(p); set_error("out of memory"); return 0; }
    cmdv_session_params params = cmdv_session_default_params();
    params.n_ctx = n_ctx;
    params.n_threads = n_threads;
    params.quiet = 1;
    cmdv_error err;
    js->s = cmdv_session_open(p, &params, &err);
    free(p);
    if (!js->s) {
        set_error(err.msg);
        free(js);
        return 0;
    }
    js->pack_enabled = 1;
    js->strength = 1.0f;
    set_error("");
    return (jlong)(intptr_t)js;
}

JNIEXPORT jstring JNICALL Java_dev_commandv_demo_NativeBridge_lastError(JNIEnv *env, jobject thiz) {
    return jstring_from_cstr(env, g_error);
}

JNIEXPORT jstring JNICALL Java_dev_commandv_demo_NativeBridge_modelInfo(JNIEnv *env, jobject thiz, jlong handle) {
    jni_session *js = from_handle(handle);
    if (!js) return jstring_from_cstr(env, "");
    char info[256];
    snprintf(info, sizeof info, "%s, %d layers, d_model %d, context %d tokens", cmdv_session_arch(js->s),
             (int)cmdv_session_n_layer(js->s), (int)cmdv_session_d_model(js->s), (int)cmdv_session_n_ctx(js->s));
    return jstring_from_cstr(env, info);
}

JNIEXPORT jstring JNICALL Java_dev_commandv_demo_NativeBridge_loadPack(JNIEnv *env, jobject thiz, jlong handle,
                                                                      jstring path) {
    jni_session *js = from_handle(handle);
    if (!js) return jstring_from_cstr(env, "no model loaded");
    char *p = utf8_from_jstring(env, path);
    if (!p) return (*env)->ExceptionCheck(env) ? NULL : jstring_from_cstr(env, "no pack path"); /* OOM: let it propagate */
    cmdv_session_clear_packs(js->s);
    cmdv_error err;
    /* fingerprint not checked (the app does not hash the model file): arch, n_layer and d_model are */
    const int32_t idx = cmdv_session_add_pack(js->s, p, js->strength, 0, &err);
    free(p);
    if (idx < 0) {
        set_error(err.msg);
        return jstring_from_cstr(env, err.msg);
    }
    cmdv_session_set_pack_enabled(js->s, idx, js->pack_enabled);
    return NULL;
}

JNIEXPORT void JNICALL Java_dev_commandv_demo_NativeBridge_unloadPack(JNIEnv *env, jobject thiz, jlong handle) {
    jni_session *js = from_handle(handle);
    if (js) cmdv_session_clear_packs(js->s);
}

JNIEXPORT jstring JNICALL Java_dev_commandv_demo_NativeBridge_packInfo(JNIEnv *env, jobject thiz, jlong handle) {
    jni_session *js = from_handle(handle);
    const cmdv_pack *p = js ? cmdv_session_pack(js->s, 0) : NULL;
    if (!p) return jstring_from_cstr(env, "");
    char info[512];
    int k = snprintf(info, sizeof info, "%.*s: %d entries at layers [", (int)(p->name.len < 80 ? p->name.len : 80),
                     p->name.s, (int)p->n_entries);
    for (int32_t i = 0; i < p->n_entries && k > 0 && (size_t)k < sizeof info - 64; i++)
        k += snprintf(info + k, sizeof info - (size_t)k, "%s%d", i ? ", " : "", (int)p->entries[i].layer);
    if (k > 0 && (size_t)k < sizeof info)
        snprintf(info + k, sizeof info - (size_t)k, "], rank %d, for %.*s", (int)p->entries[0].rank,
                 (int)(p->arch.len < 40 ? p->arch.len : 40), p->arch.s);
    return jstring_from_cstr(env, info);
}

JNIEXPORT void JNICALL Java_dev_commandv_demo_NativeBridge_setPackEnabled(JNIEnv *env, jobject thiz, jlong handle,
                                                                         jboolean enabled) {
    jni_session *js = from_handle(handle);
    if (!js) return;
    js->pack_enabled = enabled ? 1 : 0;
    for (int32_t i = 0; i < cmdv_session_n_packs(js->s); i++) cmdv_session_set_pack_enabled(js->s, i, js->pack_enabled);
}

JNIEXPORT void JNICALL Java_dev_commandv_demo_NativeBridge_setStrength(JNIEnv *env, jobject thiz, jlong handle,
                                                                      jfloat strength) {
    jni_session *js = from_handle(handle);
    if (!js) return;
    js->strength = strength;
    for (int32_t i = 0; i < cmdv_session_n_packs(js->s); i++) cmdv_session_set_pack_strength(js->s, i, strength);
}

typedef struct {
    JNIEnv *env;
    jobject listener;
    jmethodID on_text;
    char *text; /* everything generated */
    size_t n, cap, sent; /* text[sent..n) not yet given to the listener */
    int failed;
} stream;

static int on_token(int32_t token, const char *piece, int32_t len, void *user_data) {
    stream *st = user_data;
    if (st->n + (size_t)len > st->cap) {
        const size_t cap = 2 * (st->n + (size_t)len) + 64;
        char *t = realloc(st->text, cap);
        if (!t) { st->failed = 1; return 1; }
        st->text = t;
        st->cap = cap;
    }
    memcpy(st->text + st->n, piece, (size_t)len);
    st->n += (size_t)len;
    if (!st->listener || !st->on_text) return 0;
    const size_t ready = st->sent + utf8_complete(st->text + st->sent, st->n - st->sent);
    if (ready == st->sent) return 0;
    JNIEnv *env = st->env;
    jstring s = jstring_from_utf8(env, st->text + st->sent, ready - st->sent);
    st->sent = ready;
    if (!s) { st->failed = 1; return 1; }
    const jboolean go_on = (*env)->CallBooleanMethod(env, st->listener, st->on_text, s);
    (*env)->DeleteLocalRef(env, s);
    if ((*env)->ExceptionCheck(env)) { st->failed = 1; return 1; }
    return go_on ? 0 : 1;
}

JNIEXPORT jstring JNICALL Java_dev_commandv_demo_NativeBridge_generate(JNIEnv *env, jobject thiz, jlong handle,
                                                                      jstring prompt, jint max_tokens,
                                                                      jfloat temperature, jobject listener) {
    jni_session *js = from_handle(handle);
    if (!js) { throw_state(env, "no model loaded"); return NULL; }
    char *text = utf8_from_jstring(env, prompt);
    if (!text) {
        if (!(*env)->ExceptionCheck(env)) throw_state(env, "no prompt"); /* never a JNI call with one pending */
        return NULL;
    }
    cmdv_error err;
    int32_t *ids = NULL;
    const int32_t n = cmdv_session_tokenize_chat(js->s, text, &ids, &err);
    free(text);
    if (n < 0) { throw_state(env, err.msg); return NULL; }
    stream st = {env, listener, NULL, NULL, 0, 0, 0, 0};
    if (listener) {
        jclass cls = (*env)->GetObjectClass(env, listener);
        st.on_text = (*env)->GetMethodID(env, cls, "onText", "(Ljava/lang/String;)Z");
        (*env)->DeleteLocalRef(env, cls);
        if (!st.on_text) { free(ids); return NULL; } /* NoSuchMethodError pending */
    }
    const cmdv_sampling sampling = {temperature, 0.95f, 0x5eed};
    const int32_t k = cmdv_session_generate(js->s, ids, n, max_tokens, &sampling, NULL, on_token, &st, &err);
    free(ids);
    if ((*env)->ExceptionCheck(env)) { free(st.text); return NULL; } /* the listener threw: let it propagate */
    if (k < 0 || st.failed) {
        free(st.text);
        throw_state(env, k < 0 ? err.msg : "out of memory while streaming");
        return NULL;
    }
    if (listener && st.sent < st.n) { /* the tail (an incomplete UTF-8 sequence) */
        jstring s = jstring_from_utf8(env, st.text + st.sent, st.n - st.sent);
        if (s) {
            (*env)->CallBooleanMethod(env, listener, st.on_text, s);
            (*env)->DeleteLocalRef(env, s);
        }
        if ((*env)->ExceptionCheck(env)) { free(st.text); return NULL; } /* the listener threw on the tail */
    }
    jstring out = jstring_from_utf8(env, st.text ? st.text : "", st.n);
    free(st.text);
    return out;
}

JNIEXPORT void JNICALL Java_dev_commandv_demo_NativeBridge_free(JNIEnv *env, jobject thiz, jlong handle) {
    jni_session *js = from_handle(handle);
    if (!js) return;
    cmdv_session_close(js->s);
    free(js);
}
