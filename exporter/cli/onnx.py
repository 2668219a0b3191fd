"""``cmdv onnx export`` / ``cmdv onnx bake`` / ``cmdv onnx info``: ONNX recipients for ONNX Runtime.

The main CLI (``cli.py``) adds :data:`onnx_app` as ``onnx``; the engine itself is ``cmdv run --engine onnx``.
torch, onnx and onnxruntime are imported when a command runs; a missing one is reported as one line naming
the pip package.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from commandv.exporter.cli.args import CliArgumentError, comma_list
from commandv.runtime.cli.errors import user_errors
from commandv.runtime.terminal import safe_text

_out = Console(highlight=False)


def _say(line: str) -> None:
    """Print a line holding names from model files and paths: no markup, control characters shown as escapes."""
    _out.print(safe_text(line), markup=False)


onnx_app = typer.Typer(help="Export recipients to ONNX (KV cache, pack sites) for ONNX Runtime.",
                       no_args_is_help=True)


@onnx_app.command("export")
@user_errors
def export_cmd(
    model: str = typer.Argument(..., help="zoo key, .gguf file (via its dequantized HF copy) or HF folder"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="export folder (default: the cache, where "
                                       "`cmdv run --engine onnx MODEL` finds it)"),
    quant: str = typer.Option("fp32", help="fp32, int8 (MatMulNBits 8-bit, symmetric, blocks of 32) or int4 (MatMulNBits 4-bit; head 8-bit)"),
    pack: Optional[List[Path]] = typer.Option(None, "--pack", "-p", help="bake this pack in (repeatable)"),
    plain: bool = typer.Option(False, "--plain", help="no pack sites at all"),
    max_rank: int = typer.Option(16, help="pack-input slots: largest rank"),
    max_pq_rank: int = typer.Option(16, help="pack-input slots: largest P·Q rank (0: no P·Q term)"),
    layers: Optional[str] = typer.Option(None, help="pack-input slots only at these layers, e.g. 0,2,4"),
    slots_per_layer: int = typer.Option(1, help="pack-input slots per layer (packs with several entries "
                                               "on one layer need as many)"),
    force: bool = typer.Option(False, "--force", help="bake packs made for another file of the same shape"),
    no_check: bool = typer.Option(False, "--no-check", help="skip the parity check against the torch model"),
) -> None:
    """Write MODEL as an ONNX decoder with KV cache; by default with pack inputs at every layer."""
    from commandv.exporter.onnx.export import export_onnx

    lay = comma_list(layers, int, "--layers") if layers is not None else None
    slot_opts = [o for o, on in (("--max-rank", max_rank != 16), ("--max-pq-rank", max_pq_rank != 16),
                                 ("--layers", layers is not None), ("--slots-per-layer", slots_per_layer != 1))
                 if on]
    if plain and pack:
        raise CliArgumentError("--plain (no pack sites) and --pack (bake packs in) exclude each other")
    if (plain or pack) and slot_opts:
        raise CliArgumentError(f"{', '.join(slot_opts)} shape pack-input slots; they do nothing with "
                               f"{'--plain' if plain else '--pack'}")
    res = export_onnx(model, out, quant=quant, packs=list(pack or []), pack_inputs=not plain,
                      max_rank=max_rank, max_pq_rank=max_pq_rank, layers=lay, slots_per_layer=slots_per_layer,
                      force=force, check=not no_check)
    m = res.meta
    _say(f"{m.name} ({m.arch}, {m.n_layer} layers, d={m.d_model}) → {res.model_path} "
         f"({res.bytes / 1e6:.1f} MB, {m.quant}, packs: {m.pack_mode}) in {res.seconds:.1f} s")
    if res.parity:
        _out.print(f"parity vs torch ({res.parity['n_tokens']} tokens): logits max rel err "
                   f"{res.parity['logits_max_rel_err']:.2e}, block outputs {res.parity['hidden_max_rel_err']:.2e}")


@onnx_app.command("bake")
@user_errors
def bake_cmd(
    model: Path = typer.Argument(..., help="a plain export (`cmdv onnx export --plain`): model.onnx or its folder"),
    pack: List[Path] = typer.Option(..., "--pack", "-p", help="pack to bake in (repeatable)"),
    out: Path = typer.Option(..., "--out", "-o", help="the new .onnx file (tokenizer.json is copied beside it)"),
    force: bool = typer.Option(False, "--force"),
) -> None:
    """Bake packs into a plain ONNX export (no torch needed)."""
    import shutil

    import onnx

    from commandv.exporter.onnx.export import save_model_atomic
    from commandv.runtime.engines.onnx.files import TOKENIZER_FILE, find_onnx_model
    from commandv.runtime.engines.onnx.surgery import bake_packs
    from commandv.runtime.pack.model import BehaviorPack
    from commandv.runtime.safe_io import check_output_target

    check_output_target(out, "ONNX model", CliArgumentError)  # before loading anything: never onto a device
    src = find_onnx_model(model)
    m = onnx.load(str(src))
    bake_packs(m, [BehaviorPack.load(p) for p in pack], force=force, where=str(src))
    save_model_atomic(m, out)
    if (src.parent / TOKENIZER_FILE).is_file() and not (out.parent / TOKENIZER_FILE).exists():
        shutil.copyfile(src.parent / TOKENIZER_FILE, out.parent / TOKENIZER_FILE)
    _say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


@onnx_app.command("info")
@user_errors
def info_cmd(model: str = typer.Argument(..., help=".onnx file, export folder or exported zoo key"),
             quant: str = typer.Option("fp32", help="with a zoo key / GGUF: which of its exports (fp32, int8, "
                                                    "int4)")) -> None:
    """Print what an ONNX export holds (source model, quantization, pack sites)."""
    import onnx

    from commandv.runtime.engines.onnx.files import find_onnx_model
    from commandv.runtime.engines.onnx.surgery import read_meta

    path = find_onnx_model(model, quant)
    m = read_meta(onnx.load(str(path), load_external_data=False), str(path))
    _say(f"{path}: {m.name} ({m.arch}, {m.n_layer} layers, d={m.d_model}), {m.quant}, "
         f"model {m.fingerprint[:16]}…")
    if m.pack_mode == "baked":
        _say("baked packs: " + ", ".join(f"{b['name']} ({b['n_entries']} entries)" for b in m.baked))
    elif m.pack_mode == "inputs":
        _say(f"pack inputs: {len(m.sites)} slots at layers {sorted({s['layer'] for s in m.sites})}, "
             f"rank ≤ {m.max_rank}, P·Q rank ≤ {m.max_pq_rank}")
    else:
        _say("no pack sites")
