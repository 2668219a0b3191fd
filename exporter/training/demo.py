"""End to end: train a donor adapter for a built-in behavior, check it on held-out prompts, save it.

:func:`run_train_demo` loads the donor (fp32, via :func:`commandv.profiles.hf_models.load_hf_model`),
builds the behavior's examples (the donor's own greedy answers are cached in
``<out>/donor_answers.jsonl``), trains with :func:`commandv.exporter.training.train.train_reft`,
judges greedy generations on held-out prompts with and without the adapter,
saves pyreft's files plus ``training_metadata.json`` and ``README.md``, and
checks that :func:`commandv.exporter.adapters.folder.load_adapter` reproduces the live
interventions.
"""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commandv.exporter.adapters.folder import load_adapter
from commandv.exporter.training.answers import ANSWERS_FILE
from commandv.exporter.training.behaviors import Behavior, EvalPrompt, get_behavior
from commandv.exporter.training.data import build_examples, select_specs
from commandv.exporter.training.donor_gen import cached_answers, greedy_generate, prompt_token_ids
from commandv.exporter.training.train import (
    TrainError,
    TrainSettings,
    TrainStats,
    live_deltas,
    save_adapter,
    train_reft,
)
from commandv.runtime.atomic import replace_problem


@dataclass
class DemoConfig:
    """What ``cmdv train-demo`` does. ``n_examples``/``max_response_tokens`` None = the behavior's defaults;
    ``n_eval`` held-out prompts per label group."""

    donor: str
    behavior: str
    out: Path | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    n_examples: int | None = None
    max_prompt_tokens: int = 64
    max_response_tokens: int | None = None
    gen_batch: int = 8
    n_eval: int = 10
    eval_new_tokens: int = 24

    def validate(self) -> None:
        self.settings.validate()
        for name in ("max_prompt_tokens", "gen_batch", "n_eval", "eval_new_tokens"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_examples", "max_response_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise TrainError(f"{name} must be >= 1, got {v}")


ADAPTER_FILES = ("config.json", "training_metadata.json", "README.md", ANSWERS_FILE)


def check_out_folder(out: Path) -> None:
    """``out`` is replaced as a whole by the saved adapter: refuse a file, the current folder or one of its
    parents, and a folder holding anything but an earlier adapter's files."""
    problem = replace_problem(out, lambda n: n in ADAPTER_FILES or (n.startswith("intkey_") and n.endswith(".bin")))
    if problem:
        raise TrainError(f"--out {out}: {problem}; the adapter replaces its --out folder: choose another")


@dataclass
class EvalCount:
    """Held-out judging for one label group: how many of ``n`` showed the behavior with/without the adapter."""

    label: str
    expect: bool
    n: int
    with_adapter: int
    without_adapter: int
    samples: list[dict] = field(default_factory=list)


@dataclass
class DemoResult:
    out: Path
    stats: TrainStats
    evals: list[EvalCount]
    roundtrip_max_abs_err: float
    metadata: dict


def default_out(donor_key: str, behavior: str) -> Path:
    """``adapters/<donor-key>/<behavior>`` under the current folder."""
    return Path("adapters") / donor_key / behavior


def pick_eval_prompts(tokenizer, prompts: list[EvalPrompt], n: int, max_prompt_tokens: int) -> list[EvalPrompt]:
    """The first ``n`` prompts of each label group whose rendered prompt fits ``max_prompt_tokens``."""
    ids = prompt_token_ids(tokenizer, [p.prompt for p in prompts])
    taken: Counter = Counter()
    out = []
    for p, t in zip(prompts, ids):
        if len(t) <= max_prompt_tokens and taken[p.label] < n:
            taken[p.label] += 1
            out.append(p)
    return out


def evaluate(model, tokenizer, reft_model, behavior: Behavior, prompts: list[EvalPrompt], max_new_tokens: int,
             batch: int = 8, progress: bool = True) -> list[EvalCount]:
    """Greedy generations with and without the adapter, judged by ``behavior.judge``; counts per label."""
    ids = prompt_token_ids(tokenizer, [p.prompt for p in prompts])
    off = greedy_generate(model, tokenizer, ids, max_new_tokens, batch, progress=progress, label="eval: off-shelf")
    on = greedy_generate(model, tokenizer, ids, max_new_tokens, batch, reft_model=reft_model, progress=progress,
                         label="eval: adapter")
    counts = []
    for label in dict.fromkeys(p.label for p in prompts):
        rows = [i for i, p in enumerate(prompts) if p.label == label]
        counts.append(EvalCount(
            label, prompts[rows[0]].expect, len(rows),
            sum(behavior.judge(on[i].text) for i in rows), sum(behavior.judge(off[i].text) for i in rows),
            [{"source": prompts[i].source, "adapter": on[i].text[:120], "off_shelf": off[i].text[:120]}
             for i in rows[:3]]))
    return counts


def roundtrip_error(folder: Path, reft_model, d: int, seed: int = 0) -> float:
    """Max |load_adapter(folder) delta − live pyreft delta| over every layer on random ``h [16, d]`` (scale 4)."""
    h = np.random.default_rng(seed).standard_normal((16, d)) * 4.0
    live = live_deltas(reft_model, h.astype(np.float32))
    ad = load_adapter(folder)
    if sorted(live) != ad.layers:
        return float("inf")
    return max(float(np.max(np.abs(e.delta(h.astype(np.float32).astype(np.float64)) - live[e.layer])))
               for e in ad.edits)


def drop_refused_harmless(chosen: list, answers: list, judge) -> tuple[list, list, list]:
    """Leave out "harmless" examples whose donor answer ``judge`` calls a refusal (their target would teach
    over-refusal). ``chosen``/``answers`` as in :func:`run_train_demo` (answer None for fixed responses).
    Returns ``(chosen, answers, dropped sources)`` with the order of the kept examples unchanged."""
    drop = {i for i, ((spec, _), ans) in enumerate(zip(chosen, answers))
            if spec.label == "harmless" and ans is not None and judge(ans.text)}
    keep = [i for i in range(len(chosen)) if i not in drop]
    return ([chosen[i] for i in keep], [answers[i] for i in keep],
            [chosen[i][0].source for i in sorted(drop)])


def _loadavg() -> float | None:
    """The 1-minute load average (other processes slow training on a shared machine), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "pyreft", "pyvene"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def run_train_demo(cfg: DemoConfig, command: str = "", progress: bool = True, loaded=None) -> DemoResult:
    """Train, evaluate and save (see module docstring). ``loaded``: an already loaded ``(model, tok, ref)``."""
    import torch

    from commandv.profiles.hf_models import load_hf_model
    from commandv.runtime.models.fingerprint import file_fingerprint

    behavior = get_behavior(cfg.behavior)
    d = behavior.defaults
    cfg.validate()
    if cfg.out:
        check_out_folder(Path(cfg.out))  # before minutes of training, not after
    model, tok, ref = loaded or load_hf_model(cfg.donor, progress=progress)
    donor_key = ref.zoo_key or Path(cfg.donor).stem
    model_id = file_fingerprint(ref.path) if ref.kind == "gguf" else str(ref.path)
    out = Path(cfg.out) if cfg.out else default_out(donor_key, behavior.name)
    check_out_folder(out)
    n_examples = d.get("n_examples", 96) if cfg.n_examples is None else cfg.n_examples
    max_resp = d.get("max_new_tokens", 24) if cfg.max_response_tokens is None else cfg.max_response_tokens

    t_data = time.perf_counter()
    chosen = select_specs(tok, behavior.train_specs(), n_examples, cfg.max_prompt_tokens, cfg.settings.seed,
                          balance=bool(d.get("balance")))
    need = [i for i, (s, _) in enumerate(chosen) if s.fixed is None]
    gens = cached_answers(model, tok, [chosen[i][0].teacher_prompt for i in need], out / ANSWERS_FILE, model_id,
                          max_resp, cfg.gen_batch, progress)
    answers = [None] * len(chosen)
    for i, g in zip(need, gens):
        answers[i] = g
    dropped = []
    if d.get("drop_refused_harmless"):  # a harmless prompt the donor itself refuses would teach over-refusal
        chosen, answers, dropped = drop_refused_harmless(chosen, answers, behavior.judge)
    examples = build_examples(tok, chosen, answers, max_resp + 8)
    data_seconds = time.perf_counter() - t_data

    load_before = _loadavg()
    reft_model, stats = train_reft(model, tok, examples, cfg.settings, progress)
    load_after = _loadavg()
    eval_prompts = pick_eval_prompts(tok, behavior.eval_prompts(), cfg.n_eval, cfg.max_prompt_tokens)
    t_eval = time.perf_counter()
    evals = evaluate(model, tok, reft_model, behavior, eval_prompts, cfg.eval_new_tokens, cfg.gen_batch, progress)
    eval_seconds = time.perf_counter() - t_eval

    s = cfg.settings
    meta = {
        "format": "pyreft ReftModel.save (config.json + intkey_*.bin)",
        "behavior": behavior.name, "description": behavior.description,
        "donor": cfg.donor, "donor_key": donor_key, "donor_model_id": model_id,
        "intervention_type": s.intervention, "add_bias": s.add_bias, "positions": "l1", "act_fn": "linear",
        "component": "block_output", "layers": stats.layers, "rank": s.rank, "lr": s.lr,
        "lr_schedule": "linear decay to 0, no warmup", "optimizer": "AdamW", "weight_decay": s.weight_decay,
        "max_grad_norm": s.max_grad_norm, "batch_size": s.batch_size, "steps": stats.steps,
        "epochs": round(stats.epochs_run, 3), "seed": s.seed, "dtype": "float32",
        "examples": stats.n_examples, "example_groups": dict(Counter(e.label for e in examples)),
        "dropped_harmless_refused_by_donor": len(dropped), "dropped_sources": dropped,
        "max_prompt_tokens": cfg.max_prompt_tokens, "max_response_tokens": max_resp,
        "prompt_rendering": "model's own chat template, one user turn, generation header, no extra specials",
        "seconds": round(stats.seconds, 1), "seconds_per_step": round(stats.seconds_per_step, 2),
        "data_seconds": round(data_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1min_before_after_training": [load_before, load_after],
        "loss": stats.loss_summary(), "final_loss": stats.losses[-1],
        "eval": [vars(e) for e in evals], "eval_max_new_tokens": cfg.eval_new_tokens,
        "versions": _versions(), "command": command,
    }
    save_adapter(reft_model, out, meta, render_readme(meta))
    err = roundtrip_error(out, reft_model, int(model.config.hidden_size), s.seed)
    return DemoResult(out, stats, evals, err, meta)


def render_readme(meta: dict) -> str:
    """The adapter folder's README: what it does, the exact command, settings and measured results."""
    lines = [
        f"# {meta['behavior']} adapter for {meta['donor_key']}", "",
        f"Behavior: {meta['description']}.", "",
        "Made with (from the repository root):", "", "```", meta["command"] or "(library call)", "```", "",
        f"{meta['intervention_type']} (add_bias={meta['add_bias']}), rank {meta['rank']}, "
        f"`{meta['component']}` of layers {meta['layers']}, position `{meta['positions']}` (last prompt token), "
        f"act `{meta['act_fn']}`; AdamW lr {meta['lr']} ({meta['lr_schedule']}), weight decay 0, "
        f"batch {meta['batch_size']}, {meta['steps']} steps ({meta['epochs']} epochs) on {meta['examples']} "
        f"examples {meta['example_groups']}, seed {meta['seed']}, fp32"
        + (f" ({meta['dropped_harmless_refused_by_donor']} picked harmless examples left out: the donor's own "
           "answer was judged a refusal)" if meta.get("dropped_harmless_refused_by_donor") else "") + ".", "",
        f"Training took {meta['seconds']} s ({meta['seconds_per_step']} s/step; torch threads "
        f"{meta['torch_threads']}, {meta.get('cpu_count')} CPUs, 1-min load average before/after "
        f"{meta.get('load_average_1min_before_after_training')}: other processes share the CPUs, so "
        f"expect faster steps on an idle machine); loss {meta['loss']['first']:.3f} → {meta['final_loss']:.3f}.", "",
        "Held-out prompts (greedy, "
        f"{meta['eval_max_new_tokens']} new tokens), behavior shown with / without the adapter:", "",
        "| group | expected | n | with adapter | off-shelf |", "|---|---|---|---|---|",
    ]
    for e in meta["eval"]:
        lines.append(f"| {e['label']} | {'yes' if e['expect'] else 'no'} | {e['n']} | {e['with_adapter']} | "
                     f"{e['without_adapter']} |")
    ext = meta.get("eval_extended")
    if ext:
        lines += ["", f"All held-out prompts of each group ({ext.get('how', '')}):", "",
                  "| group | expected | n | with adapter | off-shelf |", "|---|---|---|---|---|"]
        lines += [f"| {e['label']} | {'yes' if e['expect'] else 'no'} | {e['n']} | {e['with_adapter']} | "
                  f"{e['without_adapter']} |" for e in ext["groups"]]
        if ext.get("note"):
            lines += ["", ext["note"]]
    lines += ["", "Files: `config.json` + `intkey_*.bin` are pyreft's `ReftModel.save` output (read them with "
              "`commandv.exporter.adapters.folder.load_adapter`, or rebuild live pyreft modules with "
              "`commandv.exporter.training.train.load_reft_model`; pyreft's own `ReftModel.load` cannot reload NodiReFT). "
              f"`training_metadata.json` has every setting and the loss curve; `{ANSWERS_FILE}` caches the "
              "donor's own greedy answers used as targets (keyed by a hash, no prompt text).", ""]
    return "\n".join(lines)
