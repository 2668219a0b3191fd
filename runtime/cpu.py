"""What CPU this is, and what llama.cpp may safely use on it.

llama.cpp's CPU backend offers "extra" buffer types: weights repacked at load
for a faster kernel (Intel AMX tiles; AVX2/NEON interleaved layouts). On Intel
Xeons with AMX (``lscpu`` flags ``amx_tile amx_int8 amx_bf16``) the AMX matmul of
the pinned llama.cpp crashes on prompts of a few hundred tokens (segfault in
``ggml_backend_amx_mul_mat``, llama.cpp issue #20824) and gives wrong results for
Q4_0/Q4_1 (PR #16315). So every model load here decides with
:func:`extra_buffers`: off on CPUs with AMX, on elsewhere; the environment
variable ``COMMANDV_EXTRA_BUFTS`` (``1``/``on`` or ``0``/``off``; ``auto`` = the
rule) overrides. The C session (``runtime/native/cmdv_session.c``) applies the
same rule with the same variable.

Call as::

    use, why = extra_buffers()          # (False, "off: the CPU has AMX (amx_tile) ...") on an AMX Xeon
    params.use_extra_bufts = use
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache

from commandv.runtime.errors import CommandVError

ENV_EXTRA_BUFTS = "COMMANDV_EXTRA_BUFTS"
"""Environment override of the extra-buffer rule (the C session reads the same name)."""

AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
_ON, _OFF, _AUTO = ("1", "on", "true", "yes"), ("0", "off", "false", "no"), ("", "auto")


class CpuSettingError(CommandVError, ValueError):
    """An environment setting about the CPU that cannot be understood."""


@dataclass(frozen=True)
class CpuInfo:
    """``model``: the CPU's name (``'AMD EPYC 7B13'``); ``flags``: feature flags as ``lscpu`` prints them."""

    model: str
    flags: frozenset[str]
    machine: str
    ident: str = ""
    """Further identity lines (arm: ``CPU implementer`` / ``CPU part`` …), which ``-mcpu=native`` depends on."""

    @property
    def has_amx(self) -> bool:
        return any(f in self.flags for f in AMX_FLAGS)

    @property
    def build_key(self) -> bytes:
        """What code compiled with ``-march=native`` depends on: machine, model, identity lines and flags.

        Part of the cache key of every natively tuned build, so a cache folder shared between machines
        never loads a library built for another CPU (an illegal instruction, not an error)."""
        return "\n".join((self.machine, self.model, self.ident, " ".join(sorted(self.flags)))).encode()


def _parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) from ``/proc/cpuinfo`` text (x86 ``flags``, arm ``Features``)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


_IDENT_KEYS = ("cpu implementer", "cpu architecture", "cpu variant", "cpu part", "cpu revision", "cpu family",
               "model", "stepping")


def _parse_ident(text: str) -> str:
    """The identity lines of the first processor in ``/proc/cpuinfo`` text (x86 family/model/stepping,
    arm implementer/part …), as ``key=value`` joined by ``;``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in _IDENT_KEYS and key not in out:
            out[key] = value.strip()
    return ";".join(f"{k}={out[k]}" for k in _IDENT_KEYS if k in out)


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (Linux: ``/proc/cpuinfo``; elsewhere ``platform.processor()`` and no flags)."""
    model, flags, ident = "", frozenset(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read(1 << 20)
        model, flags = _parse_cpuinfo(text)
        ident = _parse_ident(text)
    except OSError:
        pass
    return CpuInfo(model=model or platform.processor() or "unknown", flags=flags, machine=platform.machine(),
                   ident=ident)


def build_key() -> bytes:
    """:attr:`CpuInfo.build_key` of this machine's CPU (:func:`cpu_info`): the part of a native build's cache
    key that keeps code tuned for one CPU (``-march=native``) from loading on another."""
    return cpu_info().build_key


def extra_buffers(info: CpuInfo | None = None, env: dict | None = None) -> tuple[bool, str]:
    """Whether llama.cpp model loads should use the extra (repacked-weight) buffer types, and why.

    ``info``: the CPU (default: this one; tests pass simulated flags); ``env``: the environment (default
    ``os.environ``). Returns ``(use, reason)``; raises :class:`CpuSettingError` for an unknown
    ``COMMANDV_EXTRA_BUFTS`` value.
    """
    info = info or cpu_info()
    env = os.environ if env is None else env
    raw = str(env.get(ENV_EXTRA_BUFTS, "")).strip().lower()
    if raw in _ON:
        return True, f"on: {ENV_EXTRA_BUFTS}={raw}"
    if raw in _OFF:
        return False, f"off: {ENV_EXTRA_BUFTS}={raw}"
    if raw not in _AUTO:
        raise CpuSettingError(f"{ENV_EXTRA_BUFTS}={raw!r} is not understood; use 1/on, 0/off or auto")
    if info.has_amx:
        flag = next(f for f in AMX_FLAGS if f in info.flags)
        return False, (f"off: the CPU has AMX ({flag}), whose llama.cpp kernels crash on long prompts "
                       f"(set {ENV_EXTRA_BUFTS}=1 to use them anyway)")
    return True, "on: no AMX on this CPU"
