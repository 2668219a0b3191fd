/*
 * jni_harness.c - run app/src/main/cpp/cmdv_jni.c on the host with a fake JNIEnv (stub/jni.h).
 *
 * A tiny "JVM": strings and byte arrays are heap objects holding UTF-8 bytes, one listener object
 * records what NativeBridge.generate streams to it. The harness calls the JNI functions in the order
 * the app does and prints one JSON object (byte strings as hex) for tests/test_android_demo.py:
 *
 *   jni_harness MODEL.gguf GOOD_PACK.gguf BAD_PACK.gguf PROMPT MAX_TOKENS STRENGTH
 */

#include <jni.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the functions under test (cmdv_jni.c) */
jlong Java_dev_commandv_demo_NativeBridge_loadModel(JNIEnv *, jobject, jstring, jint, jint);
jstring Java_dev_commandv_demo_NativeBridge_lastError(JNIEnv *, jobject);
jstring Java_dev_commandv_demo_NativeBridge_modelInfo(JNIEnv *, jobject, jlong);
jstring Java_dev_commandv_demo_NativeBridge_loadPack(JNIEnv *, jobject, jlong, jstring);
void Java_dev_commandv_demo_NativeBridge_unloadPack(JNIEnv *, jobject, jlong);
jstring Java_dev_commandv_demo_NativeBridge_packInfo(JNIEnv *, jobject, jlong);
void Java_dev_commandv_demo_NativeBridge_setPackEnabled(JNIEnv *, jobject, jlong, jboolean);
void Java_dev_commandv_demo_NativeBridge_setStrength(JNIEnv *, jobject, jlong, jfloat);
jstring Java_dev_commandv_demo_NativeBridge_generate(JNIEnv *, jobject, jlong, jstring, jint, jfloat, jobject);
void Java_dev_commandv_demo_NativeBridge_free(JNIEnv *, jobject, jlong);

/* ------------------------------------------------------------------ fake objects */

typedef enum { K_CLASS, K_STRING, K_BYTES, K_LISTENER } kind;

typedef struct obj {
    kind k;
    char *data; /* class name, string bytes or array bytes */
    size_t n;
    struct obj *next;
} obj;

static obj *g_arena;
static int g_pending; /* a Java exception is pending */
static char g_thrown[600];
static char g_streamed[1 << 16];
static size_t g_streamed_n;
static int g_calls, g_stop_after, g_throw_on;
static int g_violations; /* JNI calls made while an exception was pending (Android's CheckJNI aborts on them) */

/* Only ExceptionCheck/ExceptionClear/DeleteLocalRef (of what this harness offers) may run with one pending. */
#define CHECK_JNI() do { if (g_pending) g_violations++; } while (0)

struct _jmethodID { const char *name, *sig; };
static struct _jmethodID M_GET_BYTES = {"getBytes", "(Ljava/lang/String;)[B"};
static struct _jmethodID M_STRING_INIT = {"<init>", "([BLjava/lang/String;)V"};
static struct _jmethodID M_ON_TEXT = {"onText", "(Ljava/lang/String;)Z"};

static obj *new_obj(kind k, const char *data, size_t n) {
    obj *o = calloc(1, sizeof *o);
    if (!o) abort();
    o->k = k;
    o->data = malloc(n + 1);
    if (!o->data) abort();
    if (n) memcpy(o->data, data, n);
    o->data[n] = 0;
    o->n = n;
    o->next = g_arena;
    g_arena = o;
    return o;
}

static jclass FindClass(JNIEnv *env, const char *name) {
    CHECK_JNI();
    return new_obj(K_CLASS, name, strlen(name));
}

static jint ThrowNew(JNIEnv *env, jclass cls, const char *msg) {
    CHECK_JNI();
    g_pending = 1;
    snprintf(g_thrown, sizeof g_thrown, "%s: %s", ((obj *)cls)->data, msg);
    return 0;
}

static jboolean ExceptionCheck(JNIEnv *env) { return g_pending ? JNI_TRUE : JNI_FALSE; }
static void ExceptionClear(JNIEnv *env) { g_pending = 0; }
static void DeleteLocalRef(JNIEnv *env, jobject o) { (void)o; /* the arena owns everything */ }

static jclass GetObjectClass(JNIEnv *env, jobject o) {
    CHECK_JNI();
    const obj *x = o;
    const char *name = x->k == K_STRING ? "java/lang/String" : x->k == K_LISTENER ? "dev/commandv/demo/TokenListener"
                                                                                  : "[B";
    return FindClass(env, name);
}

