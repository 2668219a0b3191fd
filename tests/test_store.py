import numpy as np
import pytest

from commandv.profiles.store import Profile, ProfileError, ProfileMeta, find_profile, profile_path


def make_profile(n=6, d=8, L=3, fp="f" * 64, net="n" * 64, sha="p" * 64):
    rng = np.random.default_rng(0)
    meta = ProfileMeta(model_fingerprint=fp, network_fingerprint=net, model_name="m", arch="llama", n_layer=L,
                       d_model=d, n_prompts=n, prompt_set="s", prompt_sha256=sha, backend="gguf",
                       template="{{x}}", rendered_example="x")
    return Profile(layers=[rng.standard_normal((n, d)).astype(np.float32) for _ in range(L)], meta=meta)


def test_roundtrip_exact(tmp_path):
    p = make_profile()
    q = Profile.load(p.save(tmp_path / "p.safetensors"))
    assert q.meta == p.meta
    assert all(np.array_equal(a, b) for a, b in zip(p.layers, q.layers))


def test_store_lookup_file_and_network(tmp_path):
    p = make_profile()
    p.save(profile_path(p.meta.model_fingerprint, p.meta.prompt_sha256, "gguf", tmp_path))
    assert find_profile("f" * 64, "p" * 64, "gguf", root=tmp_path) is not None
    assert find_profile("g" * 64, "p" * 64, "gguf", root=tmp_path) is None  # another file: not by default
    hit = find_profile("g" * 64, "p" * 64, "gguf", network_fingerprint="n" * 64, match="network", root=tmp_path,
                       template="{{x}}")
    assert hit is not None and hit.meta.model_fingerprint == "f" * 64
    assert find_profile("f" * 64, "q" * 64, "gguf", root=tmp_path) is None
    # same network but another chat template (it decides the profiled token), or none: not reused
    for other in ("{{y}}", None):
        assert find_profile("g" * 64, "p" * 64, "gguf", network_fingerprint="n" * 64, match="network",
                            root=tmp_path, template=other) is None


def test_store_checks_the_whole_key(tmp_path):
    """Paths hold 16-character prefixes: a file there made for another model / prompt set is a miss."""
    p = make_profile(fp="f" * 16 + "0" * 48, sha="p" * 16 + "0" * 48)
    p.save(profile_path("f" * 64, "p" * 64, "gguf", tmp_path))  # swapped in under another key's path
    assert find_profile("f" * 64, "p" * 64, "gguf", root=tmp_path) is None
    assert find_profile("f" * 16 + "0" * 48, "p" * 16 + "0" * 48, "gguf", root=tmp_path) is not None


@pytest.mark.parametrize("field,value,msg", [
    ("prompt_sha256", 12345, "prompt_sha256 '12345' is not a string"),
    ("template", ["x"], "template \"\\['x'\\]\" is not a string or null"),
    ("seconds", "fast", "seconds 'fast' is not a number"),
    ("token_counts", [1, "2"], "token_counts must be a list of integers"),
])
def test_metadata_types_are_checked(tmp_path, field, value, msg):
    import json

    from safetensors.numpy import save_file

    p = make_profile()
    meta = {**p.meta.__dict__, field: value}
    save_file({f"layer.{i}": x for i, x in enumerate(p.layers)}, str(tmp_path / "m.safetensors"),
              metadata={"commandv.profile": json.dumps(meta)})
    with pytest.raises(ProfileError, match=msg):
        Profile.load(tmp_path / "m.safetensors")


def test_bad_profiles(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        Profile.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ProfileError, match="corrupt"):
        Profile.load(tmp_path / "junk.safetensors")
    good = make_profile().save(tmp_path / "g.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(good[:-40])
    with pytest.raises(ProfileError):
        Profile.load(tmp_path / "t.safetensors")
    p = make_profile()
    p.layers[1] = p.layers[1][:, :4]
    with pytest.raises(ProfileError, match="shape"):
        p.save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    p = make_profile()
    p.layers[0][0, 0] = np.nan
    with pytest.raises(ProfileError, match="NaN"):
        p.save(tmp_path / "nan.safetensors")
