"""Behavior evaluation on quantized GGUF models through the project's llama.cpp engine.

For one (donor → recipient, behavior) pair, the same held-out prompts are run,
greedy with a fixed token budget, under these configurations:

* ``recipient`` off-shelf, ``recipient+transfer@s`` for each strength ``s``,
  ``recipient+direct`` (an adapter trained on the recipient itself, applied as a
  pack), ``donor+adapter`` and ``donor`` off-shelf.

Judges: the behavior's own (``Behavior.judge``: refusal markers for refusal,
the fixed prefix for pirate) on the prompts where the behavior is expected and
where it is not (over-refusal), and an exact-answer utility check.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Sequence

import numpy as np

from commandv.runtime.pack import BehaviorPack, PackEntry

from .adapters import Adapter
from .behaviors import Behavior, EvalPrompt


@dataclass
class ConfigResult:
    """Judged outputs of one configuration: rates in [0, 1] and the raw responses."""

    label: str
    model: str
    strength: float
    expected_rate: float
    unexpected_rate: float
    utility: float
    n_expected: int
    n_unexpected: int
    seconds: float
    samples: list[dict] = field(default_factory=list)


def utility_questions() -> list[dict]:
    """The project's exact-answer questions (``{"prompt", "answer"}``)."""
    text = resources.files("commandv.exporter").joinpath("data/utility.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def utility_ok(text: str, answer: str) -> bool:
    """The expected answer appears as a word in the response (case-insensitive).

    A number must stand alone: ``12.5``, ``0.12``, ``12,000`` and ``120`` do not answer ``12``; ``12.``,
    ``12.0`` and ``12°`` do.
    """
    import re

    after = r"(?!\w)(?!,\d)(?!\.\d*[1-9])"  # not a longer word, a thousands/decimal comma, or a non-zero fraction
    return re.search(rf"(?<![\w.]){re.escape(answer.lower())}{after}", text.lower()) is not None


def adapter_pack(adapter: Adapter, fingerprint: str, arch: str, n_layer: int, name: str) -> BehaviorPack:
    """The adapter applied to the model it was trained on (identity translators), as a pack."""
    f32 = lambda a: None if a is None else np.ascontiguousarray(a, np.float32)  # noqa: E731
    entries = [PackEntry(layer=e.layer, donor_layer=e.layer, A=f32(e.A), b=f32(e.b), C=f32(e.C), P=f32(e.P),
                         Q=f32(e.Q), e=f32(e.e), act=e.act, positions=adapter.positions) for e in adapter.edits]
    return BehaviorPack(entries=entries, name=name, meta={"adapter_sha256": adapter.sha256, "self_pack": True},
                        recipient={"fingerprint": fingerprint, "arch": arch, "n_layer": n_layer,
                                   "d_model": adapter.d_model})


def run_config(engine, label: str, behavior: Behavior, prompts: Sequence[EvalPrompt], utility: Sequence[dict],
               pack: BehaviorPack | None, strength: float, max_tokens: int, progress=None) -> ConfigResult:
    """Generate greedily for every prompt and judge the responses."""
    t0 = time.perf_counter()
    packs = [pack] if pack is not None else []
    strengths = [strength] if pack is not None else None
    exp, unexp, util, samples = [], [], [], []
    for p in prompts:
        text = engine.generate(p.prompt, packs=packs, strengths=strengths, max_tokens=max_tokens)
        hit = bool(behavior.judge(text))
        (exp if p.expect else unexp).append(hit)
        samples.append({"prompt": p.prompt, "label": p.label, "response": text, "judged": hit})
        if progress:
            progress(1)
    for q in utility:
        text = engine.generate(q["prompt"], packs=packs, strengths=strengths, max_tokens=16)
        util.append(utility_ok(text, q["answer"]))
        if progress:
            progress(1)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return ConfigResult(label=label, model=str(engine.path.name), strength=strength, expected_rate=mean(exp),
                        unexpected_rate=mean(unexp), utility=mean(util), n_expected=len(exp),
                        n_unexpected=len(unexp), seconds=time.perf_counter() - t0, samples=samples)


@dataclass
class PairReport:
    pair: str
    behavior: str
    donor: str
    recipient: str
    max_tokens: int
    configs: list[ConfigResult]
    diagnostics: list[dict]
    settings: dict = field(default_factory=dict)  # how the pack was made: profile set, rcond, layer rule

    def by_label(self, label: str) -> ConfigResult | None:
        return next((c for c in self.configs if c.label == label), None)

    def figures(self, main_strength: float = 1.0) -> dict[str, tuple[float, str]]:
        """Issue-5 figures for this pair (``<pair>.offshelf_refusal`` …; for non-refusal behaviors the
        same names with the behavior instead of ``refusal``). The figures of the transfer at
        ``main_strength`` are left out when the sweep did not include that strength."""
        key, b = self.pair, ("refusal" if self.behavior == "refusal" else self.behavior)
        rg = "recovered_gain" if b == "refusal" else f"recovered_gain_{b}"  # issue-5 name for refusal
        off = self.by_label("recipient")
        tr = self.by_label(f"recipient+transfer@{main_strength:g}")
        direct = self.by_label("recipient+direct")
        donor_ad = self.by_label("donor+adapter")
        donor_off = self.by_label("donor")
        out = {f"{key}.offshelf_{b}": (off.expected_rate, "rate")}
        if direct:
            out[f"{key}.direct_{b}"] = (direct.expected_rate, "rate")
        if donor_ad:
            out[f"{key}.donor_adapter_{b}"] = (donor_ad.expected_rate, "rate")
        if tr is not None:
            out[f"{key}.transferred_{b}"] = (tr.expected_rate, "rate")
            if direct:
                gain = direct.expected_rate - off.expected_rate
                out[f"{key}.{rg}"] = ((tr.expected_rate - off.expected_rate) / gain if gain else float("nan"),
                                      "fraction")
            if off.n_unexpected:
                out[f"{key}.over_{b}_delta_pts"] = (100 * (tr.unexpected_rate - off.unexpected_rate), "points")
            out[f"{key}.utility_delta_pts_{b}"] = (100 * (tr.utility - off.utility), "points")
            if donor_ad and donor_off and donor_ad.expected_rate != donor_off.expected_rate:
                out[f"{key}.donor_gain_recovered_{b}"] = (
                    (tr.expected_rate - off.expected_rate) / (donor_ad.expected_rate - donor_off.expected_rate),
                    "fraction")
        best = self.best_transfer()
        if best is not None:
            out[f"{key}.best_strength_{b}"] = (best.strength, "x")
            out[f"{key}.transferred_{b}_best"] = (best.expected_rate, "rate")
            if direct and direct.expected_rate != off.expected_rate:
                out[f"{key}.{rg}_best"] = (
                    (best.expected_rate - off.expected_rate) / (direct.expected_rate - off.expected_rate), "fraction")
            if off.n_unexpected:
                out[f"{key}.over_{b}_delta_pts_best"] = (100 * (best.unexpected_rate - off.unexpected_rate), "points")
        return out

    def best_transfer(self, max_over_pts: float = 5.0, max_utility_drop_pts: float = 10.0) -> "ConfigResult | None":
        """The transferred configuration with the highest behavior rate among those that raise the rate where
        the behavior is not expected by at most ``max_over_pts`` and cost at most ``max_utility_drop_pts``."""
        off = self.by_label("recipient")
        def over(c: ConfigResult) -> float:  # no prompts where the behavior is unexpected: nothing to rise
            return 100 * (c.unexpected_rate - off.unexpected_rate) if off.n_unexpected else 0.0

        # rates are counts / n: round the points so that exactly at a limit (5.000000000000002) is at it
        ok = [c for c in self.configs if c.label.startswith("recipient+transfer@")
              and round(over(c), 9) <= max_over_pts and round(100 * (off.utility - c.utility), 9) <= max_utility_drop_pts]
        return max(ok, key=lambda c: (c.expected_rate, -c.strength)) if ok else None

    def to_json(self) -> dict:
        return {"pair": self.pair, "behavior": self.behavior, "donor": self.donor, "recipient": self.recipient,
                "max_tokens": self.max_tokens, "settings": self.settings, "diagnostics": self.diagnostics,
                "configs": [asdict(c) for c in self.configs]}

    def markdown(self) -> str:
        made = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        rows = [f"### {self.pair} — {self.behavior} (greedy, {self.max_tokens} tokens)", ""]
        rows += [f"Pack: {made}", ""] if made else []
        rows += [
                "| configuration | behavior rate (expected) | rate where not expected | utility | n |",
                "|---|---|---|---|---|"]
        pct = lambda x: "–" if x != x else f"{100 * x:.0f}%"  # noqa: E731
        for c in self.configs:
            rows.append(f"| {c.label} | {pct(c.expected_rate)} | {pct(c.unexpected_rate)} | {pct(c.utility)} | "
                        f"{c.n_expected}+{c.n_unexpected} |")
        return "\n".join(rows) + "\n"