static jmethodID GetMethodID(JNIEnv *env, jclass cls, const char *name, const char *sig) {
    CHECK_JNI();
    struct _jmethodID *all[] = {&M_GET_BYTES, &M_STRING_INIT, &M_ON_TEXT};
    for (size_t i = 0; i < 3; i++)
        if (strcmp(all[i]->name, name) == 0 && strcmp(all[i]->sig, sig) == 0) return all[i];
    g_pending = 1;
    snprintf(g_thrown, sizeof g_thrown, "java/lang/NoSuchMethodError: %s %s", name, sig);
    return NULL;
}

static jobject NewObject(JNIEnv *env, jclass cls, jmethodID m, ...) {
    CHECK_JNI();
    if (m != &M_STRING_INIT) abort();
    va_list ap;
    va_start(ap, m);
    obj *bytes = va_arg(ap, jobject);
    obj *charset = va_arg(ap, jobject);
    va_end(ap);
    if (strcmp(charset->data, "UTF-8") != 0) abort();
    return new_obj(K_STRING, bytes->data, bytes->n);
}

static jobject CallObjectMethod(JNIEnv *env, jobject o, jmethodID m, ...) {
    CHECK_JNI();
    if (m != &M_GET_BYTES || ((obj *)o)->k != K_STRING) abort();
    return new_obj(K_BYTES, ((obj *)o)->data, ((obj *)o)->n);
}

static jboolean CallBooleanMethod(JNIEnv *env, jobject o, jmethodID m, ...) {
    CHECK_JNI();
    if (m != &M_ON_TEXT || ((obj *)o)->k != K_LISTENER) abort();
    va_list ap;
    va_start(ap, m);
    obj *s = va_arg(ap, jobject);
    va_end(ap);
    if (g_streamed_n + s->n > sizeof g_streamed) abort();
    memcpy(g_streamed + g_streamed_n, s->data, s->n);
    g_streamed_n += s->n;
    g_calls++;
    if (g_throw_on > 0 && g_calls == g_throw_on) { /* the listener throws (e.g. a RuntimeException in onText) */
        g_pending = 1;
        snprintf(g_thrown, sizeof g_thrown, "java/lang/RuntimeException: listener failed");
        return JNI_FALSE;
    }
    return (g_stop_after > 0 && g_calls >= g_stop_after) ? JNI_FALSE : JNI_TRUE;
}

static jstring NewStringUTF(JNIEnv *env, const char *s) {
    CHECK_JNI();
    return new_obj(K_STRING, s, strlen(s));
}

static jsize GetArrayLength(JNIEnv *env, jarray a) {
    CHECK_JNI();
    return (jsize)((obj *)a)->n;
}

static jbyteArray NewByteArray(JNIEnv *env, jsize n) {
    CHECK_JNI();
    obj *o = new_obj(K_BYTES, "", 0);
    free(o->data);
    o->data = calloc((size_t)n + 1, 1);
    if (!o->data) abort();
    o->n = (size_t)n;
    return o;
}

static void GetByteArrayRegion(JNIEnv *env, jbyteArray a, jsize start, jsize len, jbyte *buf) {
    CHECK_JNI();
    const obj *x = a;
    if (start < 0 || len < 0 || (size_t)start + (size_t)len > x->n) abort(); /* ArrayIndexOutOfBounds */
    memcpy(buf, x->data + start, (size_t)len);
}

static void SetByteArrayRegion(JNIEnv *env, jbyteArray a, jsize start, jsize len, const jbyte *buf) {
    obj *x = a;
    if (start < 0 || len < 0 || (size_t)start + (size_t)len > x->n) abort();
    memcpy(x->data + start, buf, (size_t)len);
}

static const struct JNINativeInterface TABLE = {
    FindClass, ThrowNew, ExceptionCheck, ExceptionClear, DeleteLocalRef, GetObjectClass, GetMethodID, NewObject,
    CallObjectMethod, CallBooleanMethod, NewStringUTF, GetArrayLength, NewByteArray, GetByteArrayRegion,
    SetByteArrayRegion,
};

/* ------------------------------------------------------------------ output */

static void hex(const char *key, const char *s, size_t n) {
    printf(", \"%s\": \"", key);
    for (size_t i = 0; i < n; i++) printf("%02x", (unsigned char)s[i]);
    printf("\"");
}

static void hex_str(const char *key, jstring s) {
    if (!s) { printf(", \"%s\": null", key); return; }
    hex(key, ((obj *)s)->data, ((obj *)s)->n);
}

