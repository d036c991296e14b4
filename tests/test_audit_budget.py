import torch

from ijckd_bounds.estimators.audit import error_budget


def _bern(p, n, gen):
    return torch.rand(n, generator=gen) < p


def test_pieces_sum_exactly_to_the_error_and_intervals_contain_values():
    gen = torch.Generator().manual_seed(1)
    n = 500
    tw, pw, jw, sw = (_bern(p, n, gen) for p in (0.05, 0.10, 0.12, 0.30))
    budget = error_budget(tw, sw, jw, pw, n_bootstrap=300, seed=3)
    assert budget.target == "student_err"
    assert [p.name for p in budget.pieces] == ["teacher", "capacity", "connector", "alignment"]
    total = sum(p.value for p in budget.pieces)
    assert abs(total - sw.double().mean().item()) < 1e-12
    assert abs(budget.total - sw.double().mean().item()) < 1e-12
    for p in budget.pieces:
        assert p.lo <= p.value <= p.hi
    assert budget.diagnosis == "alignment" and not budget.tie


def test_own_head_budget_and_merged_representation_piece():
    gen = torch.Generator().manual_seed(2)
    n = 400
    tw, pw, jw, sw, ow = (_bern(p, n, gen) for p in (0.02, 0.30, 0.32, 0.35, 0.33))
    own = error_budget(tw, sw, jw, pw, own_wrong=ow, n_bootstrap=200)
    assert own.target == "student_own_err"
    assert [p.name for p in own.pieces] == ["teacher", "capacity", "head"]
    assert abs(sum(p.value for p in own.pieces) - ow.double().mean().item()) < 1e-12
    assert own.diagnosis == "capacity"
    merged = error_budget(tw, sw, jw, None, own_features=False, n_bootstrap=200)
    assert [p.name for p in merged.pieces] == ["teacher", "representation", "alignment"]
    assert merged.notes


def test_tie_is_reported_when_intervals_overlap_and_seed_reproduces():
    gen = torch.Generator().manual_seed(3)
    n = 60
    tw = _bern(0.2, n, gen)
    sw = tw | _bern(0.2, n, gen)
    jw = tw.clone()
    a = error_budget(tw, sw, jw, tw, n_bootstrap=200, seed=7)
    b = error_budget(tw, sw, jw, tw, n_bootstrap=200, seed=7)
    assert a == b
    assert a.tie  # teacher vs alignment pieces of similar size on 60 samples
