"""Optional native fast path: ``cmdv_core.c`` (plain C11) built on first use by :mod:`.build`."""
