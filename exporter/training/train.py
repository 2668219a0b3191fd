"""Train a donor ReFT adapter with pyreft and save it in pyreft's on-disk format.

Settings follow the Command-V authors' code: NodiReFT (``add_bias=True``), rank 8,
``block_output`` of every 2nd layer, the last prompt token (``l1``), AdamW with
weight decay 0 (any decay > 0 silently stops LoReFT/DiReFT learning), linear LR
decay, gradient-norm clip 1.0 (transformers' Trainer default), fp32, fixed seeds.

pyreft 0.1.0 on transformers 5.x needs care: interventions are built with
``dtype=torch.float32`` and an explicit ``add_bias``; training is a plain loop
around pyreft's own forward (what ``ReftTrainer.compute_loss`` does) instead of
its Trainer subclass; and the saved folder is read back with
:func:`commandv.exporter.adapters.folder.load_adapter`, never ``ReftModel.load``.

Call :func:`train_reft` (a transformers model, its tokenizer, examples, :class:`TrainSettings`) →
``(reft_model, TrainStats)``, then :func:`save_adapter`; ``cmdv train-demo`` (:mod:`commandv.exporter.training.demo`) does both
for a built-in behavior.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from commandv.exporter.training.data import TrainExample, make_collator, reft_features
from commandv.runtime.atomic import atomic_dir
from commandv.runtime.errors import CommandVError

PYREFT_CLASSES = {"NodiReFT": "NodireftIntervention", "DiReFT": "DireftIntervention",
                  "LoReFT": "LoreftIntervention", "NoReFT": "NoreftIntervention"}


class TrainError(CommandVError, ValueError):
    """Bad training settings (one-line message)."""


@dataclass
class TrainSettings:
    """Optimizer and adapter settings. ``layers`` None = every ``layer_step``-th layer from 0."""

    intervention: str = "NodiReFT"
    rank: int = 8
    layers: list[int] | None = None
    layer_step: int = 2
    add_bias: bool = True
    lr: float = 4e-3
    epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 8
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def validate(self) -> None:
        if self.intervention not in PYREFT_CLASSES:
            raise TrainError(f"intervention {self.intervention!r} not supported (use {', '.join(PYREFT_CLASSES)})")
        if self.rank < 1 or self.batch_size < 1 or self.epochs < 1 or self.layer_step < 1:
            raise TrainError("rank, batch_size, epochs and layer_step must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainError(f"max_steps must be >= 1, got {self.max_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainError(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay != 0.0:
            raise TrainError("weight_decay must be 0: AdamW decay zeroes pyreft's orthogonal rotations")


@dataclass
class TrainStats:
    """What a run did: ``losses`` per optimizer step, wall ``seconds`` of the loop."""

    steps: int
    epochs_run: float
    losses: list[float]
    seconds: float
    layers: list[int]
    n_examples: int
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)

    def loss_summary(self) -> dict:
        """First/last/min loss and the mean of the first and last ``k`` steps (k = min(4, steps))."""
        k = max(1, min(4, len(self.losses)))
        ls = self.losses or [float("nan")]
        return {"first": ls[0], "last": ls[-1], "min": min(ls), f"mean_first_{k}": float(np.mean(ls[:k])),
                f"mean_last_{k}": float(np.mean(ls[-k:])), "per_step": [round(x, 5) for x in ls]}


def intervened_layers(n_layers: int, settings: TrainSettings) -> list[int]:
    """``settings.layers`` checked against ``n_layers``, or ``range(0, n_layers, layer_step)``."""
    layers = list(settings.layers) if settings.layers is not None else list(range(0, n_layers, settings.layer_step))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers or len(set(layers)) != len(layers):
        raise TrainError(f"layers {layers} invalid for a model with {n_layers} layers")
    return sorted(layers)


def build_reft_model(model, layers: Sequence[int], settings: TrainSettings):
    """Wrap ``model`` with fp32 pyreft interventions on ``block_output`` of ``layers``; seeded init."""
    import pyreft
    import torch

    settings.validate()
    d = int(model.config.hidden_size)
    cls = getattr(pyreft, PYREFT_CLASSES[settings.intervention])
    torch.manual_seed(settings.seed)  # pyreft's inits draw from the global RNG
    reps = []
    for layer in layers:
        kw = dict(embed_dim=d, low_rank_dimension=settings.rank, dtype=torch.float32)
        if settings.intervention in ("NodiReFT", "NoReFT"):
            kw["add_bias"] = settings.add_bias
        reps.append({"layer": int(layer), "component": "block_output", "low_rank_dimension": settings.rank,
                     "intervention": cls(**kw)})
    reft_model = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=reps), set_device=False)
    return reft_model


def intervention_params(reft_model) -> list:
    """The trainable parameters of every intervention (the base model stays frozen)."""
    return [p for iv in reft_model.interventions.values() for p in iv.parameters() if p.requires_grad]


def reft_loss(reft_model, batch):
    """pyreft's causal-LM loss on a collated batch (what ``ReftTrainer.compute_loss`` computes)."""
    locs = batch["intervention_locations"].permute(1, 0, 2).tolist()
    _, cf = reft_model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                       unit_locations={"sources->base": (None, locs)}, labels=batch["labels"])
    return cf.loss


