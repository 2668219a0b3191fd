/* crash_handler.c - name the operation that was running when native code crashed (Python CLI only). C11 + POSIX.
 *
 * Not part of the native core (cmdv_*.c, compiled into the app too): only the Python CLI loads it.
 * A crash inside llama.cpp kills the process with a bare "Segmentation fault". The CLI enables Python's
 * faulthandler (the Python traceback) and then this handler, which first writes one line naming the crash and
 * the operation noted last (cmdv_crash_note: "capturing hidden states of smollm2-135m-instruct.gguf"), then
 * hands the signal to the handler that was there before (faulthandler's, which prints the traceback and lets
 * the process die as it would have). Only async-signal-safe calls (write, sigaction, raise) run in the handler.
 *
 *   cmdv_crash_install();                      once, after faulthandler.enable()
 *   cmdv_crash_note("decoding prompt 3 of 64 with model.gguf");
 */
#define _XOPEN_SOURCE 700
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#define NOTE_MAX 480

static char g_notes[2][NOTE_MAX];
static atomic_int g_current = 0; /* which of the two buffers holds the latest complete note */
static struct sigaction g_previous[5];
static const int g_signals[5] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
static atomic_int g_installed = 0;

static void put(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t k = write(STDERR_FILENO, s, n);
        if (k <= 0) return;
        s += k;
        n -= (size_t)k;
    }
}

static const char *describe(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV (invalid memory access)";
    case SIGBUS: return "SIGBUS (bus error)";
    case SIGILL: return "SIGILL (an instruction this CPU does not have)";
    case SIGFPE: return "SIGFPE (arithmetic fault)";
    default: return "SIGABRT (aborted)";
    }
}

static void on_crash(int sig) {
    put("\ncommandv: native crash, ");
    put(describe(sig));
    const char *note = g_notes[atomic_load(&g_current)];
    if (note[0]) {
        put(", while ");
        put(note);
    }
    put(".\ncommandv: please report it with the output of `cmdv doctor` (CPU, llama.cpp build, settings).\n");
    for (int i = 0; i < 5; i++) {
        if (g_signals[i] == sig) {
            sigaction(sig, &g_previous[i], NULL); /* faulthandler's (or the default): it runs next */
            break;
        }
    }
    raise(sig);
}

/* Install the handler for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT (once); returns 0, or -1 on failure. */
int cmdv_crash_install(void) {
    if (atomic_exchange(&g_installed, 1)) return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_crash;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_NODEFER | SA_ONSTACK;
    for (int i = 0; i < 5; i++)
        if (sigaction(g_signals[i], &sa, &g_previous[i]) != 0) return -1;
    return 0;
}

/* Note the operation now running (copied, at most NOTE_MAX - 1 bytes; NULL or "" clears it). */
void cmdv_crash_note(const char *text) {
    const int next = 1 - atomic_load(&g_current);
    size_t n = text ? strlen(text) : 0;
    if (n >= NOTE_MAX) n = NOTE_MAX - 1;
    if (n) memcpy(g_notes[next], text, n);
    g_notes[next][n] = 0;
    atomic_store(&g_current, next);
}
