import pytest

from commandv.exporter.transfer.layermap import DEFAULT_LAYER_RULE, LayerMapError, build_layer_map, map_layer


def test_default_is_nearest():
    assert DEFAULT_LAYER_RULE == "nearest"


@pytest.mark.parametrize("n_d,n_r", [(28, 24), (24, 28), (24, 30), (30, 18), (4, 4), (7, 3)])
def test_rules_against_formula(n_d, n_r):
    for l in range(n_d):
        x = l * n_r / n_d
        assert map_layer(l, n_d, n_r, "floor") == int(x)
        lo = int(x)
        want = lo if x - lo <= 0.5 + 1e-12 else lo + 1
        assert map_layer(l, n_d, n_r, "nearest") == min(want, n_r - 1)


def test_ties_go_down():
    # 1 * 3 / 2 = 1.5 exactly: nearest-with-ties-down gives 1
    assert map_layer(1, 2, 3, "nearest") == 1
    assert map_layer(3, 4, 2, "nearest") == 1  # 1.5 -> 1


def test_many_to_one_keeps_donor_order():
    m = build_layer_map([6, 0, 2, 4], 8, 2, "floor")
    assert [p[0] for p in m.pairs] == [0, 2, 4, 6]
    assert [p[1] for p in m.pairs] == [0, 0, 1, 1]


def test_errors():
    with pytest.raises(LayerMapError, match="out of range"):
        map_layer(28, 28, 24)
    with pytest.raises(LayerMapError, match="unknown layer rule"):
        map_layer(1, 28, 24, "ceil")
