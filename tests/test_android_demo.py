"""android_demo: what can be checked without Gradle or the Android SDK.

* The Kotlin ``external fun`` declarations of ``NativeBridge`` and the C ``JNIEXPORT`` definitions of
  ``cmdv_jni.c`` agree: names (JNI mangling), parameter counts and JNI types, return types; the
  listener method the C side looks up exists in Kotlin with that signature.
* Package / namespace / manifest / library names / resource ids are consistent across the project.
* The app's CMakeLists compiles exactly the core files of ``runtime/native`` (which exist, and are the
  same list as the host build's).
* ``cmdv_jni.c`` compiles (-Wall -Wextra -Werror) against a stub ``jni.h`` and, linked with the host
  build of the core and a fake JNIEnv (``android_demo/native/jni_harness.c``, under AddressSanitizer),
  loads the tiny model, refuses a pack for another model, applies a good one, streams text and gives
  the same reply as the Python engine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests import native_build

APP = native_build.ANDROID / "app"
KOTLIN = APP / "src/main/java/dev/commandv/demo"
JNI_C = APP / "src/main/cpp/cmdv_jni.c"
APP_CMAKE = APP / "src/main/cpp/CMakeLists.txt"
PACKAGE = "dev.commandv.demo"

KOTLIN_TO_JNI = {"Int": "jint", "Long": "jlong", "Float": "jfloat", "Double": "jdouble", "Boolean": "jboolean",
                 "Byte": "jbyte", "Short": "jshort", "Char": "jchar", "String": "jstring", "IntArray": "jintArray",
                 "FloatArray": "jfloatArray", "ByteArray": "jbyteArray", "LongArray": "jlongArray", "Unit": "void"}
KOTLIN_TO_SIG = {"Int": "I", "Long": "J", "Float": "F", "Double": "D", "Boolean": "Z", "String": "Ljava/lang/String;",
                 "Unit": "V"}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def kotlin_externals(path: Path) -> dict[str, tuple[list[str], str]]:
    """``external fun`` declarations: name → (parameter types, return type) (Kotlin spelling, '?' dropped)."""
    src = _strip_comments(path.read_text(encoding="utf-8"))
    out = {}
    for m in re.finditer(r"external\s+fun\s+(\w+)\s*\(([^)]*)\)\s*(?::\s*([\w.<>?]+))?", src):
        params = [p.split(":")[1].strip().rstrip("?") for p in m.group(2).split(",") if p.strip()]
        out[m.group(1)] = (params, (m.group(3) or "Unit").rstrip("?"))
    return out


def jni_definitions(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``JNIEXPORT ret JNICALL Java_...(params)`` → mangled name → (return type, parameter types)."""
    src = _strip_comments(path.read_text(encoding="utf-8"))
    out = {}
    for m in re.finditer(r"JNIEXPORT\s+(\w+)\s+JNICALL\s+(Java_\w+)\s*\(([^)]*)\)\s*\{", src):
        params = []
        for p in m.group(3).split(","):
            p = " ".join(p.replace("*", " * ").split())
            params.append(p.rsplit(" ", 1)[0].replace(" *", "*") if " " in p else p)
        out[m.group(2)] = (m.group(1), params)
    return out


def jni_mangle(package: str, cls: str, method: str) -> str:
    esc = lambda s: s.replace("_", "_1")  # noqa: E731  (no '$', ';', '[' or non-ASCII in our names)
    return "Java_" + "_".join(esc(p) for p in package.split(".")) + "_" + esc(cls) + "_" + esc(method)


def test_kotlin_and_c_jni_signatures_agree():
    kt = kotlin_externals(KOTLIN / "NativeBridge.kt")
    c = jni_definitions(JNI_C)
    assert kt and len(kt) == len(c), (sorted(kt), sorted(c))
    for name, (params, ret) in kt.items():
        mangled = jni_mangle(PACKAGE, "NativeBridge", name)
        assert mangled in c, f"{mangled} not defined in cmdv_jni.c"
        c_ret, c_params = c[mangled]
        assert c_params[:2] == ["JNIEnv*", "jobject"], (name, c_params)  # member of a Kotlin object: jobject this
        want = [KOTLIN_TO_JNI.get(t, "jobject") for t in params]
        assert c_params[2:] == want, (name, c_params[2:], want)
        assert c_ret == KOTLIN_TO_JNI.get(ret, "jobject"), (name, c_ret, ret)
    print(f"{len(kt)} JNI functions: Kotlin and C agree")


