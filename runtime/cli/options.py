"""Command-line options several ``cmdv`` commands share, defined once (typer ``Annotated`` aliases).

Use one as a parameter's type, with its default::

    def run_cmd(pack: PacksOption = None, force: ForceOption = False, n_ctx: CtxOption = 4096, ...): ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

POLICY_HELP = "pack signatures: require (refuse unsigned/tampered), warn, off [env COMMANDV_PACK_POLICY; default warn]"
TRUSTED_HELP = "trusted public key file or folder of *.pub (repeatable; default: $COMMANDV_HOME/trusted_keys)"
DELTA_HELP = ("refuse a request whose packs' summed edit at any layer exceeds this multiple of the model's "
              "hidden-state norm on reference prompts [env COMMANDV_MAX_DELTA_NORM; default no limit]")

ModelArgument = Annotated[str, typer.Argument(help="zoo key or .gguf file (onnx: export folder, .onnx, or "
                                                   "exported key)")]
PacksOption = Annotated[Optional[List[Path]], typer.Option("--pack", "-p", help="behavior pack file (repeatable)")]
ForceOption = Annotated[bool, typer.Option("--force", help="use packs made for another file of the same shape")]
CtxOption = Annotated[int, typer.Option("--ctx", help="context size in tokens")]
SignaturesOption = Annotated[Optional[str], typer.Option("--signatures", help=POLICY_HELP)]
TrustedOption = Annotated[Optional[List[Path]], typer.Option("--trusted", "-t", help=TRUSTED_HELP)]
MaxDeltaOption = Annotated[Optional[float], typer.Option("--max-delta-norm", help=DELTA_HELP)]
EngineOption = Annotated[str, typer.Option("--engine", help="llama (llama.cpp, GGUF) or onnx (ONNX Runtime, an "
                                                            "export of `cmdv onnx export`)")]
QuantOption = Annotated[str, typer.Option("--quant", help="with --engine onnx and a zoo key / GGUF: which of its "
                                                          "exports to run (fp32, int8, int4)")]
ThreadsOption = Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores)")]
