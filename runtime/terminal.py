"""Text from files, made safe to print on a terminal.

A pack's name, metadata and diagnostics, an adapter's metadata, a model's name:
all come from files someone else wrote. Printed raw, an escape sequence in them
can erase the line above (the "unsigned pack" warning) and draw a fake one.
:func:`safe_text` shows every control character as a visible escape instead.

Call as ``console.print(escape(safe_text(pack.name)))`` (rich's ``escape`` for its
markup, then this for the terminal), or ``print(safe_text(value))``.
"""

from __future__ import annotations

import re
import unicodedata

# C0 controls (ESC, CR, BS, BEL…), DEL, C1 controls (CSI 0x9b…), and the Unicode format characters that reorder or
# hide text (bidi overrides/isolates, zero-width joiners, the BOM): everything that can move the cursor or disguise
# what is shown. Newline and tab are kept only when ``multiline``.
_FORMAT_CHARS = "\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_FORMAT_CHARS}]")
_UNSAFE_KEEP_LINES = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_FORMAT_CHARS}]")


def _visible(m: re.Match) -> str:
    ch = m.group(0)
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: object, multiline: bool = False) -> str:
    """``str(value)`` with every control / text-reordering character shown as ``\\xNN`` or ``\\uNNNN``.

    ``multiline=True`` keeps newlines and tabs (model output); otherwise they are escaped too (names, one-line
    fields). Lone surrogates are shown as ``\\udXXX``. The result holds no character a terminal acts on.
    """
    text = value if isinstance(value, str) else str(value)
    text = (_UNSAFE_KEEP_LINES if multiline else _UNSAFE).sub(_visible, text)
    if any(unicodedata.category(c) == "Cs" for c in text):
        text = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cs" else c for c in text)
    return text
