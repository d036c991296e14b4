"""The fitted-estimator contract of every fitted part of ijckd_bounds.estimators.

scikit-learn's contract: hyperparameters are set in ``__init__`` and nothing else is;
``fit`` returns ``self`` and leaves the hyperparameters as they were; what it learns lives
in attributes whose names end in ``_``; fitting again on the same data gives the same
learned attributes, whatever was fitted before; using an unfitted estimator raises the
package's one error (``IJCKDError``) saying so.
"""

import dataclasses
import inspect

import pytest
import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.probes import (
    DomainClassifier,
    JointClassifier,
    LogisticProbe,
    fit_joint_classifier,
)
from ijckd_bounds.estimators.ridge_connector import RidgeConnector


def _data(seed, n=60, d=5, k=3):
    """Paired teacher features z_t (n, d), student features z_s (n, d), labels y (n,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    means = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    z_t = means[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    z_s = z_t + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    return z_t, z_s, y


# name -> (a new unfitted estimator, fit arguments from _data's output, a use after fit)
ESTIMATORS = {
    "logistic_probe": (lambda: LogisticProbe(l2_grid=(1e-3, 1e-1), max_iter=30),
                       lambda z_t, z_s, y: (z_t, y),
                       lambda est, z: est.logits(z)),
    "logistic_probe_grouped": (lambda: LogisticProbe(l2_grid=(1e-3, 1e-1), max_iter=30),
                               lambda z_t, z_s, y: (torch.cat([z_t, z_s]), y.repeat(2), 3,
                                                    torch.arange(len(y)).repeat(2)),
                               lambda est, z: est.logits(z)),
    "domain_linear": (lambda: DomainClassifier("linear", max_iter=30),
                      lambda z_t, z_s, y: (z_t, z_s),
                      lambda est, z: est.predict_domain(z)),
    "domain_mlp": (lambda: DomainClassifier("mlp", hidden=8, max_iter=20),
                   lambda z_t, z_s, y: (z_t, z_s),
                   lambda est, z: est.predict_domain(z)),
    "ridge_connector": (lambda: RidgeConnector(ridge_grid=(1e-3, 1e-1, 1.0)),
                        lambda z_t, z_s, y: (z_s, z_t),
                        lambda est, z: est.transform(z)),
}
NAMES = sorted(ESTIMATORS)


def _new(name):
    return ESTIMATORS[name][0]()


def _fit(name, estimator, seed=0):
    return estimator.fit(*ESTIMATORS[name][1](*_data(seed)))


def _hyperparameters(estimator):
    names = [p for p in inspect.signature(type(estimator).__init__).parameters if p != "self"]
    return {p: getattr(estimator, p) for p in names}


def _learned(estimator):
    return {k: v for k, v in vars(estimator).items() if k.endswith("_")}


def _assert_same(got, want, where):
    assert type(got) is type(want), where
    if torch.is_tensor(want):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}[{key!r}]")
    else:
        assert got == want, where


def _assert_same_learned(got, want):
    assert _learned(got).keys() == _learned(want).keys()
    for key, value in _learned(want).items():
        _assert_same(getattr(got, key), value, key)


@pytest.mark.parametrize("name", NAMES)
def test_init_sets_only_the_hyperparameters(name):
    estimator = _new(name)
    assert vars(estimator) == _hyperparameters(estimator)


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_and_keeps_the_hyperparameters(name):
    estimator = _new(name)
    before = _hyperparameters(estimator)
    assert _fit(name, estimator) is estimator
    assert _hyperparameters(estimator) == before


@pytest.mark.parametrize("name", NAMES)
def test_what_fit_learns_is_in_attributes_ending_in_underscore(name):
    estimator = _fit(name, _new(name))
    hyperparameters = _hyperparameters(estimator)
    learned = _learned(estimator)
    assert learned, "fit learned nothing"
    public = {k for k in vars(estimator) if not k.startswith("_")}
    assert public == set(hyperparameters) | set(learned)


@pytest.mark.parametrize("name", NAMES)
def test_fitting_twice_equals_fitting_once(name):
    once = _fit(name, _new(name))
    twice = _fit(name, _fit(name, _new(name)))
    _assert_same_learned(twice, once)
    # nothing of an earlier fit on other data survives the next fit
    after_other = _fit(name, _fit(name, _new(name), seed=1))
    _assert_same_learned(after_other, once)
    z = _data(2)[1 if name == "ridge_connector" else 0]
    use = ESTIMATORS[name][2]
    _assert_same(use(after_other, z), use(once, z), "the fitted estimator's output")


@pytest.mark.parametrize("name", NAMES)
def test_an_unfitted_estimator_says_so(name):
    z = _data(0)[0]
    with pytest.raises(IJCKDError, match=r"is not fitted yet; call fit\(\.\.\.\) first"):
        ESTIMATORS[name][2](_new(name), z)


def test_a_domain_classifier_refitted_as_another_kind_keeps_nothing_of_the_first():
    clf = _fit("domain_linear", _new("domain_linear"))
    clf.kind = "mlp"
    clf.hidden, clf.max_iter = 8, 20
    _assert_same_learned(_fit("domain_mlp", clf), _fit("domain_mlp", _new("domain_mlp")))


# The joint classifier is fitted by a function, fit_joint_classifier, that returns a
# frozen JointClassifier: the fitted estimator inside it is a LogisticProbe fitted on the
# union of teacher and student features, the two features of an input kept together.


def _joint_inputs(seed=0):
    z_t, z_s, y = _data(seed)
    teacher = LogisticProbe(l2_grid=(1e-2,), max_iter=30).fit(z_t, y)
    return z_t, z_s, y, teacher.weight_, teacher.bias_


JOINT_PROBE = {"l2_grid": (1e-3, 1e-1), "max_iter": 30}


def test_the_joint_classifier_holds_the_contract_probe_fitted_on_the_union():
    z_t, z_s, y, weight, bias = _joint_inputs()
    joint = fit_joint_classifier(z_t, z_s, y, weight, bias, seed=3, probe_kwargs=JOINT_PROBE)
    probe = LogisticProbe(seed=3, **JOINT_PROBE).fit(
        torch.cat([z_t, z_s]), y.repeat(2), 3, torch.arange(len(y)).repeat(2))
    torch.testing.assert_close(joint.weight, probe.weight_, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(joint.bias, probe.bias_, rtol=1e-12, atol=1e-12)
    assert joint.l2 == probe.l2_


def test_the_joint_classifier_fitted_twice_is_the_same_and_frozen():
    first = fit_joint_classifier(*_joint_inputs(), probe_kwargs=JOINT_PROBE)
    fit_joint_classifier(*_joint_inputs(seed=1), probe_kwargs=JOINT_PROBE)  # other data
    second = fit_joint_classifier(*_joint_inputs(), probe_kwargs=JOINT_PROBE)
    for field in dataclasses.fields(JointClassifier):
        _assert_same(getattr(second, field.name), getattr(first, field.name), field.name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.l2 = 1.0
