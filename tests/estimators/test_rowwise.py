"""Block-wise float64 reductions: equal to the whole-matrix float64 computation."""

import pytest
import torch

from ijckd_bounds.estimators import rowwise


@pytest.fixture(params=[None, "order", "subset"])
def case(request, monkeypatch):
    # small blocks, so that several blocks and a ragged last one are exercised
    monkeypatch.setattr(rowwise, "ROW_BLOCK", 7)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(50, 6, generator=generator) * 3 + 100  # float32, far from 0
    b = a + torch.randn(50, 6, generator=generator)
    if request.param is None:
        order = None
    elif request.param == "order":
        order = torch.randperm(50, generator=generator)
    else:
        order = torch.randperm(50, generator=generator)[:31]
    rows = torch.arange(50) if order is None else order
    return a, b, order, a[rows].double(), b[rows].double()


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)
    assert got.dtype == torch.float64


def test_row_blocks_cover_every_row_once():
    blocks = rowwise.row_blocks(23, 5)
    assert [(s.start, s.stop) for s in blocks] == [(0, 5), (5, 10), (10, 15), (15, 20),
                                                   (20, 23)]
    assert rowwise.row_blocks(0, 5) == []


def test_column_mean_and_projection(case):
    a, _, order, a64, _ = case
    _close(rowwise.column_mean64(a, order), a64.mean(dim=0))
    direction = torch.linspace(-1, 1, 6, dtype=torch.float64)
    _close(rowwise.project64(a, direction, order), a64 @ direction)


def test_linear_and_squared_distance(case):
    a, b, order, a64, b64 = case
    weight = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(4, generator=torch.Generator().manual_seed(2))
    _close(rowwise.linear64(a, weight, bias, order), a64 @ weight.double().T + bias.double())
    _close(rowwise.squared_distance64(a, b, order), ((a64 - b64) ** 2).sum(dim=1))


def test_centred_norms_and_weighted_sums(case):
    a, _, order, a64, _ = case
    mean = a64.mean(dim=0)
    _close(rowwise.centred_sq_norms64(a, mean, order), ((a64 - mean) ** 2).sum(dim=1))
    weights = torch.randint(0, 3, (5, a64.shape[0]), generator=torch.Generator().manual_seed(3))
    _close(rowwise.weighted_sum64(weights, a, mean, order), weights.double() @ (a64 - mean))
    _close(rowwise.weighted_sum64(weights, a, order=order), weights.double() @ a64)


def test_projection_of_a_row_does_not_depend_on_its_position():
    # the canonical sample order sorts by this value: equal rows must get equal keys
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(40, 33, generator=generator)
    direction = torch.randn(33, generator=generator, dtype=torch.float64)
    perm = torch.randperm(40, generator=generator)
    assert torch.equal(rowwise.project64(x[perm], direction),
                       rowwise.project64(x, direction)[perm])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_all_finite_agrees_with_the_entrywise_check(dtype):
    big = torch.finfo(dtype).max
    cases = {
        "plain": torch.randn(40, 5),
        "sum overflows, entries finite": torch.full((4, 3), big / 2, dtype=dtype),
        "one nan": torch.randn(40, 5).index_put_((torch.tensor([3]), torch.tensor([2])),
                                                 torch.tensor(float("nan"))),
        "one inf": torch.randn(40, 5).index_put_((torch.tensor([7]), torch.tensor([0])),
                                                 torch.tensor(float("inf"))),
        "+inf and -inf": torch.tensor([[float("inf"), -float("inf")], [1.0, 2.0]]),
        "empty": torch.empty(0, 4),
    }
    for name, x in cases.items():
        x = x.to(dtype)
        assert rowwise.all_finite(x) == bool(torch.isfinite(x).all()), name
    assert rowwise.all_finite(torch.arange(5))  # integers are always finite
