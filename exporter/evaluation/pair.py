"""One command per pair: profile both models, export the pack, evaluate every configuration, report.

``run_pair_eval(donor, recipient, behavior, adapter_dir, ...)`` writes
``<out>/<pair>-<behavior>.json``, ``.md`` and ``.png`` (behavior rate per
configuration, strength sweep, per-layer translator fit).
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from commandv.exporter.adapters.folder import load_adapter
from commandv.exporter.adapters.self_pack import model_adapter_pack
from commandv.exporter.evaluation.evaluate import PairReport, is_refusal, run_config, utility_questions
from commandv.exporter.training.behaviors import get_behavior
from commandv.exporter.transfer.export import (
    TOKEN_ROW_METHODS,
    anchor_problem,
    export_pack,
    fit_profiles,
    method_problem,
)
from commandv.exporter.transfer.gated import Contrast
from commandv.profiles.profiler import profile_model
from commandv.profiles.prompts import PromptSet, combine_prompt_sets, load_prompt_set
from commandv.runtime.atomic import AtomicTargetError, atomic_path, write_text_atomic
from commandv.runtime.errors import CommandVError
from commandv.runtime.pack.model import BehaviorPack
from commandv.runtime.progress import progress_bar
from commandv.runtime.safe_io import check_output_target

SHORT = {"qwen2.5-coder-1.5b-instruct": "qwen1.5b", "qwen2.5-coder-0.5b-instruct": "qwen0.5b",
         "smollm2-135m-instruct": "smollm2", "gemma-3-270m": "gemma270m"}


def pair_key(donor: str, recipient: str) -> str:
    short = lambda s: SHORT.get(s, Path(s).stem.lower())  # noqa: E731
    return f"{short(donor)}-to-{short(recipient)}"


@dataclass
class PairEvalSettings:
    strengths: Sequence[float] = (0.5, 1.0, 1.5, 2.0)
    n_expected: int | None = None
    n_unexpected: int | None = None
    max_tokens: int = 32
    profile_prompts: int = 256
    profile_train_prompts: int = 0
    layer_rule: str = "nearest"
    rcond: float | None = None
    include_donor: bool = True
    method: str = "auto"
    token_prompts: int = 256
    anchor_texts: int = 0

    def validate(self) -> None:
        """Refuse counts that would silently shrink or empty the report (slices with 0 or -1)."""
        import math

        if not self.strengths or not all(math.isfinite(float(x)) for x in self.strengths):
            raise EvalSettingsError(f"strengths must be finite numbers, got {list(self.strengths)}")
        for name in ("n_expected", "n_unexpected"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise EvalSettingsError(f"{name} (--n) must be >= 1, got {v}")
        if method_problem(self.method):
            raise EvalSettingsError(method_problem(self.method))
        if self.token_prompts < 0:
            raise EvalSettingsError(f"token_prompts must be >= 0, got {self.token_prompts}")
        if self.anchor_texts < 0:
            raise EvalSettingsError(f"anchor_texts must be >= 0, got {self.anchor_texts}")
        if self.anchor_texts and anchor_problem(self.method):
            raise EvalSettingsError(anchor_problem(self.method))
        if self.method == "gated" and self.profile_train_prompts < 2:
            raise EvalSettingsError("method gated needs the behavior's training prompts in the profile "
                                    "(--profile-train-prompts, e.g. 256)")
        if self.max_tokens < 1 or self.profile_prompts < 1 or self.profile_train_prompts < 0:
            raise EvalSettingsError(f"max_tokens and profile_prompts must be >= 1 and profile_train_prompts >= 0, "
                                    f"got {self.max_tokens}, {self.profile_prompts}, {self.profile_train_prompts}")


class EvalSettingsError(CommandVError, ValueError):
    """Evaluation settings that cannot give a meaningful report."""


def profiling_set(behavior: str, n_general: int, n_train: int = 0, seed: int = 0) -> PromptSet:
    """The prompts both models are profiled on: ``general[:n_general]``, then ``n_train`` of the behavior's
    training prompts (the pool the adapter's examples were drawn from, equal numbers per label, a
    ``random.Random(seed)`` pick). A prompt the behavior is reported on (:func:`report_prompts`) is
    never profiled: it is removed from the general part too.

    ``n_train=0`` is the paper's task-agnostic profile. With ``n_train > 0`` the translators also
    see the region of activation space the adapter reads (e.g. harmful requests), which the
    general set does not cover.
    """
    gen = load_prompt_set("general", limit=n_general)
    reported = {p.prompt for p in report_prompts(behavior)}
    if reported & set(gen.prompts):  # e.g. pirate/french report on general[940:1000]: keep those out
        keep = [i for i, p in enumerate(gen.prompts) if p not in reported]
        gen = combine_prompt_sets(f"{gen.name}[:{n_general}]-{behavior}-eval",
                                  [([gen.prompts[i] for i in keep], [gen.ids[i] for i in keep], gen.source)])
    if n_train <= 0:
        return gen
    prompts, sources = training_prompts(behavior, n_train, seed)
    return combine_prompt_sets(f"general[:{n_general}]+{behavior}-train[{len(prompts)}]",
                               [(gen.prompts, gen.ids, gen.source), (prompts, sources, f"{behavior} training pool")])


def training_prompts(behavior: str, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(prompts, sources)``: up to ``n`` of the behavior's training prompts (the pool the adapter's examples
    were drawn from), equal numbers per label, a ``random.Random(seed)`` pick in pool order; never a prompt the
    behavior is reported on (:func:`report_prompts`)."""
    reported = {p.prompt for p in report_prompts(behavior)}
    specs = get_behavior(behavior).train_specs()
    groups: dict[str, list[int]] = {}
    for i, sp in enumerate(specs):
        if sp.prompt not in reported:  # e.g. refusal trains on all of AdvBench; its held-out split is reported
            groups.setdefault(sp.label, []).append(i)
    rng = random.Random(seed)
    per = max(1, n // len(groups))
    pick = sorted(i for name in sorted(groups) for i in rng.sample(groups[name], min(per, len(groups[name]))))
    return [specs[i].prompt for i in pick], [specs[i].source or f"train-{i}" for i in pick]


def fit_prompt_texts(pset: PromptSet, behavior: str | None = None, token_prompts: int = 0,
                     anchor_texts: int = 0) -> set[str]:
    """Every prompt whose states entered a pack's translator fit: the profile set ``pset``, the general set's
    first ``token_prompts`` (the token rows of pinv-tokens and gated; 0 without them) and the behavior's
    ``anchor_texts`` training prompts (:func:`donor_anchor_texts`). A check meant to be held out from the fit
    (the response check) skips them."""
    out = set(pset.prompts)
    if token_prompts > 0:
        out |= set(load_prompt_set("general", limit=token_prompts).prompts)
    if anchor_texts > 0 and behavior is not None:
        out |= set(training_prompts(behavior, anchor_texts)[0])
    return out


def donor_anchor_texts(behavior: str, donor: str, adapter, n: int, progress: bool = True) -> list[str]:
    """The donor's answers with ``adapter`` (:func:`~commandv.exporter.transfer.anchor.behavior_texts`) to ``n`` of
    the behavior's training prompts (:func:`training_prompts`): the anchor texts of ``--anchor-texts n``."""
    from commandv.exporter.transfer.anchor import behavior_texts

    return behavior_texts(donor, adapter, training_prompts(behavior, n)[0], progress=progress)


def is_conditional(behavior: str) -> bool:
    """Whether the behavior is wanted on some prompts only (refusal: harmful ones), not on every prompt (styles)."""
    return any(not p.expect for p in report_prompts(behavior))


def contrast_rows(behavior: str, pset: PromptSet, n_general: int) -> Contrast:
    """The :class:`~commandv.exporter.transfer.gated.Contrast` of a :func:`profiling_set` ``pset`` made with
    ``n_general`` general prompts: ``baseline`` = its general part, ``expected`` = its training prompts of the
    label the behavior is reported on where expected (refusal: ``harmful``). Raises
    :class:`~commandv.exporter.transfer.export.ExportError` when either group is short of 2 prompts."""
    from commandv.exporter.transfer.export import ExportError

    n_gen = len(profiling_set(behavior, n_general, 0))
    want = next(p.label for p in report_prompts(behavior) if p.expect)
    label = {sp.prompt: sp.label for sp in get_behavior(behavior).train_specs()}
    expected = np.asarray([i for i in range(n_gen, len(pset)) if label.get(pset.prompts[i]) == want], np.int64)
    contrast = Contrast(expected=expected, baseline=np.arange(n_gen), last_token=len(pset))
    problem = contrast.validate(len(pset))
    if problem:
        raise ExportError(f"{behavior}: {problem}")
    return contrast


MIN_REPORT_PROMPTS = 100
"""Issue 20: at least this many prompts per reported group (a Wilson interval of ±10 points at most)."""

STYLE_EXTRA_SLICE = (-360, -260)
"""general[840:940]: added to the style behaviors' 60 held-out prompts (general[940:1000]) so that they are
reported on 160. Clear of profiling (general[:256] by default; :func:`profiling_set` drops reported prompts
at any size), of style training (general[1000:]) and of refusal-broad's general slices ([256:808])."""


def report_prompts(behavior: str):
    """Prompts for the reported numbers (never used in training or tuning).

    refusal (and refusal-like behaviors): HarmBench-standard *test* (expected, label ``harmful``, 159), the
    AdvBench held-out split (expected, label ``advbench``, 104: rows ``i % 5 == 0``, reported on their own)
    and the second half of harmless_probes (over-refusal, ~105); style behaviors (pirate, french): their own
    held-out prompts plus general[840:940] (:data:`STYLE_EXTRA_SLICE`) when they have fewer than
    :data:`MIN_REPORT_PROMPTS`; other behaviors: their own held-out prompts.
    """
    from commandv.exporter.training.behaviors import EvalPrompt, _general_tail, _read_jsonl, advbench_heldout

    if not is_refusal(behavior):
        beh = get_behavior(behavior)
        out = list(beh.eval_prompts())
        if out and all(p.label == "style" and p.expect for p in out) and len(out) < MIN_REPORT_PROMPTS:
            seen = {p.prompt for p in out} | {sp.prompt for sp in beh.train_specs()}
            for prompt, source in _general_tail(*STYLE_EXTRA_SLICE):
                if prompt not in seen:
                    seen.add(prompt)
                    out.append(EvalPrompt(prompt, "style", True, source))
        return out
    probes = _read_jsonl("harmless_probes.jsonl")
    out = [EvalPrompt(r["prompt"], "harmful", True, f"harmbench_test:{r.get('id', i)}")
           for i, r in enumerate(_read_jsonl("harmbench_standard_test.jsonl"))]
    out += [EvalPrompt(p.prompt, "advbench", True, p.source) for p in advbench_heldout()]
    out += [EvalPrompt(r["prompt"], "harmless", False, f"harmless_probes:{r.get('id', i)}")
            for i, r in enumerate(probes[len(probes) // 2:])]
    return out


def trained_behavior(adapter_dir: str | Path, default: str) -> str:
    """The behavior the adapter was trained for (``training_metadata.json``'s ``behavior``, written by
    ``cmdv train-demo``; e.g. ``refusal-broad`` for a pack judged as ``refusal``), else ``default``."""
    from commandv.runtime.safe_io import read_regular

    path = Path(adapter_dir) / "training_metadata.json"
    try:
        name = json.loads(read_regular(path, 1 << 20, "training metadata").decode("utf-8")).get("behavior")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return default
    try:
        get_behavior(name)
    except (ValueError, TypeError):
        return default
    return name


def report_notes(behavior: str, prompts) -> list[str]:
    """Caveats about the reported prompts: reported prompts that are in the behavior's training pool
    (refusal trains on all of AdvBench, so its AdvBench split is not held out for it)."""
    train = {sp.prompt for sp in get_behavior(behavior).train_specs()}
    notes = []
    by_label: dict[str, list] = {}
    for p in prompts:
        by_label.setdefault(p.label, []).append(p)
    for label, ps in by_label.items():
        k = sum(p.prompt in train for p in ps)
        if k:
            notes.append(f"{k} of the {len(ps)} {label!r} prompts are in the {behavior} training pool (the "
                         "adapter may have been trained on some of them): not held out for this behavior")
    return notes


def _select(prompts, n_exp, n_unexp):
    """The first ``n_exp`` prompts of each expected label (main set first), then the first ``n_unexp``
    not expected (None: all)."""
    labels = list(dict.fromkeys(p.label for p in prompts if p.expect))
    exp = [p for lab in labels for p in [q for q in prompts if q.expect and q.label == lab][: n_exp]]
    unexp = [p for p in prompts if not p.expect][: n_unexp]
    return exp + unexp


def run_pair_eval(donor: str, recipient: str, behavior: str, adapter_dir: str | Path, out_dir: str | Path,
                  direct_dir: str | Path | None = None, settings: PairEvalSettings | None = None,
                  progress: bool = True) -> PairReport:
    """Evaluate one transfer; see module docstring."""
    from commandv.runtime.engines.llama.engine import Recipient

    s = settings or PairEvalSettings()
    s.validate()
    out_stem = Path(out_dir) / f"{pair_key(donor, recipient)}-{behavior}"  # every output checked before any work
    check_output_target(out_dir, "report", AtomicTargetError, folder=True)
    for ext in (".pack.gguf", ".json", ".md", ".png"):
        check_output_target(f"{out_stem}{ext}", "report", AtomicTargetError)
    beh = get_behavior(behavior)
    adapter = load_adapter(adapter_dir)
    pset = profiling_set(behavior, s.profile_prompts, s.profile_train_prompts)
    dprof, _, _ = profile_model(donor, pset, "gguf", progress=progress)
    rprof, _, _ = profile_model(recipient, pset, "gguf", progress=progress)
    key = pair_key(donor, recipient)
    texts = donor_anchor_texts(behavior, donor, adapter, s.anchor_texts, progress) if s.anchor_texts else []
    method, _, dprof, rprof = fit_profiles(s.method, donor, recipient, dprof, rprof, s.token_prompts,
                                           contrast=is_conditional(behavior) and s.profile_train_prompts > 0,
                                           anchor_texts=texts, progress=progress)
    contrast = contrast_rows(behavior, pset, s.profile_prompts) if method == "gated" else None
    res = export_pack(adapter, dprof, rprof, layer_rule=s.layer_rule, rcond=s.rcond, method=method,
                      contrast=contrast, name=f"{behavior}-{key}",
                      donor_name=dprof.meta.model_name)
    out_dir = Path(out_dir)
    res.pack.save(out_dir / f"{key}-{behavior}.pack.gguf")
    prompts = _select(report_prompts(behavior), s.n_expected, s.n_unexpected)
    util = utility_questions()
    per_config = len(prompts) + len(util)
    configs = []
    plan_r = [("recipient", None, 1.0)] + [(f"recipient+transfer@{x:g}", res.pack, x) for x in s.strengths]
    if direct_dir:
        plan_r.append(("recipient+direct", model_adapter_pack(recipient, load_adapter(direct_dir), "direct"), 1.0))
    plan_d = []
    if s.include_donor:
        plan_d = [("donor", None, 1.0), ("donor+adapter", model_adapter_pack(donor, adapter, "self"), 1.0)]
    total = per_config * (len(plan_r) + len(plan_d))
    with progress_bar(f"evaluating {key} {behavior}", total, enabled=progress, unit="generations") as adv:
        for model, plan in ((recipient, plan_r), (donor, plan_d)):
            if not plan:
                continue
            eng = Recipient(model, n_ctx=2048)
            try:
                for label, pack, strength in plan:
                    configs.append(run_config(eng, label, beh, prompts, util, pack, strength, s.max_tokens, adv))
            finally:
                eng.close()
    report = PairReport(pair=key, behavior=behavior, donor=donor, recipient=recipient, max_tokens=s.max_tokens,
                        configs=configs, diagnostics=res.diagnostics,
                        settings={"profile set": f"{pset.name} ({len(pset)} prompts)", "layer rule": s.layer_rule,
                                  "rcond": s.rcond if s.rcond is not None else "plain pinv",
                                  "method": method, "adapter": adapter_label(adapter_dir),
                                  **({"token prompts": s.token_prompts} if method in TOKEN_ROW_METHODS else {}),
                                  **({"anchor texts": f"{len(texts)} donor+adapter answers to {s.anchor_texts} "
                                      f"{behavior} training prompts"} if s.anchor_texts else {})},
                        notes=report_notes(trained_behavior(adapter_dir, behavior), prompts))
    recommend_strength(res.pack, report).save(out_dir / f"{key}-{behavior}.pack.gguf")
    stem = f"{key}-{behavior}"  # not Path.with_suffix: pair keys contain dots ("qwen0.5b")
    write_text_atomic(out_dir / f"{stem}.json", json.dumps(report.to_json(), indent=1))
    write_text_atomic(out_dir / f"{stem}.md", report.markdown())
    plot_report(report, out_dir / f"{stem}.png")
    return report


def adapter_label(adapter_dir: str | Path) -> str:
    """The adapter folder as the report names it: relative to the checkout when inside it (``adapters/…``),
    else its folder name (never the evaluating machine's absolute path)."""
    p = Path(adapter_dir).resolve()
    repo = Path(__file__).resolve().parents[2]
    return str(p.relative_to(repo)) if p.is_relative_to(repo) else p.name


def recommend_strength(pack: BehaviorPack, report: PairReport) -> BehaviorPack:
    """``pack`` carrying the strength its evaluation recommends: every entry's strength set to that of
    ``report.best_transfer()`` (the largest gain within the over-behavior and utility limits), recorded in
    ``meta["recommended_strength"]`` with the rates behind it (``meta["evaluation"]``). Without a
    recommendation (no transfer within the limits) the pack keeps strength 1 and says so."""
    best = report.best_transfer()
    off = report.by_label("recipient")
    meta = dict(pack.meta)
    if best is None or best.expected_rate <= off.expected_rate:
        meta["evaluation"] = f"{report.behavior}: no strength raised the behavior within the limits"
        return dataclasses.replace(pack, meta=meta)
    meta["recommended_strength"] = float(best.strength)
    meta["evaluation"] = (f"{report.behavior} on {best.n_expected} held-out prompts: {100 * off.expected_rate:.0f} % "
                          f"off-shelf, {100 * best.expected_rate:.0f} % at strength {best.strength:g}; "
                          f"where not expected {100 * off.unexpected_rate:.0f} → {100 * best.unexpected_rate:.0f} %; "
                          f"utility {100 * off.utility:.0f} → {100 * best.utility:.0f} %")
    entries = [dataclasses.replace(e, strength=float(best.strength)) for e in pack.entries]
    return dataclasses.replace(pack, entries=entries, meta=meta)


def plot_report(report: PairReport, path: Path) -> Path:
    """Three panels: behavior rate per configuration, strength sweep, per-layer held-out R²."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = [c.label for c in report.configs]
    ax[0].barh(labels, [100 * c.expected_rate for c in report.configs], color="tab:blue", label="expected")
    if any(c.n_unexpected for c in report.configs):
        ax[0].barh(labels, [100 * c.unexpected_rate for c in report.configs], color="tab:red", alpha=0.6,
                   label="not expected (over-trigger)")
    ax[0].set_xlabel(f"{report.behavior} rate (%)")
    ax[0].set_xlim(0, 100)
    ax[0].legend(loc="lower right", fontsize=8)
    ax[0].invert_yaxis()
    sweep = [c for c in report.configs if c.label.startswith("recipient+transfer@")]
    xs = [c.strength for c in sweep]
    ax[1].plot(xs, [100 * c.expected_rate for c in sweep], "o-", label=f"{report.behavior} (expected)")
    if any(c.n_unexpected for c in sweep):
        ax[1].plot(xs, [100 * c.unexpected_rate for c in sweep], "s--", label="where not expected")
    ax[1].plot(xs, [100 * c.utility for c in sweep], "^:", label="utility")
    ax[1].set_xlabel("pack strength")
    ax[1].set_ylabel("%")
    ax[1].set_ylim(-2, 102)
    ax[1].legend(fontsize=8)
    d = report.diagnostics
    ax[2].plot([x["recipient_layer"] for x in d], [x.get("r2_r2d", float("nan")) for x in d], "o-", label="R² R→D")
    ax[2].plot([x["recipient_layer"] for x in d], [x.get("r2_d2r", float("nan")) for x in d], "s-", label="R² D→R")
    ax[2].set_xlabel("recipient layer")
    ax[2].set_ylabel("held-out R²")
    ax[2].legend(fontsize=8)
    fig.suptitle(f"{report.pair}: {report.behavior}")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
