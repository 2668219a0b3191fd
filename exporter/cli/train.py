"""``cmdv train-demo``: train a donor ReFT adapter for a built-in behavior (pyreft, fp32, CPU-friendly).

The main CLI (``cli.py``) registers :func:`train_demo_cmd`. torch and pyreft are imported when the command
runs; a missing one is reported as one line naming the pip package.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from commandv.runtime.cli.errors import user_errors
from commandv.runtime.terminal import safe_text

out = Console()


def _command_line() -> str:
    """The command as typed, with the program name normalized to ``cmdv``."""
    return shlex.join(["cmdv", *sys.argv[1:]])


@user_errors
def train_demo_cmd(
    donor: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="donor model: zoo key, .gguf or HF folder"),
    behavior: str = typer.Option("pirate", help="built-in behavior: pirate, french, refusal or refusal-broad"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="adapter folder (default adapters/<donor>/<behavior>)"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps (default: epochs × batches per epoch)"),
    epochs: Optional[int] = typer.Option(None, help="epochs (default: the behavior's)"),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (default: the behavior's)"),
    rank: int = typer.Option(8, help="intervention rank"),
    layer_step: int = typer.Option(2, help="intervene on every N-th layer from 0"),
    intervention: str = typer.Option("NodiReFT", help="NodiReFT, DiReFT, LoReFT or NoReFT"),
    batch_size: Optional[int] = typer.Option(None, help="examples per step (default: the behavior's)"),
    examples: Optional[int] = typer.Option(None, help="training examples (default: the behavior's)"),
    max_prompt_tokens: int = typer.Option(64, help="skip prompts longer than this once rendered"),
    n_eval: int = typer.Option(10, help="held-out prompts per group for the with/without check"),
    seed: int = typer.Option(0, help="seed for init, example choice and batch order"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
) -> None:
    """Train a donor adapter, check it on held-out prompts, save it in pyreft's format."""
    from commandv.exporter.training.behaviors import get_behavior
    from commandv.exporter.training.demo import DemoConfig, run_train_demo
    from commandv.exporter.training.train import TrainError, TrainSettings

    if out_dir is not None:  # before hours of training: a file, FIFO or device at --out is refused now
        from commandv.runtime.safe_io import check_output_target

        check_output_target(out_dir, "adapter", TrainError, folder=True)
    b = get_behavior(behavior)
    if threads is not None:
        if threads < 1:
            raise TrainError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    settings = TrainSettings(intervention=intervention, rank=rank, layer_step=layer_step,
                             lr=lr if lr is not None else b.defaults.get("lr", 4e-3),
                             epochs=epochs if epochs is not None else b.defaults.get("epochs", 2), max_steps=steps,
                             batch_size=batch_size if batch_size is not None else b.defaults.get("batch_size", 8),
                             seed=seed)
    cfg = DemoConfig(donor=donor, behavior=behavior, out=out_dir, settings=settings, n_examples=examples,
                     max_prompt_tokens=max_prompt_tokens, n_eval=n_eval)
    res = run_train_demo(cfg, command=_command_line())
    st = res.stats
    out.print(f"trained {st.steps} steps on {st.n_examples} examples in {st.seconds:.0f} s "
              f"({st.seconds_per_step:.1f} s/step); loss {st.losses[0]:.3f} → {st.losses[-1]:.3f}")
    for e in res.evals:
        out.print(f"held-out {e.label} ({'expected' if e.expect else 'not expected'}): behavior in "
                  f"{e.with_adapter}/{e.n} with the adapter, {e.without_adapter}/{e.n} off-shelf")
        for smp in e.samples[:2]:  # model output: plain text, control characters shown as escapes
            out.print(f"  adapter:   {safe_text(repr(smp['adapter'][:90]))}\n"
                      f"  off-shelf: {safe_text(repr(smp['off_shelf'][:90]))}", highlight=False, markup=False)
    out.print(f"load_adapter round trip: max |Δ| = {res.roundtrip_max_abs_err:.2e}")
    out.print(safe_text(f"saved: {res.out}"), markup=False)