def test_listener_method_looked_up_by_c_exists_in_kotlin():
    src = JNI_C.read_text(encoding="utf-8")
    (name, sig), = re.findall(r'GetMethodID\(env, cls, "(onText)", "([^"]+)"\)', src)
    kt = _strip_comments((KOTLIN / "NativeBridge.kt").read_text(encoding="utf-8"))
    m = re.search(r"fun\s+interface\s+TokenListener\s*\{\s*fun\s+" + name
                  + r"\s*\(\s*\w+\s*:\s*(\w+)\s*\)\s*:\s*(\w+)", kt)
    assert m, "TokenListener.onText not found in NativeBridge.kt"
    assert sig == f"({KOTLIN_TO_SIG[m.group(1)]}){KOTLIN_TO_SIG[m.group(2)]}"
    assert re.search(r"listener:\s*TokenListener\?", kt)


def test_names_are_consistent_across_the_project():
    gradle = (APP / "build.gradle.kts").read_text(encoding="utf-8")
    assert f'namespace = "{PACKAGE}"' in gradle and f'applicationId = "{PACKAGE}"' in gradle
    assert 'abiFilters += listOf("arm64-v8a")' in gradle
    assert re.search(r'path = file\("src/main/cpp/CMakeLists.txt"\)', gradle) and APP_CMAKE.is_file()
    assert KOTLIN == APP / "src/main/java" / Path(*PACKAGE.split("."))
    for kt in KOTLIN.glob("*.kt"):
        assert re.match(rf"package {re.escape(PACKAGE)}\n", kt.read_text(encoding="utf-8")), kt.name
    manifest = (APP / "src/main/AndroidManifest.xml").read_text(encoding="utf-8")
    activities = re.findall(r'<activity\s+android:name="\.(\w+)"', manifest)
    for a in activities:
        assert re.search(rf"class {a}\s*:", (KOTLIN / f"{a}.kt").read_text(encoding="utf-8")), a
    bridge = (KOTLIN / "NativeBridge.kt").read_text(encoding="utf-8")
    (lib,) = re.findall(r'System\.loadLibrary\("(\w+)"\)', bridge)
    assert re.search(rf"add_library\({lib} SHARED", APP_CMAKE.read_text(encoding="utf-8"))
    proguard = (APP / "proguard-rules.pro").read_text(encoding="utf-8")
    assert f"{PACKAGE}.NativeBridge" in proguard and f"{PACKAGE}.TokenListener" in proguard


def test_kotlin_resources_exist():
    main = (KOTLIN / "MainActivity.kt").read_text(encoding="utf-8")
    layout = (APP / "src/main/res/layout/activity_main.xml").read_text(encoding="utf-8")
    strings = (APP / "src/main/res/values/strings.xml").read_text(encoding="utf-8")
    ids = set(re.findall(r'@\+id/(\w+)', layout))
    names = set(re.findall(r'<string name="(\w+)"', strings))
    used_ids = set(re.findall(r"R\.id\.(\w+)", main))
    used_strings = set(re.findall(r"R\.string\.(\w+)", main)) | set(re.findall(r"@string/(\w+)", layout + (
        APP / "src/main/AndroidManifest.xml").read_text(encoding="utf-8")))
    assert used_ids and used_ids <= ids, used_ids - ids
    assert used_strings <= names, used_strings - names
    assert set(re.findall(r"R\.layout\.(\w+)", main)) == {"activity_main"}
    for src in (main, (KOTLIN / "NativeBridge.kt").read_text(encoding="utf-8")):
        body = _strip_comments(re.sub(r'"(?:\\.|[^"\\])*"', '""', src))
        for o, c in ("()", "{}", "[]"):
            assert body.count(o) == body.count(c), (o, c)


def _cmake_sources(text: str, var: str) -> list[str]:
    m = re.search(rf"set\({var}\s+(.*?)\)", text, flags=re.S)
    return [Path(s.replace("${CMDV_NATIVE_DIR}/", "")).name for s in m.group(1).split()]


def test_app_cmake_compiles_the_core_of_runtime_native():
    app = APP_CMAKE.read_text(encoding="utf-8")
    rel = re.search(r'get_filename_component\(CMDV_NATIVE_DIR "\$\{CMAKE_CURRENT_SOURCE_DIR\}/([^"]+)" ABSOLUTE\)', app)
    native_dir = (APP_CMAKE.parent / rel.group(1)).resolve()
    assert native_dir == native_build.NATIVE.resolve()
    app_sources = _cmake_sources(app, "CMDV_NATIVE_SOURCES")
    host_sources = _cmake_sources((native_build.NATIVE / "CMakeLists.txt").read_text(encoding="utf-8"),
                                  "CMDV_NATIVE_SOURCES")
    assert all((native_dir / s).is_file() for s in app_sources), app_sources
    assert app_sources == host_sources
    assert set(app_sources) == {p.name for p in native_build.NATIVE.glob("cmdv_*.c")}


