"""Tests for commandv.profiles.prompts and the general_v1 prompt bank."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from commandv.exporter.training.behaviors import eval_data_dir
from commandv.profiles import prompt_bank
from commandv.profiles.prompts import (
    BUILTIN_SETS,
    PromptSet,
    PromptSetError,
    load_jsonl_prompts,
    load_prompt_set,
    prompt_hash,
    split_holdout,
)

DATA_FILE = Path(prompt_bank.__file__).resolve().parent / "data" / "general_v1.jsonl"
HARMLESS = eval_data_dir() / "harmless_probes.jsonl"
# general_v1 is frozen: a changed generator must produce a new set (general_v2), not rewrite v1.
GENERAL_V1_SHA256 = "af0e7d0d6a3fd5055ffb39fcb80eb846187e656af3b3abc3a6d152d9758bc386"


def _reference_hash(prompts: list[str]) -> str:
    text = "[" + ",".join(json.dumps(p, ensure_ascii=False) for p in prompts) + "]"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def general() -> PromptSet:
    return load_prompt_set("general")


def test_builtin_size_unique_and_ids(general):
    assert len(general) >= 1000
    assert len(set(general.prompts)) == len(general.prompts)
    assert general.ids[0] == "general-00001" and len(set(general.ids)) == len(general.ids)
    assert general.name == "general_v1" and general.source == "builtin:general_v1"
    assert load_prompt_set("general_v1").sha256 == general.sha256
    assert set(BUILTIN_SETS) >= {"general", "general_v1"}


def test_builtin_covers_categories_and_lengths():
    recs = load_jsonl_prompts(DATA_FILE)
    cats = {r["category"] for r in recs}
    assert cats == set(prompt_bank.CATEGORIES)
    assert len(cats) >= 13
    words = [len(r["prompt"].split()) for r in recs]
    assert min(words) <= 4 and max(words) >= 40
    assert sum(60 <= w <= 100 for w in words) >= 50  # a real share of long multi-sentence requests
    assert max(words) <= 100


def test_packaged_file_matches_generator_and_is_frozen(general):
    built = prompt_bank.build_general_prompts(0)
    assert [r["prompt"] for r in built] == general.prompts
    assert [r["id"] for r in built] == general.ids
    assert general.sha256 == _reference_hash(general.prompts)
    assert general.sha256 == GENERAL_V1_SHA256
    assert prompt_bank.build_general_prompts(1) != built  # the seed matters


def test_main_writes_file(tmp_path):
    out = tmp_path / "sub" / "g.jsonl"
    prompt_bank.main(["--out", str(out)])
    assert out.read_bytes() == DATA_FILE.read_bytes()
    assert not list(out.parent.glob(".*partial*"))


def test_hash_independent_of_formatting(tmp_path, general):
    recs = load_jsonl_prompts(DATA_FILE)[:50]
    loose = tmp_path / "loose.jsonl"
    lines = ["", *("  " + json.dumps(r, ensure_ascii=True, indent=None, separators=(" , ", " : ")) + "  " for r in recs), ""]
    loose.write_text("\n\n".join(lines), encoding="utf-8")
    txt = tmp_path / "plain.txt"
    txt.write_text("\n".join(r["prompt"] for r in recs if "\n" not in r["prompt"]) + "\n", encoding="utf-8")
    a = load_prompt_set(loose)
    assert a.prompts == general.prompts[:50] and a.ids == general.ids[:50]
    assert a.sha256 == load_prompt_set("general", limit=50).sha256 == _reference_hash(general.prompts[:50])
    t = load_prompt_set(txt)
    assert t.sha256 == _reference_hash(t.prompts) and t.ids[0] == "plain-00001"


def test_limit_offset(general):
    ps = load_prompt_set("general", limit=10, offset=5)
    assert ps.prompts == general.prompts[5:15] and ps.ids == general.ids[5:15]
    assert ps.sha256 == prompt_hash(general.prompts[5:15]) != general.sha256
    assert load_prompt_set("general", offset=len(general) - 2).prompts == general.prompts[-2:]
    with pytest.raises(PromptSetError, match="leaves no prompts"):
        load_prompt_set("general", offset=len(general))
    with pytest.raises(PromptSetError, match="limit must be"):
        load_prompt_set("general", limit=0)
    with pytest.raises(PromptSetError, match="offset must be"):
        load_prompt_set("general", offset=-1)


def test_non_ascii_hash_uses_utf8(tmp_path):
    f = tmp_path / "u.jsonl"
    f.write_text('{"prompt": "Ça va?"}\n{"id": 7, "prompt": "¿Qué tal?"}\n', encoding="utf-8")
    ps = load_prompt_set(f)
    assert ps.ids == ["u-00001", "7"]
    expected = hashlib.sha256('["Ça va?","¿Qué tal?"]'.encode("utf-8")).hexdigest()
    assert ps.sha256 == expected


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", "\n  \n", "empty file"),
        ("empty.txt", "", "empty file"),
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": oops}\n', "malformed JSON on line 2"),
        ("noprompt.jsonl", '{"prompt": "ok"}\n\n{"text": "x"}\n', "line 3 has no non-empty string 'prompt'"),
        ("blank.jsonl", '{"prompt": "   "}\n', "line 1 has no non-empty string 'prompt'"),
        ("nonstr.jsonl", '{"prompt": 5}\n', "line 1 has no non-empty string 'prompt'"),
        ("list.jsonl", '["a"]\n', "line 1 is not a JSON object"),
        ("dup.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n{"id": "a", "prompt": "z"}\n',
         "duplicate id 'a' on lines 1 and 3"),
        ("badid.jsonl", '{"id": [1], "prompt": "x"}\n', "invalid 'id'"),
        ("data.csv", "prompt\nhi\n", "unsupported prompt file type"),
        ("surrogate.jsonl", '{"prompt": "bad \\ud800 half"}\n', "line 1: 'prompt' is not valid Unicode"),
        ("bigid.jsonl", '{"id": ' + "9" * 5000 + ', "prompt": "x"}\n', "malformed JSON on line 1: Exceeds the limit"),
        ("deep.jsonl", "[" * 100000 + "\n", "malformed JSON on line 1: nested too deeply"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(PromptSetError, match=message) as info:
        load_prompt_set(f)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(PromptSetError, match="prompt file not found"):
        load_prompt_set(tmp_path / "nope.jsonl")
    with pytest.raises(PromptSetError, match="prompt file not found"):
        load_jsonl_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(PromptSetError, match="unknown built-in prompt set 'general_v9'"):
        load_prompt_set("general_v9")


def test_split_deterministic_disjoint(general):
    fit, held = split_holdout(general, 0.1, seed=3)
    fit2, held2 = split_holdout(general, 0.1, seed=3)
    assert fit == fit2 and held == held2
    assert len(held) == round(len(general) * 0.1) and len(fit) + len(held) == len(general)
    assert not set(fit.ids) & set(held.ids)
    assert set(fit.ids) | set(held.ids) == set(general.ids)
    order = {i: k for k, i in enumerate(general.ids)}
    assert [order[i] for i in held.ids] == sorted(order[i] for i in held.ids)
    assert held.sha256 == _reference_hash(held.prompts)
    assert split_holdout(general, 0.1, seed=4)[1].ids != held.ids
    assert held.name == "general_v1:holdout" and fit.name == "general_v1:fit"


def test_split_bad_inputs(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("only prompt\n", encoding="utf-8")
    ps = load_prompt_set(f)
    with pytest.raises(PromptSetError, match="too few"):
        split_holdout(ps, 0.5)
    with pytest.raises(PromptSetError, match="holdout_fraction"):
        split_holdout(ps, 1.0)


@pytest.mark.skipif(not HARMLESS.exists(), reason="shared evaluation data not present")
def test_load_harmless_probes():
    recs = load_jsonl_prompts(HARMLESS)
    raw = [json.loads(line) for line in HARMLESS.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert [r["prompt"] for r in recs] == [r["prompt"] for r in raw]
    assert [r["id"] for r in recs] == [str(r["id"]) for r in raw]
    ps = load_prompt_set(HARMLESS, limit=20)
    assert ps.prompts == [r["prompt"] for r in raw[:20]] and ps.name == "harmless_probes"


def test_lines_split_at_newlines_only(tmp_path):
    """U+2028 / U+0085 / form feeds inside a prompt are not line breaks (str.splitlines would split there);
    CRLF files read like LF files."""
    prompts = ["one\u2028two", "three\x85four"]
    f = prompt_bank.write_jsonl([{"id": f"o{i}", "prompt": p} for i, p in enumerate(prompts)], tmp_path / "odd.jsonl")
    assert load_prompt_set(f).prompts == prompts
    t = tmp_path / "odd.txt"
    t.write_text("alpha\x85beta\r\ngamma\r\n", encoding="utf-8")
    ps = load_prompt_set(t)
    assert ps.prompts == ["alpha\x85beta", "gamma"] and ps.ids == ["odd-00001", "odd-00002"]
