"""Every reader gives its specific error on every case of the bad-input corpus (tests/data/bad).

Readers: the pack reader (``BehaviorPack.load``), the recipient check
(``check_model``), the signed loader (``load_pack_checked`` with policy
``require``), the pyreft adapter importer (``load_adapter``) and the profile
loader (``Profile.load``). A case passes only with the expected exception class
*and* message substring; another exception, a crash or an accepted input fails
it. The last test prints the per-reader count (shown even with ``-q``).
The C pack reader (runtime/native/cmdv_pack.c, used by android_demo) runs on the same corpus under
AddressSanitizer in tests/test_native_core.py.
"""

from __future__ import annotations

import hashlib
import time
import tracemalloc

import pytest

from tests.bad_corpus import ROOT, load_manifest, run_case, summarize, table

CASES = load_manifest()
_OUTCOMES: dict[str, object] = {}


def _run(case):
    if case["reader"] == "adapter":
        pytest.importorskip("torch")
    if case["name"] not in _OUTCOMES:
        _OUTCOMES[case["name"]] = run_case(case)
    return _OUTCOMES[case["name"]]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_specific_error(case):
    o = _run(case)
    assert o.ok, (f"{case['name']} ({case['note']}): expected {case['error']} containing {case['match']!r}, "
                  f"got {o.status}: {o.detail}")


HOSTILE = [c for c in CASES if c["reader"] == "pack" and c["name"].split(":")[1].startswith(("huge_", "kv_count", "array_"))]


@pytest.mark.parametrize("case", HOSTILE, ids=[c["name"] for c in HOSTILE])
def test_hostile_headers_fail_fast_in_bounded_memory(case):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        o = run_case(case)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert o.ok, o.detail
    assert seconds < 1.0 and peak < 8 << 20, (seconds, peak)


def test_cmdv_inspect_gives_one_line_errors():
    """`cmdv inspect` on every bad pack: exit code 2 and a one-line message, never a traceback."""
    from typer.testing import CliRunner

    from commandv.exporter.cli.main import app

    runner = CliRunner()
    for case in (c for c in CASES if c["reader"] == "pack"):
        res = runner.invoke(app, ["inspect", str(ROOT / case["path"])])
        assert res.exit_code == 2 and res.output.startswith("error:"), (case["name"], res.output[-500:])
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 3, res.output


def test_cmdv_inspect_is_not_fooled_by_markup(tmp_path):
    from typer.testing import CliRunner

    from commandv.exporter.cli.main import app
    from tests.make_bad_corpus import base_pack

    p = base_pack()
    p.meta["donor"] = "[/bold] [red]x"
    path = p.save(tmp_path / "markup.gguf")
    res = CliRunner().invoke(app, ["inspect", str(path)])
    assert res.exit_code == 0 and "[/bold] [red]x" in res.output, res.output[-300:]
    bad = tmp_path / "[bold]y.gguf"
    bad.write_bytes(b"GGUG")
    res = CliRunner().invoke(app, ["inspect", str(bad)])
    assert res.exit_code == 2 and "magic" in res.output and "[bold]y.gguf" in res.output, res.output[-300:]


def test_manifest_is_consistent():
    names = [c["name"] + c["path"] for c in CASES]
    assert len(names) == len(set(names))
    for c in CASES:
        assert (ROOT / c["path"].split("#")[0]).exists(), c["path"]
        assert c["match"] and c["note"] and c["error"].endswith("Error")
    on_disk = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()}
    used = {c["path"].split("#")[0] for c in CASES}
    stray = {p for p in on_disk if not any(p == u or p.startswith(u + "/") or p.startswith(u + ".") for u in used)}
    assert stray <= {"manifest.json", "keys/trusted.pub"}, stray


def test_corpus_matches_its_generator(tmp_path):
    """The committed corpus is exactly what tests/make_bad_corpus.py writes (deterministic)."""
    pytest.importorskip("torch")
    from tests import make_bad_corpus

    make_bad_corpus.main(tmp_path / "bad")

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(tmp_path / "bad") == digest(ROOT), "run: python tests/make_bad_corpus.py"


def test_zz_summary_per_reader(capsys):
    outcomes = [_run(c) for c in CASES]
    s = summarize(outcomes)
    with capsys.disabled():
        print("\n" + table(s))
    assert s["all"][0] >= 100 and s["all"][1] == s["all"][0]
    assert {r for r in s} >= {"pack", "pack_recipient", "pack_signed", "adapter", "profile"}
