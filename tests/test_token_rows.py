"""profiles/token_rows.py: token ends inside the prompt text, pairing two models' rows, and the pinv-tokens
export (QR-compressed layer pairs) against explicit torch pseudo-inverses on every fit row."""

import dataclasses

import numpy as np
import pytest

from commandv.profiles.token_rows import LAST, TokenRows, TokenRowsError, aligned_rows, content_ends, with_token_rows
from tests.test_store import make_profile


def test_content_ends_counts_bytes_inside_the_last_copy_of_the_prompt():
    pieces = [b"<s>", b"Hi", b" ", b"h\xc3", b"\xa9", b" h\xc3\xa9", b"<end>", b"\n"]
    content = "h\u00e9 h\u00e9".encode()  # 7 bytes; "Hi " before it, the template after it
    assert content_ends(pieces, content) == [0, 0, 0, 2, 3, 7, 8, 8]
    assert content_ends([b"abc"], b"zz") == [0]  # not found: nothing is inside


def rows(ends_per_prompt, d, seed, sha="p"):
    rng = np.random.default_rng(seed)
    prompt = [k for k, ends in enumerate(ends_per_prompt) for _ in ends]
    end = [e for ends in ends_per_prompt for e in ends]
    layers = [rng.standard_normal((len(end), d)).astype(np.float32) for _ in range(2)]
    return TokenRows(layers=layers, prompt=np.asarray(prompt, np.int32), end=np.asarray(end, np.int32),
                     prompts_sha256=sha)


def test_aligned_rows_pair_tokens_ending_at_the_same_byte_of_the_same_prompt():
    d = rows([[3, 5, 9, LAST], [2, 4, LAST]], 6, 0)
    r = rows([[5, 7, 9, LAST], [4, LAST]], 4, 1)
    XD, XR = aligned_rows(d, r)
    want = [(1, 0), (2, 2), (3, 3), (5, 4), (6, 5)]  # (donor row, recipient row)
    for l in range(2):
        np.testing.assert_array_equal(XD[l], d.layers[l][[i for i, _ in want]])
        np.testing.assert_array_equal(XR[l], r.layers[l][[j for _, j in want]])
    with pytest.raises(TokenRowsError, match="different prompts"):
        aligned_rows(d, rows([[LAST]], 4, 2, sha="other"))


def test_with_token_rows_appends_rows_under_one_prompt_key():
    donor, recip = make_profile(n=5, d=6, L=2, fp="d" * 64), make_profile(n=5, d=4, L=2, fp="r" * 64)
    XD = [np.ones((3, 6), np.float32)] * 2
    XR = [np.zeros((3, 4), np.float32)] * 2
    dp, rp = with_token_rows(donor, recip, XD, XR)
    assert dp.layers[1].shape == (8, 6) and rp.layers[0].shape == (8, 4)
    assert dp.meta.prompt_sha256 == rp.meta.prompt_sha256 and dp.meta.n_prompts == 8
    np.testing.assert_array_equal(dp.layers[0][:5], donor.layers[0])
    with pytest.raises(TokenRowsError):
        with_token_rows(donor, recip, XD, XR[:1])


@pytest.mark.parametrize("rcond", [None, 1e-2])
def test_pinv_tokens_export_equals_explicit_pinv_on_all_fit_rows(rcond):
    torch = pytest.importorskip("torch")
    from commandv.exporter.transfer.export import export_pack, holdout_rows
    from commandv.exporter.transfer.layermap import map_layer
    from tests.helpers import rel_err
    from tests.test_export import setup

    ad, donor, recip = setup(n=200, dR=24, dD=32)  # 180 fit rows > d_R + d_D: the compressed path
    res = export_pack(ad, donor, recip, holdout=0.1, rcond=rcond, method="pinv-tokens")
    fit, _ = holdout_rows(200, 0.1)
    assert res.pack.meta["method"] == "pinv-tokens"
    for edit, entry in zip(ad.edits, res.pack.entries):
        l_r = map_layer(edit.layer, 8, 6, "nearest")
        XR = torch.from_numpy(recip.layers[l_r][fit]).double()
        XD = torch.from_numpy(donor.layers[edit.layer][fit]).double()
        kw = {} if rcond is None else {"rtol": rcond}
        C_rd = (torch.linalg.pinv(XR, **kw) @ XD).numpy()
        C_dr = (torch.linalg.pinv(XD, **kw) @ XR).numpy()
        assert rel_err(entry.A, C_rd @ edit.A) < 1e-4
        assert rel_err(entry.C, edit.C @ C_dr) < 1e-4
    plain = export_pack(ad, donor, recip, holdout=0.1, rcond=rcond)  # pinv-tokens only names where rows came from
    for a, b in zip(plain.pack.entries, res.pack.entries):
        assert rel_err(b.A, a.A) < 1e-4 and rel_err(b.C, a.C) < 1e-4


