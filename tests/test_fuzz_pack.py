"""Property-based fuzzing (hypothesis) of the pack reader and the adapter importer, bounded for CI.

Mutations of valid seeds (bit flips, interesting integers in the header,
truncations, insertions, deletions, duplicated chunks, and for adapters edits of
the pickled record inside the torch zip): the reader must load something valid
or raise its own error class; see tests/fuzz_targets.py. The long run is
benchmarks/fuzz_long.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_targets import OPS, adapter_seeds, adapter_target, mutate, mutate_adapter, pack_seeds, pack_target

ops_st = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
                  min_size=1, max_size=4)
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def test_seeds_are_valid(tmp_path):
    assert all(pack_target(s) == "loaded" for s in pack_seeds())
    pytest.importorskip("torch")
    for i, files in enumerate(adapter_seeds()):
        (tmp_path / str(i)).mkdir()
        assert adapter_target(files, tmp_path / str(i)) == "loaded"


def test_mutate_is_deterministic_and_total():
    data = pack_seeds()[0]
    ops = [(op, 2**64 - 1 - i, 7 * i) for i, op in enumerate(OPS)]
    assert mutate(data, ops) == mutate(data, ops)
    assert mutate(b"", ops) is not None
    assert mutate(data, [("trunc", 10, 0)]) == data[:10]
    assert mutate(data, [("u64h", 16, 1)])[16:24] == (1).to_bytes(8, "little")  # pool value 1 at byte 16
    assert mutate(data, [("flip", 8 * 5 + 1, 0)])[5] == data[5] ^ 2


@FUZZ
@given(seed=st.integers(0, 3), ops=ops_st)
def test_fuzz_pack_reader(seed, ops):
    pack_target(mutate(pack_seeds()[seed], ops))


@FUZZ
@given(seed=st.integers(0, 2), which=st.integers(0, 3), ops=ops_st)
def test_fuzz_adapter_importer(tmp_path_factory, seed, which, ops):
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("fz")
    adapter_target(mutate_adapter(adapter_seeds()[seed], which, ops), folder)


# Findings of benchmarks/fuzz_long.py, fixed, replayed here (seed index, ops); also corpus cases "fuzz_*".
REGRESSIONS = [
    # GGUF dims (2^63 + 2, 0): zero bytes, so in bounds, but numpy cannot shape it (was a bare ValueError)
    (0, [("u64", 6480607558763984862, 13807178137158795418)], "dimension 9223372036854775810 exceeds"),
]


@pytest.mark.parametrize("seed,ops,needle", REGRESSIONS)
def test_fuzz_regressions(seed, ops, needle):
    from commandv.runtime.pack.model import PackError, parse_pack

    data = mutate(pack_seeds()[seed], ops)
    assert pack_target(data) == "error"
    with pytest.raises(PackError, match=needle):
        parse_pack(data, "regression.gguf")