def test_readme_covers_build_and_device_paths():
    text = (native_build.ANDROID / "README.md").read_text(encoding="utf-8")
    for needle in ("Android Studio", "NDK", "LLAMA_CPP_DIR", "arm64-v8a", "Android/data/dev.commandv.demo/files",
                   "adb push", "Not tested here", "test_android_demo.py", "test_native_core.py"):
        assert needle in text, needle


# ------------------------------------------------------------------ the JNI C side, compiled and run on the host
@pytest.fixture(scope="module")
def toolchain():
    why = native_build.missing_toolchain()
    if why:
        pytest.skip(f"native build unavailable: {why}")
    return native_build.compiler(), native_build.llama_dirs()


def test_jni_bridge_compiles_against_stub_jni_h(toolchain):
    cc, (inc, _) = toolchain
    p = subprocess.run([cc, "-std=c11", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
                        f"-I{native_build.ANDROID / 'native/stub'}", f"-I{native_build.NATIVE}", f"-I{inc}",
                        str(JNI_C)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_jni_bridge_runs_through_a_fake_jvm(toolchain, tiny_gguf, tmp_path_factory, tmp_path):
    pytest.importorskip("llama_cpp")
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.pack.model import BehaviorPack
    from tests.test_llama_parity import random_pack

    cc, (inc, lib) = toolchain
    build = native_build.build(tmp_path_factory.mktemp("native"))
    exe = tmp_path / "jni_harness"
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    p = subprocess.run([cc, "-std=c11", "-O1", *san, "-Wall", "-Wextra", "-Wno-unused-parameter",
                        f"-I{native_build.ANDROID / 'native/stub'}", f"-I{native_build.NATIVE}", f"-I{inc}",
                        str(JNI_C), str(native_build.ANDROID / "native/jni_harness.c"), "-o", str(exe),
                        f"-L{build}", "-lcmdv", f"-Wl,-rpath,{build}", f"-L{lib}", "-lllama", "-lggml-base",
                        f"-Wl,-rpath,{lib}", "-lm"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

    prompt = "Tell me something nice about rivers and the sea."
    r = Recipient(tiny_gguf, n_ctx=256, n_threads=1)
    try:
        pack = random_pack(layers=(1, 3), seed=2, act="gelu", pq=True, offset=True, positions="f1+l2",
                           fingerprint=r.fingerprint, scale=1.0)
        good = pack.save(tmp_path / "good.gguf")
        other = Path(__file__).parent / "data/bad/pack/valid_base.gguf"  # valid, for a d=8 model
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")  # leaks are checked on the pack reader (ASan test)
        h = subprocess.run([str(exe), str(tiny_gguf), str(good), str(other), prompt, "12", "1.5"], capture_output=True,
                           env=env, timeout=120)
        err = h.stderr.decode("utf-8", "replace")
        assert h.returncode == 0 and "ERROR: AddressSanitizer" not in err and "runtime error" not in err, err[-3000:]
        out = json.loads(h.stdout)
        text = {k: bytes.fromhex(v).decode("utf-8", "replace") for k, v in out.items()
                if isinstance(v, str) and re.fullmatch(r"(?:[0-9a-f]{2})*", v)}
        ids = r.encode(prompt)
        edited = r.detokenize(r.generate_ids(ids, [BehaviorPack.load(good)], [1.5], max_tokens=12))
        base = r.detokenize(r.generate_ids(ids, max_tokens=12))
    finally:
        r.close()
    assert out["missing_handle"] == 0 and "could not load /nonexistent.gguf" in text["missing_error"]
    assert text["model_info"].startswith("llama, 4 layers, d_model 64")
    assert "this model has d=64" in text["bad_pack"] and out["good_pack"] is None
    assert text["pack_info"].startswith("pack: 2 entries at layers [1, 3], rank 3")
    assert text["edited"] == edited and edited != base, (text["edited"], edited, base)
    assert out["edited_streamed"] == out["edited"] and out["edited_calls"] >= 1 and not out["edited_thrown"]
    assert text["base"] == base and text["unloaded"] == base and text["pack_info_after_unload"] == ""
    assert out["stopped_calls"] == 2 and len(out["stopped"]) < len(out["edited"])
    assert out["no_model_result_null"] and out["no_model_thrown"]
    assert text["no_model_exception"] == "java/lang/IllegalStateException: no model loaded"
    assert out["throwing_listener_null"] and out["throwing_listener_pending"]
    assert text["throwing_listener_exception"] == "java/lang/RuntimeException: listener failed"
    assert out["jni_calls_with_exception_pending"] == 0  # what CheckJNI enforces on a device
