/*
 * Minimal stand-in for <jni.h>, ONLY for compiling and running app/src/main/cpp/cmdv_jni.c on a host
 * without a JDK or the NDK (tests/test_android_demo.py). Not ABI-compatible with a JVM: the function
 * table holds just the functions cmdv_jni.c calls, with the signatures of the real jni.h (C flavour:
 * JNIEnv is a pointer to the function table, calls are (*env)->Fn(env, ...)).
 * The Android build uses the NDK's real jni.h.
 */
#ifndef CMDV_STUB_JNI_H
#define CMDV_STUB_JNI_H

#include <stdarg.h>
#include <stdint.h>

typedef uint8_t jboolean;
typedef int8_t jbyte;
typedef uint16_t jchar;
typedef int16_t jshort;
typedef int32_t jint;
typedef int64_t jlong;
typedef float jfloat;
typedef double jdouble;
typedef jint jsize;

typedef void *jobject;
typedef jobject jclass;
typedef jobject jstring;
typedef jobject jarray;
typedef jarray jbyteArray;
typedef jarray jintArray;
typedef jarray jfloatArray;
typedef jobject jthrowable;
typedef struct _jmethodID *jmethodID;

#define JNI_FALSE 0
#define JNI_TRUE 1
#define JNI_VERSION_1_6 0x00010006

#define JNIEXPORT __attribute__((visibility("default")))
#define JNICALL

struct JNINativeInterface;
typedef const struct JNINativeInterface *JNIEnv;

struct JNINativeInterface {
    jclass (*FindClass)(JNIEnv *, const char *);
    jint (*ThrowNew)(JNIEnv *, jclass, const char *);
    jboolean (*ExceptionCheck)(JNIEnv *);
    void (*ExceptionClear)(JNIEnv *);
    void (*DeleteLocalRef)(JNIEnv *, jobject);
    jclass (*GetObjectClass)(JNIEnv *, jobject);
    jmethodID (*GetMethodID)(JNIEnv *, jclass, const char *, const char *);
    jobject (*NewObject)(JNIEnv *, jclass, jmethodID, ...);
    jobject (*CallObjectMethod)(JNIEnv *, jobject, jmethodID, ...);
    jboolean (*CallBooleanMethod)(JNIEnv *, jobject, jmethodID, ...);
    jstring (*NewStringUTF)(JNIEnv *, const char *);
    jsize (*GetArrayLength)(JNIEnv *, jarray);
    jbyteArray (*NewByteArray)(JNIEnv *, jsize);
    void (*GetByteArrayRegion)(JNIEnv *, jbyteArray, jsize, jsize, jbyte *);
    void (*SetByteArrayRegion)(JNIEnv *, jbyteArray, jsize, jsize, const jbyte *);
};

#endif /* CMDV_STUB_JNI_H */
