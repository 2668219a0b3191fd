"""Real pyreft interventions and adapter folders for the importer tests.

Everything here builds objects with pyreft 0.1.0 / pyvene 0.1.8 themselves (no
hand-written state dicts), so the importer is checked against what pyreft
really saves and really computes:

* :func:`make_intervention` — one pyreft intervention (fp32, eval mode) with
  randomized parameters, including a non-trivial orthogonal rotation.
* :func:`torch_roundtrip` — ``torch.save`` + ``torch.load(weights_only=True)``
  of a state dict, as an adapter file goes through disk.
* :func:`pyreft_apply` — pyreft's own ``intervention(base)`` on ``h [n, d]``.
* :func:`save_reft_adapter` — a tiny Llama wrapped with ``get_reft_model`` and
  saved the two ways pyreft writes adapters (``ReftModel.save`` with config.json,
  ``ReftTrainer.save_model``'s ``intervenable_model/`` weights only).

pyreft is imported lazily (the import takes ~10 s); callers skip when it is missing.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

# canonical kind → pyreft class name (pyreft 0.1.0)
PYREFT_CLASS = {
    "LoReFT": "LoreftIntervention",
    "NoReFT": "NoreftIntervention",
    "DiReFT": "DireftIntervention",
    "NodiReFT": "NodireftIntervention",
    "ConsReFT": "ConsreftIntervention",
    "LobiReFT": "LobireftIntervention",
}
KINDS_WITH_ACT = ("LoReFT", "NoReFT", "DiReFT", "NodiReFT")
KINDS_WITH_BIAS_FLAG = ("NoReFT", "NodiReFT")


def import_pyreft():
    """``import pyreft`` (raises ImportError when it is not installed)."""
    import pyreft  # noqa: PLC0415  (slow import, kept lazy)

    return pyreft


def _perturb_rotation(rotate_layer, gen) -> None:
    """Move a torch-orthogonal-parametrized ``[d, r]`` weight far from its init.

    With ``use_trivialization`` the stored ``original`` is ``-Id`` at init; its
    strictly-lower part feeds the Householder reflections and ``diag.int()``
    gives each column's sign. We add noise below the diagonal and set the
    diagonal to ±(1 + u), u in [0, 0.5), so signs flip but no column is zeroed.
    """
    import torch

    orig = rotate_layer.parametrizations.weight.original
    with torch.no_grad():
        for _ in range(3):  # a few optimizer-free perturbation steps
            orig.add_(0.4 * torch.randn(orig.shape, generator=gen, dtype=orig.dtype).tril(-1))
        k = min(orig.shape)
        signs = torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0)
        mags = 1.0 + 0.5 * torch.rand(k, generator=gen)
        orig.diagonal().copy_((signs * mags).to(orig.dtype))


def randomize_(intervention, seed: int = 0):
    """Give every parameter of a pyreft intervention random, non-trivial values (in place)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in (("learned_source", getattr(intervention, "learned_source", None)),
                          ("proj_layer", getattr(intervention, "proj_layer", None))):
            if isinstance(mod, torch.nn.Linear):
                d = mod.weight.shape[1]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) / d**0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen))
            elif isinstance(mod, torch.nn.Parameter):  # ConsReFT / LobiReFT constant source [r]
                mod.copy_(2.0 * torch.randn(mod.shape, generator=gen))
    if hasattr(intervention, "rotate_layer"):
        _perturb_rotation(intervention.rotate_layer, gen)
    return intervention


def make_intervention(kind: str, d: int, r: int, act: str | None = None,
                      add_bias: bool | None = None, seed: int = 0):
    """A randomized fp32 pyreft intervention of ``kind`` in eval mode (dropout off)."""
    import torch

    pyreft = import_pyreft()
    kwargs = dict(embed_dim=d, low_rank_dimension=r, dtype=torch.float32)
    if kind in KINDS_WITH_ACT:
        kwargs["act_fn"] = act
    if kind in KINDS_WITH_BIAS_FLAG:
        kwargs["add_bias"] = bool(add_bias)
    torch.manual_seed(seed)  # pyreft's own inits draw from the global RNG
    intervention = getattr(pyreft, PYREFT_CLASS[kind])(**kwargs)
    randomize_(intervention, seed + 1)
    return intervention.eval()


def torch_roundtrip(state: dict) -> dict:
    """``torch.save`` then ``torch.load(weights_only=True)``: what reading an intkey file gives."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def pyreft_apply(intervention, h: np.ndarray) -> np.ndarray:
    """pyreft's ``intervention(base)`` on ``h [n, d]`` (cast to the intervention's dtype); float64 ``[n, d]``."""
    import torch

    with torch.no_grad():
        out = intervention(torch.from_numpy(np.asarray(h)).to(torch.float32))
    return out.double().numpy()


def tiny_llama(seed: int = 0, d: int = 32, n_layers: int = 4):
    """A random-weight fp32 ``LlamaForCausalLM`` (d=32, 4 layers, vocab 128) in eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=2 * d, vocab_size=128)
    return transformers.LlamaForCausalLM(cfg).eval()


def save_reft_adapter(folder: Path, kind: str, layers=(0, 2), rank: int = 4, d: int = 32,
                      form: str = "save", add_bias: bool = False, seed: int = 0):
    """Wrap a tiny Llama with pyreft and save an adapter of ``kind`` on ``layers``.

    ``form="save"``: ``ReftModel.save(folder)`` (config.json + ``intkey_*.bin``).
    ``form="trainer"``: what ``ReftTrainer.save_model(folder)`` writes, i.e.
    ``folder/intervenable_model/intkey_*.bin`` (+ ``pytorch_model.bin``), no config.
    Returns ``(reft_model, {layer: intervention})`` (live pyreft objects, eval mode).
    """
    pyreft = import_pyreft()
    model = tiny_llama(seed, d)
    reps = []
    for i, layer in enumerate(layers):
        iv = make_intervention(kind, d, rank, add_bias=add_bias, seed=seed + 10 * (i + 1))
        reps.append({"layer": layer, "component": "block_output", "low_rank_dimension": rank, "intervention": iv})
    reft_model = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=reps), set_device=False)
    folder = Path(folder)
    if form == "save":
        reft_model.save(save_directory=str(folder))
    elif form == "trainer":
        reft_model.save_intervention(save_directory=str(folder / "intervenable_model"), include_model=True)
    else:
        raise ValueError(f"unknown form {form!r}")
    by_layer = {}
    for key, iv in reft_model.interventions.items():
        by_layer[int(key.split("_")[1])] = iv.eval()
    assert sorted(by_layer) == sorted(layers), by_layer.keys()
    return reft_model, by_layer
