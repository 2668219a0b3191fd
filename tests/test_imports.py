"""The device side must not pull in torch or transformers; imports go runtime ← profiles ← exporter."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_import_is_light():
    code = ("import sys, commandv.runtime, commandv.runtime.pack, commandv.runtime.pack_gguf, "
            "commandv.runtime.llama_engine, commandv.runtime.signing, commandv.runtime.zoo, commandv.runtime.cli_run\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing commandv.runtime pulled in: {out}"


def test_imports_go_one_way():
    rules = {"runtime": ("commandv.profiles", "commandv.exporter"), "profiles": ("commandv.exporter",)}
    for pkg, banned in rules.items():
        for f in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for n in names:
                    assert not n.startswith(banned), f"{f.relative_to(ROOT)} imports {n}"