static jstring gen(JNIEnv *env, jobject thiz, jlong h, jstring prompt, int max_tokens, jobject listener,
                   int stop_after) {
    g_streamed_n = 0;
    g_calls = 0;
    g_stop_after = stop_after;
    g_pending = 0;
    return Java_dev_commandv_demo_NativeBridge_generate(env, thiz, h, prompt, max_tokens, 0.0f, listener);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL GOOD_PACK BAD_PACK PROMPT MAX_TOKENS STRENGTH\n", argv[0]);
        return 2;
    }
    JNIEnv env_storage = &TABLE;
    JNIEnv *env = &env_storage;
    jobject thiz = new_obj(K_CLASS, "dev/commandv/demo/NativeBridge", 30);
    jobject listener = new_obj(K_LISTENER, "", 0);
    const int max_tokens = atoi(argv[5]);
    const float strength = strtof(argv[6], NULL);

    printf("{\"ok\": true");
    jstring nowhere = NewStringUTF(env, "/nonexistent.gguf");
    const jlong missing = Java_dev_commandv_demo_NativeBridge_loadModel(env, thiz, nowhere, 128, 1);
    printf(", \"missing_handle\": %lld", (long long)missing);
    hex_str("missing_error", Java_dev_commandv_demo_NativeBridge_lastError(env, thiz));

    const jlong h = Java_dev_commandv_demo_NativeBridge_loadModel(env, thiz, NewStringUTF(env, argv[1]), 256, 1);
    printf(", \"handle_ok\": %s", h ? "true" : "false");
    if (!h) { hex_str("error", Java_dev_commandv_demo_NativeBridge_lastError(env, thiz)); printf("}\n"); return 1; }
    hex_str("model_info", Java_dev_commandv_demo_NativeBridge_modelInfo(env, thiz, h));
    hex_str("bad_pack", Java_dev_commandv_demo_NativeBridge_loadPack(env, thiz, h, NewStringUTF(env, argv[3])));
    hex_str("good_pack", Java_dev_commandv_demo_NativeBridge_loadPack(env, thiz, h, NewStringUTF(env, argv[2])));
    hex_str("pack_info", Java_dev_commandv_demo_NativeBridge_packInfo(env, thiz, h));
    Java_dev_commandv_demo_NativeBridge_setStrength(env, thiz, h, strength);
    Java_dev_commandv_demo_NativeBridge_setPackEnabled(env, thiz, h, JNI_TRUE);

    jstring prompt = NewStringUTF(env, argv[4]);
    jstring t = gen(env, thiz, h, prompt, max_tokens, listener, 0);
    hex_str("edited", t);
    hex("edited_streamed", g_streamed, g_streamed_n);
    printf(", \"edited_calls\": %d, \"edited_thrown\": %d", g_calls, g_pending);

    Java_dev_commandv_demo_NativeBridge_setPackEnabled(env, thiz, h, JNI_FALSE);
    hex_str("base", gen(env, thiz, h, prompt, max_tokens, NULL, 0));

    Java_dev_commandv_demo_NativeBridge_setPackEnabled(env, thiz, h, JNI_TRUE);
    jstring stopped = gen(env, thiz, h, prompt, max_tokens, listener, 2);
    printf(", \"stopped_calls\": %d", g_calls);
    hex_str("stopped", stopped);

    g_throw_on = 1; /* the listener throws on its first call: null result, that exception left pending */
    jstring thrown = gen(env, thiz, h, prompt, max_tokens, listener, 0);
    printf(", \"throwing_listener_null\": %s, \"throwing_listener_pending\": %d", thrown ? "false" : "true", g_pending);
    hex("throwing_listener_exception", g_thrown, strlen(g_thrown));
    g_throw_on = 0;
    g_pending = 0;

    Java_dev_commandv_demo_NativeBridge_unloadPack(env, thiz, h);
    hex_str("unloaded", gen(env, thiz, h, prompt, max_tokens, NULL, 0));
    hex_str("pack_info_after_unload", Java_dev_commandv_demo_NativeBridge_packInfo(env, thiz, h));

    jstring none = gen(env, thiz, 0, prompt, max_tokens, NULL, 0);
    printf(", \"no_model_result_null\": %s, \"no_model_thrown\": %d", none ? "false" : "true", g_pending);
    hex("no_model_exception", g_thrown, strlen(g_thrown));

    Java_dev_commandv_demo_NativeBridge_free(env, thiz, h);
    printf(", \"jni_calls_with_exception_pending\": %d}\n", g_violations);
    while (g_arena) {
        obj *next = g_arena->next;
        free(g_arena->data);
        free(g_arena);
        g_arena = next;
    }
    return 0;
}