def train_reft(model, tokenizer, examples: Sequence[TrainExample], settings: TrainSettings,
               progress: bool = True) -> tuple[object, TrainStats]:
    """Train a fresh adapter on ``examples`` → ``(reft_model, stats)``.

    Steps = ``max_steps`` if given, else ``epochs × ceil(N / batch_size)``; batches follow a
    seeded permutation per epoch. The base model is left in eval mode (no dropout).
    """
    import torch

    settings.validate()
    if not examples:
        raise TrainError("no training examples")
    from commandv.profiles.capture_hf import decoder_layers

    layers = intervened_layers(len(decoder_layers(model)), settings)
    reft_model = build_reft_model(model, layers, settings)
    model.eval()
    feats = reft_features(examples, len(layers))
    collate = make_collator(tokenizer, model)
    per_epoch = math.ceil(len(feats) / settings.batch_size)
    total = settings.max_steps or settings.epochs * per_epoch
    params = intervention_params(reft_model)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    gen = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    with _LossProgress(total, progress) as report:
        while len(losses) < total:
            perm = torch.randperm(len(feats), generator=gen).tolist()
            for s in range(0, len(perm), settings.batch_size):
                if len(losses) >= total:
                    break
                batch = collate([feats[i] for i in perm[s:s + settings.batch_size]])
                loss = reft_loss(reft_model, batch)
                if not torch.isfinite(loss):
                    raise TrainError(f"loss became {loss.item()} at step {len(losses) + 1}; lower the lr")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                report(losses[-1])
    seconds = time.perf_counter() - t0
    for iv in reft_model.interventions.values():
        iv.eval()
    return reft_model, TrainStats(len(losses), len(losses) / per_epoch, losses, seconds, layers, len(feats))


class _LossProgress:
    """Context manager yielding ``report(loss)``: a rich bar with the latest and running loss."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.prog = total, enabled, None

    def __enter__(self):
        if not self.enabled:
            return lambda loss: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.prog = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                             TimeElapsedColumn(), console=Console(stderr=True))
        self.prog.__enter__()
        task = self.prog.add_task("train", total=self.total, loss="…", rate="")
        t0 = time.perf_counter()

        def report(loss: float) -> None:
            done = self.prog.tasks[0].completed + 1
            self.prog.update(task, advance=1, loss=f"{loss:.4f}",
                             rate=f"{(time.perf_counter() - t0) / done:.1f} s/step")

        return report

    def __exit__(self, *exc):
        if self.prog is not None:
            self.prog.__exit__(*exc)
        return False


def load_reft_model(model, folder: str | Path):
    """Rebuild a live pyreft model from a folder written by :func:`save_adapter` (fp32, eval mode).

    pyreft's ``ReftModel.load`` cannot (NodiReFT ``KeyError: 'add_bias'``, bf16 dtype,
    ``map_location='cuda:0'``); this rebuilds the modules from ``training_metadata.json``
    and loads each ``intkey_*.bin`` with ``torch.load(weights_only=True)`` (regular files only, bounded reads).
    Raises :class:`TrainError` (or :class:`AdapterError` for a bad ``intkey_*.bin``).
    """
    from commandv.exporter.adapters.folder import MAX_CONFIG_BYTES, _load_state
    from commandv.runtime.safe_io import not_regular_reason, read_regular

    folder = Path(folder)
    meta_path = folder / "training_metadata.json"
    if not_regular_reason(meta_path) == "not found":
        raise TrainError(f"{folder}: no training_metadata.json (not written by save_adapter)")
    raw = read_regular(meta_path, MAX_CONFIG_BYTES, "adapter file", TrainError)  # a FIFO or /dev/zero: refused
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise TrainError(f"{meta_path}: invalid JSON ({type(exc).__name__})") from None
    settings = TrainSettings(intervention=meta["intervention_type"], rank=int(meta["rank"]),
                             layers=[int(x) for x in meta["layers"]], add_bias=bool(meta.get("add_bias", True)))
    reft_model = build_reft_model(model, settings.layers, settings)
    for key, iv in reft_model.interventions.items():
        path = folder / f"intkey_{key}.bin"
        if not_regular_reason(path) == "not found":
            raise TrainError(f"{folder}: missing {path.name}")
        iv.load_state_dict(_load_state(path))  # bounded read of a regular file, expansion checked, data only
        iv.eval()
    return reft_model


def live_deltas(reft_model, h: np.ndarray) -> dict[int, np.ndarray]:
    """``intervention(h) - h`` of every live intervention, keyed by layer; ``h [n, d]`` → float64 ``[n, d]``."""
    import torch

    out = {}
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(h, dtype=np.float32))
        for key, iv in reft_model.interventions.items():
            out[int(key.split("_")[1])] = (iv(x) - x).double().numpy()
    return out


def save_adapter(reft_model, out_dir: str | Path, metadata: dict, readme: str,
                 keep: Sequence[str] = ("donor_answers.jsonl",)) -> Path:
    """Write ``out_dir`` atomically: pyreft's ``reft_model.save`` files (``config.json`` + ``intkey_*.bin``),
    ``training_metadata.json`` and ``README.md``; files named in ``keep`` that already exist there are carried over."""
    import contextlib
    import io
    import os
    import shutil

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # pyvene prints "Directory ... already exists"
            reft_model.save(save_directory=str(tmp))
        (tmp / "training_metadata.json").write_text(json.dumps(metadata, indent=1, default=_jsonable) + "\n",
                                                    encoding="utf-8")
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        for name in keep:
            if (out / name).is_file():
                shutil.copy2(out / name, tmp / name)
    mask = os.umask(0)
    os.umask(mask)
    out.chmod(0o777 & ~mask)  # the temp folder was made 0700
    return out


def _jsonable(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    return str(obj)
