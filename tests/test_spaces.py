"""Search spaces: published parameter counts, arch strings, derivation on hand-made α, α init."""

import math

import pytest
import torch

from sldarts.activations import Sigmoid, Softmax
from sldarts.errors import SldartsError
from sldarts.spaces import darts, nb201

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
INDEX1 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_nb201_eval_network_param_counts_match_the_benchmark():
    # NAS-Bench-201 reports 1.531546 M for the all-3x3 cell on CIFAR-10; 0.808276 M for index 1 on CIFAR-100.
    assert n_params(nb201.NB201Network(ALL_CONV3, num_classes=10)) == 1_531_546
    assert n_params(nb201.NB201Network(INDEX1, num_classes=100)) == 808_276


def test_arch_string_round_trip_and_errors():
    assert nb201.format_arch(nb201.parse_arch(INDEX1)) == INDEX1
    for bad in ["", "|nor_conv_3x3~0|", "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "|none~0|+|none~0|+|none~0|none~1|none~2|"]:
        with pytest.raises(SldartsError):
            nb201.parse_arch(bad)


@pytest.mark.parametrize("act,expected", [(Sigmoid(), 1 / 5), (Softmax(), 1 / 5)])
def test_initial_weights_are_uniform_on_nb201(act, expected):
    m = nb201.NB201Supernet(channels=2, cells=1, activation=act)
    w = m.arch_weights()["cell"]
    assert w.shape == (6, 5)
    if isinstance(act, Sigmoid):
        # α = −ln(n−1) gives exactly 1/n: sigmoid(−ln 4) = 1/(1+4)
        assert torch.all(m.arch["cell"] == -math.log(4))
        assert torch.allclose(w, torch.full_like(w, expected), atol=1e-7, rtol=0)
    else:  # N(0, 1e-3²): nearly uniform but not tied
        assert m.arch["cell"].std() < 5e-3 and m.arch["cell"].std() > 0
        assert torch.allclose(w, torch.full_like(w, expected), atol=1e-3)


def test_sigmoid_init_on_darts_is_one_eighth():
    m = darts.DartsSupernet(channels=4, layers=3, activation=Sigmoid())
    for w in m.arch_weights().values():
        assert torch.allclose(w, torch.full_like(w, 0.125), atol=1e-7, rtol=0)


def test_weights_and_alphas_are_disjoint_and_cover_the_model():
    m = nb201.NB201Supernet(channels=2, cells=1)
    ids_a = {id(p) for p in m.alphas()}
    ids_w = {id(p) for p in m.weights()}
    assert not ids_a & ids_w
    assert ids_a | ids_w == {id(p) for p in m.parameters()}
    assert [tuple(a.shape) for a in m.alphas()] == [(6, 5)]


def test_nb201_derivation_on_hand_made_alpha():
    m = nb201.NB201Supernet(channels=2, cells=1, activation=Softmax())
    choice = [3, 3, 4, 1, 3, 0]  # conv3, conv3, pool, skip, conv3, none
    with torch.no_grad():
        m.arch["cell"].zero_()
        for e, k in enumerate(choice):
            m.arch["cell"][e, k] = 1.0
    assert m.derive() == "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"
    assert m.param_free_ratio(m.derive()) == pytest.approx(3 / 6)


def test_darts_derivation_on_hand_made_alpha():
    # Node 2 (edges 0,1): edge 0 strongest sep3, edge 1 strongest skip.
    # Node 3 (edges 2,3,4): `none` is huge on edge 2 and must be ignored; edges 3,4 win with dil3 and max.
    w = torch.zeros(14, 8)
    ops = darts.OPS
    w[0, ops.index("sep_conv_3x3")] = 0.9
    w[1, ops.index("skip_connect")] = 0.8
    w[2, ops.index("none")] = 5.0
    w[2, ops.index("avg_pool_3x3")] = 0.1
    w[3, ops.index("dil_conv_3x3")] = 0.5
    w[4, ops.index("max_pool_3x3")] = 0.7
    # Node 4 (edges 5..8): edges 8 and 6
    w[8, ops.index("sep_conv_5x5")] = 0.6
    w[6, ops.index("dil_conv_5x5")] = 0.4
    w[5, ops.index("sep_conv_3x3")] = 0.3
    # Node 5 (edges 9..13): edges 13 and 9
    w[13, ops.index("skip_connect")] = 0.95
    w[9, ops.index("avg_pool_3x3")] = 0.9
    w[10, ops.index("sep_conv_3x3")] = 0.2
    got = darts.derive_cell(w)
    assert got == [["sep_conv_3x3", 0], ["skip_connect", 1], ["max_pool_3x3", 2], ["dil_conv_3x3", 1],
                   ["sep_conv_5x5", 3], ["dil_conv_5x5", 1], ["skip_connect", 4], ["avg_pool_3x3", 0]]
    g = darts.make_genotype(got, got)
    assert darts.check_genotype(g) == g
    assert set(g) == {"normal", "normal_concat", "reduce", "reduce_concat"}


def test_derivation_uses_the_search_activation():
    # Node 3 has inputs on edges 2, 3, 4. Raw α rank them 3 > 2 > 4; softmax weights rank them
    # 2 (p=0.28) > 4 (p=0.19) > 3 (all tied, p=1/8). Derivation must follow the activated weights.
    m = darts.DartsSupernet(channels=4, layers=3, activation=Softmax())
    with torch.no_grad():
        for a in m.alphas():
            a.zero_()
            a[2, darts.OPS.index("sep_conv_3x3")] = 1.0
            a[3, :] = 2.9
            a[4, darts.OPS.index("sep_conv_5x5")] = 0.5
    g = m.derive()
    assert g["normal"][2:4] == [["sep_conv_3x3", 0], ["sep_conv_5x5", 2]]


def test_darts_search_network_shapes_and_imagenet_stem():
    m = darts.DartsSupernet(channels=4, layers=5, num_classes=7)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    assert [c.reduction for c in m.cells] == [False, True, False, True, False]
    im = darts.DartsSupernet(channels=4, layers=3, num_classes=5, imagenet=True)
    x = torch.randn(2, 3, 64, 64)
    assert im.stem1(im.stem0(x)).shape[-1] == 8  # three stride-2 convs before the cells
    assert im(x).shape == (2, 5)


@pytest.mark.parametrize("bad", [
    {"normal": [], "reduce": []},
    {"normal": [["sep_conv_3x3", 0]] * 8, "reduce": [["bogus", 0]] * 8},
    {"normal": [["sep_conv_3x3", 5]] * 8, "reduce": [["sep_conv_3x3", 0]] * 8},
    "not a dict",
])
def test_bad_genotypes_are_refused(bad):
    with pytest.raises(SldartsError):
        darts.check_genotype(bad)
