"""Malformed arrays and configs thrown at ``estimate_bounds``, the feature-file reader and
the config loader: every outcome is a result or an ``IJCKDError`` (one readable line).
Any other exception type is a bug.

Results are checked too: the exact bounds of docs/theory.md never lie below the student error,
and a loaded config survives the round trip through its plain dict.
"""

import math

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators import estimate_bounds, estimate_bounds_from_file
from ijckd_bounds.train import TrainConfig
from ijckd_bounds.typed_yaml import from_dict, load_config, to_dict

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FAST = {"n_bootstrap": 10, "n_permutations": 5}
ARRAYS = ("z_t", "z_s", "y", "weight", "bias", "z_t_fit", "z_s_fit", "y_fit", "s", "s_fit",
          "student_logits")


def _valid_case(seed, n=24, d=3, k=3, d_s=2):
    """Well-formed inputs of every argument (a fit split, own features, own logits)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 3.0
    y = np.arange(2 * n) % k
    z = means[y] + rng.normal(size=(2 * n, d))
    s = z[:, :d_s] + rng.normal(size=(2 * n, d_s))
    return {"z_t": z[:n], "z_s": z[:n] + 0.2 * rng.normal(size=(n, d)), "y": y[:n],
            "weight": means, "bias": np.zeros(k), "z_t_fit": z[n:],
            "z_s_fit": z[n:] + 0.2 * rng.normal(size=(n, d)), "y_fit": y[n:], "s": s[:n],
            "s_fit": s[n:], "student_logits": rng.normal(size=(n, k))}


# ------------------------------------------------------------------ array mutations


def _mutations():
    """name -> function(array, draw) returning the malformed array (or any object)."""
    def rows(a, draw):
        return a[: draw(st.integers(0, max(len(a) - 1, 0)))] if np.ndim(a) else a

    def column(a, draw):
        if np.ndim(a) != 2:
            return np.stack([a, a], axis=-1)
        return a[:, :-1] if draw(st.booleans()) else np.concatenate([a, a[:, :1]], axis=1)

    def non_finite(a, draw):
        a = np.array(a, dtype=np.float64, copy=True)
        if a.size:
            a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(
                [np.nan, np.inf, -np.inf]))
        return a

    def huge(a, draw):
        return np.asarray(a, dtype=np.float64) * draw(st.sampled_from([1e150, 1e300, 1e-300]))

    def dtype(a, draw):
        target = draw(st.sampled_from(["int8", "uint8", "uint16", "int64", "float16",
                                       "float32", "bool", "complex64", "U3", "S2"]))
        with np.errstate(all="ignore"):
            return np.asarray(a).astype(target)

    def dims(a, draw):
        choice = draw(st.sampled_from(["flat", "3d", "scalar", "transpose"]))
        a = np.asarray(a)
        return {"flat": a.reshape(-1), "3d": a[..., None], "scalar": np.float64(1.5),
                "transpose": a.T}[choice]

    def labels(a, draw):
        a = np.asarray(a).copy()
        choice = draw(st.sampled_from(["shift", "negative", "half", "constant", "huge"]))
        if choice == "shift":
            return a + draw(st.integers(1, 5))
        if choice == "negative":
            return a - 1
        if choice == "half":
            return a + 0.5
        if choice == "huge":
            return a + 2**62
        return np.zeros_like(a)

    def constant(a, draw):
        return np.zeros_like(np.asarray(a, dtype=np.float64))

    def duplicate(a, draw):
        a = np.asarray(a).copy()
        if len(a) > 1:
            a[1:] = a[0]
        return a

    def python(a, draw):
        return np.asarray(a).tolist()

    def ragged(a, draw):
        return [[1.0, 2.0], [3.0]]

    def junk(a, draw):
        return draw(st.one_of(st.none(), st.text(max_size=3), st.integers(), st.floats(),
                              st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                              hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(
                                  min_dims=0, max_dims=3, min_side=0, max_side=4))))

    def tensor(a, draw):
        return torch.as_tensor(np.asarray(a, dtype=np.float32)).requires_grad_(
            draw(st.booleans()))

    return {f.__name__: f for f in (rows, column, non_finite, huge, dtype, dims, labels,
                                    constant, duplicate, python, ragged, junk, tensor)}


MUTATIONS = _mutations()

BAD_KWARGS = {
    "level": [0, 1, 1.5, -0.1, "0.95", math.nan, True, 0.5],
    "n_bootstrap": [0, -1, 2.5, True, "10", 3],
    "n_permutations": [0, -3, 1.0, None, 2],
    "seed": [-1, 2**70, 1.5, "0", np.int64(3)],
    "mmd_max_n": [0, 5, 10, 12, -1, 1e3],
    "fit_fraction": [0, 1, 0.99, math.nan, "half", 0.3],
    "device": ["cpu", "bogus", "cuda", "cuda:7", 3, "meta"],
    "fit": ["fit", (1, 2), {"z_t": 1}, [], None],
}


@st.composite
def malformed_calls(draw):
    arrays = _valid_case(draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(ARRAYS))
        mutation = draw(st.sampled_from(sorted(MUTATIONS)))
        try:
            arrays[key] = MUTATIONS[mutation](arrays[key], draw)
        except (TypeError, ValueError, IndexError):
            pass  # the mutation does not apply to what an earlier one left
    kwargs = dict(FAST)
    for name in draw(st.lists(st.sampled_from(sorted(BAD_KWARGS)), max_size=2, unique=True)):
        kwargs[name] = draw(st.sampled_from(BAD_KWARGS[name]))
    if "fit" not in kwargs and not draw(st.integers(0, 5)) == 0:
        kwargs["fit"] = (arrays["z_t_fit"], arrays["z_s_fit"], arrays["y_fit"])
    else:  # no fit split: the samples are split, s_fit has no place
        arrays["s_fit"] = None
    if draw(st.integers(0, 3)) > 0:  # own features come as a pair, now and then not
        kwargs.update(s=arrays["s"], s_fit=arrays["s_fit"])
    elif draw(st.booleans()):
        kwargs[draw(st.sampled_from(["s", "s_fit"]))] = arrays["s"]
    if draw(st.booleans()):
        kwargs["student_logits"] = arrays["student_logits"]
    return (arrays["z_t"], arrays["z_s"], arrays["y"], arrays["weight"], arrays["bias"]), kwargs


def _check_report(report):
    row = report.row()
    assert set(row) == set(schema.ESTIMATE_COLUMNS)
    for bound in schema.EXACT_BOUNDS:
        assert row[bound] >= row["student_err"] - 1e-12, bound


@FUZZ
@given(call=malformed_calls())
def test_estimate_bounds_gives_a_result_or_ijckd_error(call):
    args, kwargs = call
    try:
        report = estimate_bounds(*args, **kwargs)
    except IJCKDError as exc:  # a clear refusal is an allowed outcome of a fuzzed input
        assert "\n" not in str(exc) and str(exc)  # noqa: PT017
        return
    _check_report(report)


def test_valid_case_is_a_result():
    """The unmutated case works, so the fuzz above exercises the checks, not a typo."""
    arrays = _valid_case(0)
    report = estimate_bounds(arrays["z_t"], arrays["z_s"], arrays["y"], arrays["weight"],
                             arrays["bias"], fit=(arrays["z_t_fit"], arrays["z_s_fit"],
                                                  arrays["y_fit"]),
                             s=arrays["s"], s_fit=arrays["s_fit"],
                             student_logits=arrays["student_logits"], **FAST)
    _check_report(report)


@pytest.mark.parametrize(("device", "message"), [
    ("bogus", "`device` must name a torch device"),
    ("cuda:7" if torch.cuda.device_count() < 8 else "cuda:99", "`device`"),
])
def test_unusable_device_is_a_user_error(device, message):
    arrays = _valid_case(0)
    with pytest.raises(IJCKDError, match=message):
        estimate_bounds(arrays["z_t"], arrays["z_s"], arrays["y"], arrays["weight"],
                        arrays["bias"], device=device, **FAST)


# --------------------------------------------------------------------- feature files


@st.composite
def feature_files(draw):
    arrays = {k: v for k, v in _valid_case(draw(st.integers(0, 3))).items()
              if draw(st.integers(0, 9)) > 0}  # now and then an array goes missing
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(ARRAYS + ("extra",)))
        arrays[key] = draw(hnp.arrays(
            st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes(),
                      hnp.byte_string_dtypes()),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
    return arrays


@FUZZ
@given(arrays=feature_files())
def test_feature_files_give_a_result_or_ijckd_error(arrays, tmp_path):
    path = tmp_path / "features.npz"
    np.savez(path, **arrays)
    try:
        report = estimate_bounds_from_file(path, **FAST)
    except IJCKDError as exc:  # a clear refusal is an allowed outcome of a fuzzed input
        assert "\n" not in str(exc) and str(exc)  # noqa: PT017
        return
    _check_report(report)


# -------------------------------------------------------------------------- configs

SECTIONS = {"data": ("name", "seed", "data_dir", "options", "batch_size", "eval_batch_size",
                     "num_workers"),
            "model": ("teacher", "student", "teacher_options", "student_options",
                      "teacher_checkpoint"),
            "optim": ("name", "lr", "momentum", "nesterov", "weight_decay", "epochs",
                      "schedule", "milestones", "gamma"),
            "method": ("name", "ce_weight", "kl_weight", "alpha", "beta", "temperature",
                       "reduction"),
            "run": ("run_dir", "seed", "ckpt_every", "device", "amp", "channels_last",
                    "sync_bn", "progress")}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["sgd", "adam", "cosine", "multistep", "1e-3", "bf16",
                                     "kd", "digits", "0.1"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


@st.composite
def config_dicts(draw):
    config = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS) + ["optimizer", "trak"]),
                                 max_size=4, unique=True)):
        if draw(st.integers(0, 6)) == 0:
            config[section] = draw(values)  # a section that is not a mapping
            continue
        fields = SECTIONS.get(section, ("lr",))
        body = {}
        for name in draw(st.lists(st.sampled_from(fields + ("lrr", "epoch", "")), max_size=4,
                                  unique=True)):
            body[name] = draw(values)
        config[section] = body
    return config


def _loaded_or_user_error(load):
    try:
        cfg = load()
    except IJCKDError as exc:  # a clear refusal is an allowed outcome of a fuzzed input
        assert "\n" not in str(exc) and str(exc)  # noqa: PT017
        return None
    assert isinstance(cfg, TrainConfig)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg  # the round trip a checkpoint makes
    return cfg


@FUZZ
@given(config=config_dicts())
def test_config_files_load_or_fail_with_ijckd_error(config, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    _loaded_or_user_error(lambda: load_config(TrainConfig, path))


@FUZZ
@given(text=st.text(max_size=60), raw=st.binary(max_size=30))
def test_arbitrary_text_as_config_loads_or_fails_with_ijckd_error(text, raw, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    _loaded_or_user_error(lambda: load_config(TrainConfig, path))
    path.write_bytes(raw)
    _loaded_or_user_error(lambda: load_config(TrainConfig, path))


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 3000, "nests lists or mappings too deeply"),
    ("a: " + "{b: " * 2000, "nests lists or mappings too deeply"),
    ("!!python/object/apply:os.system ['echo pwned']", "is malformed YAML"),
    ("data: &a [*a]", "data must be a mapping"),
    ("\ufeffoptim: {lr: 1e-3}", None),  # a byte-order mark and an exponent without a dot
])
def test_hostile_yaml(text, message, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    if message is None:
        assert load_config(TrainConfig, path).optim.lr == 1e-3
        return
    with pytest.raises(IJCKDError, match=message):
        load_config(TrainConfig, path)


override_keys = st.sampled_from([f"{s}.{f}" for s, fs in SECTIONS.items() for f in fs]
                                + ["optim", "optim.lr.x", "lr", "", ".", "optim..lr"])


@FUZZ
@given(overrides=st.lists(st.one_of(
    st.tuples(override_keys, st.text(max_size=12)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=12)), max_size=4))
def test_overrides_load_or_fail_with_ijckd_error(overrides):
    _loaded_or_user_error(lambda: load_config(TrainConfig, None, overrides))