@pytest.mark.llama
def test_captured_rows_are_the_numpy_forward_at_the_tokens_ending_there(tiny_gguf):
    """Each row against an independent numpy forward of the tiny GGUF, at the token whose detokenized prefix
    ends ``end`` bytes into the prompt (found here by detokenizing prefixes, not per-token pieces)."""
    pytest.importorskip("llama_cpp")
    from commandv.profiles.token_rows import capture_token_rows
    from commandv.runtime.engines.llama.lowlevel import LlamaModel
    from tests.tiny_models import reference_forward

    prompts = ["Please write a short story about a robot.", "count from one to ten: 1 2 3 4 5 6 7 8 9 10"]
    got = capture_token_rows(str(tiny_gguf), prompts, max_per_prompt=6, progress=False)
    assert got.n_rows == int((got.end == LAST).sum()) + int((got.end > 0).sum()) and (got.end == LAST).sum() == 2
    with LlamaModel(tiny_gguf) as m:
        for k, p in enumerate(prompts):
            text = m.apply_chat_template([{"role": "user", "content": p}])
            ids = m.tokenize(text)
            ref, _ = reference_forward(tiny_gguf, ids)
            start = text.encode().rfind(p.encode())
            ends = [len(m.detokenize(ids[:i + 1]).encode()) - start for i in range(len(ids))]
            mine = np.flatnonzero(got.prompt == k)
            assert 1 < len(mine) <= 7
            for row in mine:  # ASCII prompts: detokenized prefixes have exact byte lengths (multi-byte: above)
                e = int(got.end[row])
                i = len(ids) - 1 if e == LAST else ends.index(e)
                for il in range(4):  # the engine's context keeps an f16 KV cache: ~5e-4 relative
                    diff = np.linalg.norm(got.layers[il][row] - ref[il][i]) / np.linalg.norm(ref[il][i])
                    assert diff < 2e-3, (k, e, il, diff)


@pytest.mark.llama
def test_stored_token_rows_are_read_back_for_the_same_key_only(tiny_gguf, tmp_home, monkeypatch):
    """The store returns what a fresh capture returns; a second call reads the file (the model is not run); another
    prompt list or cap, or a damaged file, is a miss that runs the model again."""
    pytest.importorskip("llama_cpp")
    from commandv.profiles import token_rows as tr

    m, prompts = str(tiny_gguf), ["Hello there.", "What is two plus two?", "Bonjour."]
    fresh = tr.capture_token_rows(m, prompts, progress=False)
    first = tr.stored_token_rows(m, prompts, progress=False)
    stored = list((tmp_home / "profiles").rglob("tokens-*.safetensors"))
    assert len(stored) == 1
    runs = []
    real = tr.capture_token_rows
    monkeypatch.setattr(tr, "capture_token_rows", lambda *a, **k: runs.append(a) or real(*a, **k))
    again = tr.stored_token_rows(m, prompts, progress=False)
    assert runs == []
    for rows in (first, again):
        np.testing.assert_array_equal(rows.prompt, fresh.prompt)
        np.testing.assert_array_equal(rows.end, fresh.end)
        for a, b in zip(rows.layers, fresh.layers):
            np.testing.assert_array_equal(a, b)
    tr.stored_token_rows(m, prompts[:2], progress=False)
    tr.stored_token_rows(m, prompts, max_per_prompt=2, progress=False)
    assert len(runs) == 2 and len(list((tmp_home / "profiles").rglob("tokens-*.safetensors"))) == 3
    stored[0].write_bytes(stored[0].read_bytes()[:100])  # truncated: a miss, captured and stored again
    repaired = tr.stored_token_rows(m, prompts, progress=False)
    assert len(runs) == 3
    np.testing.assert_array_equal(repaired.layers[0], fresh.layers[0])
    assert tr.load_token_rows(stored[0], "another model", fresh.prompts_sha256, 32) is None


@pytest.mark.llama
def test_fit_profiles_adds_token_rows_unless_gated_asks_for_none(tiny_gguf, tmp_home):
    """gated with 0 token prompts fits on the last-token rows as given; with k it gets the aligned rows of k general
    prompts (like pinv-tokens); pinv-tokens with 0 and no anchor texts is refused in one line."""
    pytest.importorskip("llama_cpp")
    from commandv.exporter.transfer.export import ExportError, fit_profiles
    from commandv.profiles.prompts import load_prompt_set
    from commandv.profiles.token_rows import capture_token_rows

    m = str(tiny_gguf)
    base = make_profile(n=5, d=64, L=4)
    base.meta = dataclasses.replace(base.meta, backend="gguf")
    _, _, d0, r0 = fit_profiles("gated", m, m, base, base, 0, contrast=True, progress=False)
    assert d0.layers[0].shape == (5, 64) and r0.meta.prompt_sha256 == base.meta.prompt_sha256
    _, _, d3, _ = fit_profiles("gated", m, m, base, base, 3, contrast=True, progress=False)
    rows = capture_token_rows(m, load_prompt_set("general", limit=3).prompts, progress=False)
    assert d3.layers[0].shape == (5 + rows.n_rows, 64)  # one model on both sides: every row pairs
    with pytest.raises(ExportError, match="pinv-tokens fits token rows"):
        fit_profiles("pinv-tokens", m, m, base, base, 0, progress=False)
