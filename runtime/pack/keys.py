"""Every metadata key and tensor name of the behavior pack format (GGUF, architecture ``commandv-pack``), spelled
once: :mod:`commandv.runtime.pack.gguf_io` writes and reads them, ``tests/make_bad_corpus.py`` builds broken packs from them, and
the C reader (``runtime/native/cmdv_pack.c``) spells the same strings (``tests/test_pack_keys.py`` checks that
both sides hold the same set).

Per-entry keys and tensor names are templates with ``{i}`` (entry index, from 0) and ``{name}`` (tensor, one of
:data:`TENSOR_NAMES`)::

    from commandv.runtime.pack import keys as K

    K.entry_key(K.ENTRY_LAYER, 0)  # 'commandv.entry.0.layer'
    K.tensor_name(1, "C")          # 'entry.1.C'

Types and meanings: README "Behavior pack format" and :mod:`commandv.runtime.pack.gguf_io`.
"""

from __future__ import annotations

PACK_ARCH = "commandv-pack"
"""``general.architecture`` of every pack."""

KEY_PREFIX = "commandv."
"""Every pack-specific metadata key starts with this."""

# GGUF's own keys, as packs use them
ARCHITECTURE = "general.architecture"  # str: PACK_ARCH
NAME = "general.name"  # str: the pack's name (readers fall back to the file stem)

# header: one each
FORMAT_VERSION = "commandv.format_version"  # u32
CREATED_BY = "commandv.created_by"  # str
RECIPIENT_FINGERPRINT = "commandv.recipient.fingerprint"  # str: sha256 of the recipient model file
RECIPIENT_ARCH = "commandv.recipient.arch"  # str
RECIPIENT_NAME = "commandv.recipient.name"  # str (optional)
RECIPIENT_N_LAYER = "commandv.recipient.n_layer"  # u32
RECIPIENT_D_MODEL = "commandv.recipient.d_model"  # u32
META = "commandv.meta"  # str: JSON object
DIAGNOSTICS = "commandv.diagnostics"  # str: JSON list, one object per layer pair
ENTRY_COUNT = "commandv.entry_count"  # u32

# per entry i
ENTRY_LAYER = "commandv.entry.{i}.layer"  # u32: recipient block whose output is edited
ENTRY_DONOR_LAYER = "commandv.entry.{i}.donor_layer"  # i32 (optional, -1: unknown)
ENTRY_ACT = "commandv.entry.{i}.act"  # str: activation
ENTRY_POSITIONS = "commandv.entry.{i}.positions"  # str: targeted positions, e.g. l1 or f1+l1
ENTRY_STRENGTH = "commandv.entry.{i}.strength"  # f32

# tensors of entry i: A [d, r], b [r], C [r, d] always; P [d, q], Q [q, d], e [d] optional (numpy shapes)
TENSOR = "entry.{i}.{name}"
TENSOR_PREFIX = "entry."
TENSOR_NAMES = ("A", "b", "C", "P", "Q", "e")
REQUIRED_TENSORS = ("A", "b", "C")

HEADER_KEYS = (FORMAT_VERSION, CREATED_BY, RECIPIENT_FINGERPRINT, RECIPIENT_ARCH, RECIPIENT_NAME, RECIPIENT_N_LAYER,
               RECIPIENT_D_MODEL, META, DIAGNOSTICS, ENTRY_COUNT)
"""The pack-specific header keys, in the order the writer writes them."""
ENTRY_KEYS = (ENTRY_LAYER, ENTRY_DONOR_LAYER, ENTRY_ACT, ENTRY_POSITIONS, ENTRY_STRENGTH)
"""The per-entry key templates, in the order the writer writes them."""


def entry_key(template: str, i: int) -> str:
    """One of :data:`ENTRY_KEYS` for entry ``i``: ``entry_key(ENTRY_ACT, 2)`` → ``'commandv.entry.2.act'``."""
    return template.format(i=i)


def tensor_name(i: int, name: str) -> str:
    """Tensor ``name`` (one of :data:`TENSOR_NAMES`) of entry ``i``: ``tensor_name(0, "A")`` → ``'entry.0.A'``."""
    return TENSOR.format(i=i, name=name)
