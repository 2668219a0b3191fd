"""Reference engine: behavior packs on a transformers model with forward hooks.

This is the ground truth the llama.cpp and ONNX engines are tested against,
and the workstation engine for HF models. Semantics (shared by every engine):

* the prompt is one user turn rendered with the model's chat template
  (generation header included), tokenized without extra special tokens;
* during the single prompt forward pass, after decoder block ``entry.layer``,
  the rows of the targeted prompt positions get ``h += s · delta(h)``, entries
  applied in order (packs in list order, entries in file order);
* generated tokens are never edited: they see the edit through the KV cache.

torch/transformers are imported lazily (this module lives in the device
package but is only used on workstations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from commandv.runtime.edit.activations import ACTIVATIONS, torch_activation
from commandv.runtime.edit.positions import Positions, parse_positions
from commandv.runtime.engines.request_checks import as_token_ids, normalize_strengths
from commandv.runtime.engines.sampling import Sampler
from commandv.runtime.engines.text_engine import mark_loaded, model_key, read_checked_packs
from commandv.runtime.errors import EngineError
from commandv.runtime.models.chat_template import render_chat, tokenize_chat, user_turn
from commandv.runtime.pack.model import BehaviorPack, PackEntry, PackError
from commandv.runtime.pack.policy import PackPolicy, ReferenceStates, reference_states

_TORCH_ACTS = {name: (lambda t, _n=name: torch_activation(_n)(t)) for name in ACTIVATIONS}
"""Canonical activation name → torch function (derived from :mod:`commandv.runtime.edit.activations`; imports torch when called)."""


def decoder_layers(model):
    """The list of decoder blocks of a transformers causal LM (llama/qwen2/gemma3/… layouts)."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


@dataclass
class Edit:
    """One edit bound to a layer: ``fn(h [n, d]) -> delta [n, d]`` (torch), strength, positions."""

    layer: int
    fn: Callable
    strength: float
    positions: Positions


def entry_edit(entry: PackEntry, strength: float = 1.0) -> Edit:
    """A torch :class:`Edit` computing exactly ``entry.delta`` (float32)."""
    import torch

    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    A, b, C, P, Q, e = (t(entry.A), t(entry.b), t(entry.C), t(entry.P), t(entry.Q), t(entry.e))
    act = torch_activation(entry.act)

    def fn(h):
        out = act(h @ A + b) @ C
        if P is not None:
            out = out - (h @ P) @ Q
        if e is not None:
            out = out + e
        return out

    return Edit(entry.layer, fn, float(entry.strength) * strength, parse_positions(entry.positions))


def pack_edits(packs: Sequence[BehaviorPack], strengths: Sequence[float] | None = None) -> list[Edit]:
    """Edits of several packs, composed in list order."""
    return _edits(packs, normalize_strengths(len(packs), strengths))


def _edits(packs: Sequence[BehaviorPack], strengths: Sequence[float]) -> list[Edit]:
    """:func:`pack_edits` with strengths already normalized (one finite float per pack)."""
    return [entry_edit(e, s) for p, s in zip(packs, strengths) for e in p.entries]


