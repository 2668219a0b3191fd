"""Parsing of comma-separated CLI option values, with errors that name the option."""

from __future__ import annotations

from typing import Callable, TypeVar

from commandv.runtime.errors import CommandVError

T = TypeVar("T")


class CliArgumentError(CommandVError, ValueError):
    """A command-line option value that cannot be parsed."""


def comma_list(text: str, convert: Callable[[str], T], option: str) -> list[T]:
    """``"1,2.5, 4"`` → ``[convert("1"), …]`` (empty items skipped); :class:`CliArgumentError` names the option
    and the item that does not convert."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            out.append(convert(item))
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(convert, "valid")
            raise CliArgumentError(f"{option}: {item!r} is not {kind} (expected a comma-separated list)") from None
    return out
