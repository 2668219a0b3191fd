package dev.commandv.demo

/**
 * The JNI bridge to the native core (libcmdv_jni.so: app/src/main/cpp/cmdv_jni.c over runtime/native).
 *
 * A session handle is an opaque pointer (0 = none). Not thread-safe: call every function from one
 * thread (MainActivity uses a single-thread executor), one request at a time.
 * The C side of every `external fun` is `Java_dev_commandv_demo_NativeBridge_<name>` in cmdv_jni.c
 * (tests/test_android_demo.py checks names and JNI types against this file).
 */
object NativeBridge {
    init {
        System.loadLibrary("cmdv_jni")
    }

    /** Loads a GGUF model and creates its context; returns a session handle, or 0 (see [lastError]). */
    external fun loadModel(path: String, nCtx: Int, nThreads: Int): Long

    /** The message of the last failed call on this thread ("" if none). */
    external fun lastError(): String

    /** "arch, n_layer layers, d_model wide" of the loaded model. */
    external fun modelInfo(handle: Long): String

    /**
     * Loads a behavior pack file, validates it like the Python reader and checks that it fits the model;
     * it replaces the current pack. Returns null on success, else the reader's error message.
     */
    external fun loadPack(handle: Long, path: String): String?

    /** Drops the current pack (generation runs unedited). */
    external fun unloadPack(handle: Long)

    /** One line describing the current pack ("" without one). */
    external fun packInfo(handle: Long): String

    /** Applies the pack to the next requests (true) or not (false); the pack stays loaded. */
    external fun setPackEnabled(handle: Long, enabled: Boolean)

    /** Pack strength for the next requests (multiplies every entry's strength; 0 = no edit). */
    external fun setStrength(handle: Long, strength: Float)

    /**
     * Replies to one user message (rendered with the model's chat template): up to [maxTokens] tokens,
     * greedy when [temperature] <= 0. [listener] gets the text as it is generated and may stop it.
     * Returns the whole reply; throws IllegalStateException with the native error message on failure.
     */
    external fun generate(handle: Long, prompt: String, maxTokens: Int, temperature: Float,
                          listener: TokenListener?): String

    /** Releases the session (model, context, pack). The handle is invalid afterwards. */
    external fun free(handle: Long)
}

/** Streaming callback of [NativeBridge.generate]: return false to stop generating. */
fun interface TokenListener {
    fun onText(piece: String): Boolean
}
