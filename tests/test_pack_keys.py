"""The pack format's keys and tensor names are spelled once in Python (runtime/pack/keys.py), and the C reader
(runtime/native/cmdv_pack.c) spells exactly the same set: every Python key is a string literal there, and every
key-shaped literal there (``commandv.…``) is a Python key. Per-entry templates: Python ``{i}`` is C ``%u``."""

import re
from pathlib import Path

import numpy as np

from commandv.runtime.pack import keys as K

NATIVE = Path(__file__).resolve().parents[1] / "runtime" / "native"
KEY_SHAPED = re.compile(r"^commandv\.[a-z0-9_.%]+$")


def c_string_literals(path: Path) -> list[str]:
    """The string literals of a C file (comments removed; adjacent literals are not joined)."""
    return string_literals(path.read_text(encoding="utf-8"))


def string_literals(text: str) -> list[str]:
    """The string literals of C source ``text``, escapes kept as written."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"'(?:\\.|[^'\\])'", " ", text)  # character literals ('"' would open a string)
    return [m.group(1) for m in re.finditer(r'"((?:\\.|[^"\\\n])*)"', text)]


def c_spelling(key: str) -> str:
    return key.replace("{i}", "%u")


def python_keys() -> set[str]:
    return {c_spelling(k) for k in (*K.HEADER_KEYS, *K.ENTRY_KEYS)}


def test_c_reader_uses_every_python_key():
    literals = set(c_string_literals(NATIVE / "cmdv_pack.c"))
    missing = sorted((python_keys() | {K.ARCHITECTURE, K.NAME}) - literals)
    assert not missing, f"keys of runtime/pack/keys.py that cmdv_pack.c does not read: {missing}"


def test_c_reader_has_no_other_key():
    literals = {s for s in c_string_literals(NATIVE / "cmdv_pack.c") if KEY_SHAPED.match(s)}
    assert literals, "no key-shaped literal found: the parser no longer sees cmdv_pack.c's keys"
    extra = sorted(literals - python_keys())
    assert not extra, f"pack keys in cmdv_pack.c that runtime/pack/keys.py lacks: {extra}"


def test_c_reader_tensor_names_and_architecture():
    c = (NATIVE / "cmdv_pack.c").read_text(encoding="utf-8")
    assert K.TENSOR_PREFIX in c_string_literals(NATIVE / "cmdv_pack.c")
    names = re.search(r"T_NAMES\[N_T\]\s*=\s*\{([^}]*)\}", c)
    assert names, "T_NAMES not found in cmdv_pack.c"
    assert tuple(re.findall(r"'(.)'", names.group(1))) == K.TENSOR_NAMES
    arch = re.search(r'#define\s+CMDV_PACK_ARCH\s+"([^"]*)"', (NATIVE / "cmdv_pack.h").read_text(encoding="utf-8"))
    assert arch and arch.group(1) == K.PACK_ARCH


def test_literal_parser():
    """Comments and character literals are skipped; escaped quotes stay inside their string."""
    sample = '/* "commandv.comment" */ x = "a\\"b"; y = \'"\'; // "commandv.line"\nz = "commandv.x";\n'
    assert string_literals(sample) == ['a\\"b', "commandv.x"]


def test_templates_and_writer_agree(tmp_path):
    """The writer writes exactly these keys and tensor names (read back with gguf-py, which lists them)."""
    import gguf

    from commandv.runtime.pack.model import BehaviorPack, PackEntry

    d, r = 4, 2
    ones = lambda *s: np.ones(s, np.float32)  # noqa: E731
    pack = BehaviorPack(entries=[PackEntry(layer=0, A=ones(d, r), b=ones(r), C=ones(r, d), P=ones(d, 1),
                                           Q=ones(1, d), e=ones(d))],
                        recipient=dict(fingerprint="0" * 64, arch="llama", n_layer=2, d_model=d, name="tiny"),
                        name="k")  # gguf-py skips empty strings: every string key has a value
    path = pack.save(tmp_path / "k.gguf")
    reader = gguf.GGUFReader(str(path))
    pack_keys = {k for k in reader.fields if k.startswith(K.KEY_PREFIX)}
    assert pack_keys == set(K.HEADER_KEYS) | {K.entry_key(t, 0) for t in K.ENTRY_KEYS}
    assert {K.ARCHITECTURE, K.NAME} <= set(reader.fields)
    assert {t.name for t in reader.tensors} == {K.tensor_name(0, n) for n in K.TENSOR_NAMES}