class TorchRecipient:
    """A transformers causal LM that accepts behavior packs.

    ``TorchRecipient(model, tokenizer)``; from a zoo key / file / folder use
    ``commandv.profiles.hf_models.torch_recipient("smollm2-135m-instruct")``.

    Pack-level calls (:meth:`load_packs`, :meth:`prompt_pass`, :meth:`generate`, :meth:`close`) follow
    :class:`~commandv.runtime.engines.protocol.Engine`, like the llama.cpp and ONNX Runtime engines; the edit-level
    calls :meth:`prompt_forward` and :meth:`generate_ids` take :class:`Edit` lists (:func:`pack_edits`,
    :func:`unfolded_edits`). ``max_new_tokens=`` is accepted as the old name of ``max_tokens=``.
    """

    def __init__(self, model, tokenizer, fingerprint: str | None = None, arch: str | None = None,
                 policy: PackPolicy | None = None):
        """``policy``: signature policy / edit-size limit for packs given as files (default: from the env)."""
        self.model = model.eval()
        self.policy = policy if policy is not None else PackPolicy.from_env()
        self._reference: ReferenceStates | None = None
        self.tokenizer = tokenizer
        self.layers = decoder_layers(model)
        self.n_layer = len(self.layers)
        self.d_model = int(model.config.hidden_size)
        self.fingerprint = fingerprint
        self.arch = arch or str(model.config.model_type)

    # ----------------------------------------------------------------- prompts
    def render(self, prompt: str, template: bool = True) -> str:
        tok = self.tokenizer
        if not template:
            return prompt
        return render_chat(getattr(tok, "chat_template", None), user_turn(prompt), True,
                           tok.bos_token or "", tok.eos_token or "")

    def encode(self, prompt: str, template: bool = True) -> list[int]:
        """Token ids of one user prompt (templated: special-token text typed in the prompt stays plain text,
        :func:`commandv.runtime.models.chat_template.tokenize_chat`; raw: the tokenizer's own rules)."""
        tok = self.tokenizer
        if template:
            ids = tokenize_chat(lambda msgs: self.render(msgs[0]["content"]), user_turn(prompt), self._tokenize)
        else:
            ids = tok(prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise ValueError("prompt is empty")
        return list(ids)

    def _tokenize(self, text: str, parse_special: bool) -> list[int]:
        """``parse_special=False``: special tokens' text is split like any text (``split_special_tokens``)."""
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=not parse_special)["input_ids"])

    # ----------------------------------------------------------------- forward
    def _hooks(self, edits: list[Edit], n_prompt: int, state: dict, record: dict | None):
        import torch

        by_layer: dict[int, list[Edit]] = {}
        for e in edits:
            if not (0 <= e.layer < self.n_layer):
                raise PackError(f"edit at layer {e.layer} but the model has {self.n_layer} layers")
            by_layer.setdefault(e.layer, []).append(e)
        idx_cache = {id(e): torch.tensor(e.positions.indices(n_prompt)) for e in edits}

        def make(i):
            def fn(_mod, _inp, output):
                h = output[0] if isinstance(output, (tuple, list)) else output
                if state["prompt"]:
                    for e in by_layer.get(i, ()):
                        idx = idx_cache[id(e)]
                        rows = h[0, idx, :]
                        h[0, idx, :] = rows + e.strength * e.fn(rows.float()).to(h.dtype)
                if record is not None:
                    record.setdefault(i, []).append(h[0].detach().float().clone())
                return output

            return fn

        return [layer.register_forward_hook(make(i)) for i, layer in enumerate(self.layers)]

    def check_pack(self, pack: BehaviorPack, force: bool = False) -> None:
        pack.check_model(self.fingerprint, self.arch, self.n_layer, self.d_model, force=force)

    def load_packs(self, packs: Sequence, strengths: Sequence[float] | None = None,
                   force: bool | None = False) -> list[BehaviorPack]:
        """Packs (objects or files, :meth:`PackPolicy.read_packs`), checked against this model and
        against the policy's edit-size limit (at ``strengths``). The returned pack objects are marked as checked:
        requests given them (unchanged) skip validation, as in the other engines."""
        out, _ = self._checked(packs, strengths, force, reuse=False)
        for p in out:
            mark_loaded(p, model_key(self) + (bool(force),))
        return out

    def _checked(self, packs, strengths, force, reuse: bool = True) -> tuple[list[BehaviorPack], list[float]]:
        """Packs checked once (:func:`~commandv.runtime.engines.text_engine.read_checked_packs`) → ``(packs,
        strengths normalized once)``, for a request's edits; the edit-size check runs at these strengths."""
        out = read_checked_packs(self, packs, bool(force), reuse)
        s = normalize_strengths(len(out), strengths)
        self.policy.check_size(out, s, self.reference_states)
        return out, s

    def reference_states(self) -> ReferenceStates:
        """Unedited block outputs on every token of the reference prompts (chat-rendered, raw text for a model
        without a chat template; computed once, kept with the edit-size measurements)."""
        if self._reference is None:
            chat = getattr(self.tokenizer, "chat_template", None) is not None
            self._reference = reference_states(
                lambda p: self.prompt_forward(self.encode(p, template=chat), [], record_hidden=True)[1], self.n_layer)
        return self._reference

    def prompt_forward(self, ids: list[int], edits: list[Edit], record_hidden: bool = False):
        """One prompt pass with ``edits``; returns ``(logits [T, V] np, hidden {layer: [T, d]} np)``."""
        import torch

        record: dict | None = {} if record_hidden else None
        handles = self._hooks(edits, len(ids), {"prompt": True}, record)
        try:
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([ids]), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        hidden = {i: v[0].numpy() for i, v in (record or {}).items()}
        return out.logits[0].float().numpy(), hidden

    def prompt_pass(self, ids: Sequence[int], packs: Sequence = (), strengths: Sequence[float] | None = None,
                    record_layers: bool = False, all_logits: bool = False, force: bool | None = False):
        """One prompt pass with ``packs`` applied → ``(logits, hidden)``, as the other engines: ``logits`` ``[V]``
        of the last prompt token, or ``[T, V]`` with ``all_logits``; ``hidden`` ``{layer: [T, d]}`` float32 block
        outputs after the edits (``record_layers``), else ``{}``."""
        ids = as_token_ids(ids)
        if not ids:
            raise EngineError("prompt is empty")
        loaded, s = self._checked(packs, strengths, force)
        logits, hidden = self.prompt_forward(ids, _edits(loaded, s), record_hidden=record_layers)
        return (logits if all_logits else logits[-1]), hidden

    def generate_ids(self, ids: list[int], edits: list[Edit], max_tokens: int = 32,
                     stop_ids: Sequence[int] = (), *, max_new_tokens: int | None = None) -> list[int]:
        """Greedy decoding with the KV cache; edits only during the prompt pass. NaN logits (an absurd edit
        strength) raise :class:`~commandv.runtime.engines.sampling.SamplingError`. ``max_new_tokens``: old name of ``max_tokens``."""
        import torch

        if max_new_tokens is not None:
            max_tokens = max_new_tokens

        greedy = Sampler(0.0)
        state = {"prompt": True}
        handles = self._hooks(edits, len(ids), state, None)
        out_ids: list[int] = []
        stop = set(stop_ids) | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())
        try:
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
                state["prompt"] = False
                past = out.past_key_values
                for _ in range(max_tokens):
                    nxt = greedy(out.logits[0, -1].float().numpy())
                    if nxt in stop:
                        break
                    out_ids.append(nxt)
                    out = self.model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                    past = out.past_key_values
        finally:
            for h in handles:
                h.remove()
        return out_ids

    def generate(self, prompt: str, packs: Sequence[BehaviorPack] = (), strengths: Sequence[float] | None = None,
                 max_tokens: int = 64, force: bool | None = False, *, max_new_tokens: int | None = None) -> str:
        """Greedy continuation of one user prompt with ``packs`` applied (text, at most ``max_tokens`` tokens;
        ``max_new_tokens``: old name of ``max_tokens``)."""
        if max_new_tokens is not None:
            max_tokens = max_new_tokens
        packs, s = self._checked(packs, strengths, force)
        ids = self.encode(prompt)
        new = self.generate_ids(ids, _edits(packs, s), max_tokens)
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def close(self) -> None:
        """Nothing to free: the model and tokenizer belong to the caller (API parity with the other engines)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def unfolded_edits(donor_edits, layer_pairs, C_rd: dict, C_dr: dict, positions: str = "l1",
                   strength: float = 1.0) -> list[Edit]:
    """Reference edits from explicit translators: ``delta_D(h @ C_R→D[l]) @ C_D→R[l]`` (checking only).

    ``layer_pairs[i] = (donor_layer, recipient_layer)`` for ``donor_edits[i]``; ``C_rd``/``C_dr`` map
    donor layer → ``[d_R, d_D]`` / ``[d_D, d_R]`` numpy matrices.
    """
    import torch

    out = []
    for edit, (l_d, l_r) in zip(donor_edits, layer_pairs):
        crd = torch.from_numpy(np.asarray(C_rd[l_d], np.float64))
        cdr = torch.from_numpy(np.asarray(C_dr[l_d], np.float64))

        def fn(h, edit=edit, crd=crd, cdr=cdr):
            x = (h.double() @ crd).numpy()
            return (torch.from_numpy(edit.delta(x)) @ cdr).float()

        out.append(Edit(l_r, fn, strength, parse_positions(positions)))
    return out
