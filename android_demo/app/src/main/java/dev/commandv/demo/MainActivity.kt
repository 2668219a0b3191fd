package dev.commandv.demo

import android.content.Context
import android.net.Uri
import android.os.Bundle
import android.provider.OpenableColumns
import android.widget.Button
import android.widget.EditText
import android.widget.ScrollView
import android.widget.SeekBar
import android.widget.Switch
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.contract.ActivityResultContracts
import androidx.lifecycle.lifecycleScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File
import java.util.concurrent.Executors

/**
 * Pick a GGUF model and a behavior pack (Storage Access Framework; copied into app-specific storage),
 * toggle the pack, set its strength, chat. Every native call runs on one background thread.
 */
class MainActivity : ComponentActivity() {
    private val executor = Executors.newSingleThreadExecutor()
    private val native = executor.asCoroutineDispatcher()
    private var handle = 0L
    private var hasPack = false
    private var generating = false

    @Volatile
    private var stopRequested = false

    private lateinit var modelInfo: TextView
    private lateinit var packInfo: TextView
    private lateinit var packEnabled: Switch
    private lateinit var strength: SeekBar
    private lateinit var strengthLabel: TextView
    private lateinit var chat: TextView
    private lateinit var chatScroll: ScrollView
    private lateinit var prompt: EditText
    private lateinit var send: Button

    private val pickModel = registerForActivityResult(ActivityResultContracts.OpenDocument()) { uri ->
        if (uri != null) importAndLoad(uri, "models", ::loadModel)
    }
    private val pickPack = registerForActivityResult(ActivityResultContracts.OpenDocument()) { uri ->
        if (uri != null) importAndLoad(uri, "packs", ::loadPack)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        modelInfo = findViewById(R.id.modelInfo)
        packInfo = findViewById(R.id.packInfo)
        packEnabled = findViewById(R.id.packEnabled)
        strength = findViewById(R.id.strength)
        strengthLabel = findViewById(R.id.strengthLabel)
        chat = findViewById(R.id.chat)
        chatScroll = findViewById(R.id.chatScroll)
        prompt = findViewById(R.id.prompt)
        send = findViewById(R.id.send)

        findViewById<Button>(R.id.pickModel).setOnClickListener { pickModel.launch(arrayOf("*/*")) }
        findViewById<Button>(R.id.pickPack).setOnClickListener { pickPack.launch(arrayOf("*/*")) }
        packEnabled.setOnCheckedChangeListener { _, on -> onNative { NativeBridge.setPackEnabled(handle, on) } }
        strength.setOnSeekBarChangeListener(object : SeekBar.OnSeekBarChangeListener {
            override fun onProgressChanged(bar: SeekBar, progress: Int, fromUser: Boolean) {
                val s = progress / 100f
                strengthLabel.text = getString(R.string.strength) + " %.2f".format(s)
                onNative { NativeBridge.setStrength(handle, s) }
            }

            override fun onStartTrackingTouch(bar: SeekBar) {}
            override fun onStopTrackingTouch(bar: SeekBar) {}
        })
        strengthLabel.text = getString(R.string.strength) + " %.2f".format(strength.progress / 100f)
        send.setOnClickListener { if (generating) stopRequested = true else ask() }

        // open the model used last time, else one pushed with adb (see README.md)
        startupFile("model", "models")?.let(::loadModel)
    }

    override fun onDestroy() {
        super.onDestroy()
        val h = handle
        handle = 0L
        if (h != 0L) executor.execute { NativeBridge.free(h) }  // after any running request
        executor.shutdown()
    }

    /** The last used file of this kind if it still exists, else the first .gguf (by name) in <external files>/dir. */
    private fun startupFile(key: String, dir: String): File? =
        getSharedPreferences("state", Context.MODE_PRIVATE).getString(key, null)?.let(::File)?.takeIf { it.isFile }
            ?: getExternalFilesDir(dir)?.listFiles { f -> f.isFile && f.name.endsWith(".gguf") }
                ?.minByOrNull { it.name }

