import dataclasses
from typing import Literal, Optional

import pytest

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.typed_yaml import apply_overrides, from_dict, load_config, load_yaml, to_dict


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 0.1
    milestones: tuple[int, ...] = (30, 60)
    kind: Literal["sgd", "adam"] = "sgd"


@dataclasses.dataclass(frozen=True)
class Cfg:
    epochs: int = 3
    name: str = "x"
    amp: bool = False
    data_dir: Optional[str] = None
    optim: Optim = Optim()


def test_roundtrip_and_nested_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\noptim:\n  lr: 0.05\n  milestones: [1, 2]\n")
    cfg = load_config(Cfg, path, ["optim.kind=adam", "amp=true", "data_dir=/data"])
    assert cfg == Cfg(epochs=5, amp=True, data_dir="/data",
                      optim=Optim(lr=0.05, milestones=(1, 2), kind="adam"))
    assert from_dict(Cfg, to_dict(cfg)) == cfg


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(IJCKDError, match=r"unknown config key 'epoch'.*did you mean 'epochs'"):
        from_dict(Cfg, {"epoch": 3})
    with pytest.raises(IJCKDError, match=r"'optim.lrr'.*did you mean 'lr'"):
        from_dict(Cfg, {"optim": {"lrr": 3}})


@pytest.mark.parametrize(("data", "message"), [
    ({"epochs": "many"}, "epochs must be an integer"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"amp": "yes"}, "amp must be true or false"),
    ({"optim": {"kind": "sgdd"}}, "did you mean 'sgd'"),
    ({"optim": 3}, "optim must be a mapping"),
])
def test_type_errors_are_one_line(data, message):
    with pytest.raises(IJCKDError, match=message) as info:
        from_dict(Cfg, data)
    assert "\n" not in str(info.value)


def test_malformed_yaml_says_where(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: [1, 2\nname: x\n")
    with pytest.raises(IJCKDError, match=r"malformed YAML at line \d+"):
        load_yaml(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(IJCKDError, match="must hold a mapping"):
        load_yaml(path)


def test_override_without_equals_is_rejected():
    with pytest.raises(IJCKDError, match="key=value"):
        apply_overrides({}, ["epochs"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_old_method_weight_names_are_read_as_the_new_ones_with_one_warning_each(tmp_path):
    import warnings

    from ijckd_bounds.train import TrainConfig

    path = tmp_path / "old.yaml"
    path.write_text("method:\n  name: ijckd\n  alpha: 2.0\n  beta: 0.5\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(TrainConfig, path)
    assert (cfg.method.logit_weight, cfg.method.feat_weight) == (2.0, 0.5)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert messages == ["config key method.alpha is now method.logit_weight; read as "
                        "method.logit_weight",
                        "config key method.beta is now method.feat_weight; read as "
                        "method.feat_weight"]
    assert all("\n" not in message for message in messages)
    # an override on the command line takes the same road
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert load_config(TrainConfig, None, ["method.beta=3"]).method.feat_weight == 3.0
    with pytest.raises(IJCKDError, match="method.alpha and method.logit_weight are both given"):
        from_dict(TrainConfig, {"method": {"alpha": 1.0, "logit_weight": 2.0}})


def test_a_run_saved_with_the_old_weight_names_resumes_under_the_new_ones():
    from ijckd_bounds.train import TrainConfig
    from ijckd_bounds.train.runner import config_difference

    current = to_dict(from_dict(TrainConfig, {"method": {"name": "ijckd", "logit_weight": 2.0,
                                                         "feat_weight": 0.5}}))
    saved = {**current, "method": {k: v for k, v in current["method"].items()
                                   if k not in ("logit_weight", "feat_weight")}}
    saved["method"].update(alpha=2.0, beta=0.5)
    assert config_difference(saved, current) is None
    saved["method"]["beta"] = 0.25
    assert config_difference(saved, current) == ("method.feat_weight", 0.25, 0.5)