    /** Run a native call on the native thread (skipped without a model). */
    private fun onNative(block: () -> Unit) {
        if (handle != 0L) lifecycleScope.launch(native) { block() }
    }

    /** Copy a picked document into app-specific storage (<external files>/<dir>/<name>), then open it. */
    private fun importAndLoad(uri: Uri, dir: String, open: (File) -> Unit) {
        lifecycleScope.launch {
            (if (dir == "models") modelInfo else packInfo).text = "Copying ${displayName(uri)}…"
            val file = withContext(Dispatchers.IO) {
                val dest = File(getExternalFilesDir(dir), displayName(uri))
                contentResolver.openInputStream(uri)?.use { input ->
                    dest.outputStream().use { output -> input.copyTo(output, 1 shl 20) }
                }
                dest
            }
            open(file)
        }
    }

    private fun displayName(uri: Uri): String {
        contentResolver.query(uri, arrayOf(OpenableColumns.DISPLAY_NAME), null, null, null)?.use { c ->
            if (c.moveToFirst()) return c.getString(0).replace('/', '_')
        }
        return uri.lastPathSegment?.substringAfterLast('/') ?: "file.gguf"
    }

    private fun loadModel(file: File) {
        lifecycleScope.launch {
            modelInfo.text = "Loading ${file.name}…"
            val (h, info) = withContext(native) {
                if (handle != 0L) NativeBridge.free(handle)
                handle = 0L
                val threads = Runtime.getRuntime().availableProcessors().coerceAtMost(4)
                val h = NativeBridge.loadModel(file.path, 2048, threads)
                h to (if (h != 0L) NativeBridge.modelInfo(h) else NativeBridge.lastError())
            }
            handle = h
            hasPack = false
            modelInfo.text = if (h != 0L) "${file.name}: $info" else "Model not loaded: $info"
            packInfo.text = getString(R.string.no_pack)
            if (h != 0L) {
                getSharedPreferences("state", Context.MODE_PRIVATE).edit().putString("model", file.path).apply()
                onNative { NativeBridge.setStrength(handle, strength.progress / 100f) }
                startupFile("pack", "packs")?.let(::loadPack)
            }
        }
    }

    private fun loadPack(file: File) {
        if (handle == 0L) {
            packInfo.text = "Load a model first"
            return
        }
        lifecycleScope.launch {
            val (error, info) = withContext(native) {
                val error = NativeBridge.loadPack(handle, file.path)
                error to (if (error == null) NativeBridge.packInfo(handle) else "")
            }
            hasPack = error == null
            packInfo.text = error?.let { "Pack refused: $it" } ?: info
            if (error == null) {
                getSharedPreferences("state", Context.MODE_PRIVATE).edit().putString("pack", file.path).apply()
                onNative {
                    NativeBridge.setPackEnabled(handle, packEnabled.isChecked)
                    NativeBridge.setStrength(handle, strength.progress / 100f)
                }
            }
        }
    }

    private fun ask() {
        val text = prompt.text.toString().trim()
        if (text.isEmpty() || handle == 0L) return
        prompt.text.clear()
        val tag = if (hasPack && packEnabled.isChecked) " [pack ×%.2f]".format(strength.progress / 100f) else ""
        chat.append("\nYou: $text\nModel$tag: ")
        generating = true
        stopRequested = false
        send.text = getString(R.string.stop)
        lifecycleScope.launch {
            val failure = withContext(native) {
                try {
                    NativeBridge.generate(handle, text, 256, 0f, TokenListener { piece ->
                        runOnUiThread {
                            chat.append(piece)
                            chatScroll.post { chatScroll.fullScroll(ScrollView.FOCUS_DOWN) }
                        }
                        !stopRequested
                    })
                    null
                } catch (e: IllegalStateException) {
                    e.message ?: "generation failed"
                }
            }
            if (failure != null) chat.append("\n[error] $failure")
            chat.append("\n")
            generating = false
            send.text = getString(R.string.send)
        }
    }
}
