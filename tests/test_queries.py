"""Probabilistic queries (issue 18): the classifier's score_samples, marginal densities with NaN."""

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.exceptions import NotFittedError

from sklearn_ugmm import UGMMClassifier
from sklearn_ugmm._objectives import label_values

FAST = dict(hidden_layer_sizes=(8,), max_iter=15, random_state=0, n_iter_no_change=np.inf)


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)



def _reference_classifier_scores(clf, X):
    """log sum over the classes of exp(score), straight through a float64 copy of the module."""
    module = copy.deepcopy(clf.module_).double().eval()
    Xs = torch.as_tensor(clf.scaler_.transform(X), dtype=torch.float64)
    with torch.no_grad():
        if clf.objective == "discriminative":
            scores = module(Xs)
        else:
            labels = label_values(len(clf.classes_))
            columns = [module(torch.cat([Xs, torch.full((len(Xs), 1), float(v), dtype=Xs.dtype)], dim=1))[:, 0]
                       for v in labels]
            scores = torch.stack(columns, dim=1)
    return torch.logsumexp(scores, dim=1).numpy()


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_classifier_score_samples_matches_the_module(iris, objective):
    X, y = iris
    clf = UGMMClassifier(objective=objective, **FAST).fit(X, y)
    scores = clf.score_samples(X)
    assert scores.shape == (len(X),) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, _reference_classifier_scores(clf, X), rtol=1e-10, atol=1e-10)
    # the class probabilities are the scores' softmax: log p(c | x) = score_c - score_samples
    log_proba = clf.predict_log_proba(X)
    np.testing.assert_allclose(np.exp(log_proba).sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_classifier_score_samples_is_batched_and_row_independent(iris, objective):
    X, y = iris
    clf = UGMMClassifier(objective=objective, **FAST).fit(X, y)
    full = clf.score_samples(X)
    big = np.repeat(X, 30, axis=0)  # 4500 rows: two inference batches
    np.testing.assert_allclose(clf.score_samples(big)[::30], full, rtol=1e-12, atol=1e-12)
    order = np.random.RandomState(0).permutation(len(X))
    np.testing.assert_allclose(clf.score_samples(X[order]), full[order], rtol=1e-12, atol=1e-12)


def test_classifier_score_samples_ranks_far_inputs_below_training_inputs(iris):
    X, y = iris
    clf = UGMMClassifier(**FAST).fit(X, y)
    far = X[:20] + 20 * X.std(axis=0)
    assert clf.score_samples(far).max() < np.quantile(clf.score_samples(X), 0.01)


def test_label_smoothing_trades_score_samples_for_the_largest_probability_as_a_novelty_score():
    # digits 0-4 known, 5-9 unseen (bench_ood.py's digits case, one seed): what the docs advise
    from sklearn.datasets import load_digits
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    known = y_train < 5
    smoothed = UGMMClassifier(random_state=0).fit(X_train[known], y_train[known])
    plain = UGMMClassifier(label_smoothing=0, random_state=0).fit(X_train[known], y_train[known])
    assert smoothed.resolved_params_["label_smoothing"] == 0.1
    inside = y_test < 5

    def auroc(score):
        return roc_auc_score(inside, score)

    unsmoothed_score = auroc(plain.score_samples(X_test))
    # measured: 0.904 without smoothing, 0.662 with it; the largest probability 0.948 with it
    assert unsmoothed_score > 0.88
    assert auroc(smoothed.score_samples(X_test)) < unsmoothed_score - 0.15
    assert auroc(smoothed.predict_proba(X_test).max(axis=1)) > 0.93


def test_classifier_score_samples_checks_fitted_and_input(iris):
    X, y = iris
    with pytest.raises(NotFittedError):
        UGMMClassifier().score_samples(X)
    clf = UGMMClassifier(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        clf.score_samples(X[:, :3])


# ---------------------------------------------------------------- density: marginals with NaN
DENSITY_FAST = dict(hidden_layer_sizes=(8,), max_iter=30, random_state=0, n_iter_no_change=np.inf)


def _skewed_3d(n=300, seed=0):
    rng = np.random.RandomState(seed)
    a = rng.normal(size=n)
    b = 0.8 * a + 0.6 * np.abs(rng.normal(size=n))
    c = np.where(rng.rand(n) < 0.4, -1.5, 1.0) + 0.5 * b + 0.3 * rng.normal(size=n)
    return np.column_stack([10.0 + 3.0 * a, -5.0 + 0.1 * b, c])


def _grid(column, n_points):
    return np.linspace(column.mean() - 10 * column.std(), column.mean() + 10 * column.std(), n_points)


def _integrated_log_density(est, point, axes, grids):
    """log of the full density at ``point`` integrated numerically over the features ``axes``."""
    mesh = np.meshgrid(*grids, indexing="ij")
    rows = np.repeat(np.asarray(point, dtype=np.float64)[None, :], mesh[0].size, axis=0)
    for axis, values in zip(axes, mesh):
        rows[:, axis] = values.ravel()
    density = np.exp(est.score_samples(rows)).reshape(mesh[0].shape)
    for grid in reversed(grids):
        density = np.trapezoid(density, grid, axis=-1)
    return np.log(density)


@pytest.mark.parametrize("order", [None, [1, 0]])
def test_density_marginal_matches_numerical_integration_in_2d(order):
    from sklearn_ugmm import UGMMDensityEstimator

    X = _skewed_3d()[:, :2]
    est = UGMMDensityEstimator(order=order, **DENSITY_FAST).fit(X)
    last = 1 if order is None else 0  # the variable that comes last in the order
    points = X[:5].copy()
    queries = points.copy()
    queries[:, last] = np.nan
    expected = [_integrated_log_density(est, p, [last], [_grid(X[:, last], 4001)]) for p in points]
    np.testing.assert_allclose(est.score_samples(queries), expected, atol=1e-6)


def test_density_marginal_matches_numerical_integration_in_3d():
    from sklearn_ugmm import UGMMDensityEstimator

    X = _skewed_3d()
    est = UGMMDensityEstimator(**DENSITY_FAST).fit(X)
    points = X[:3]
    one_missing, two_missing = points.copy(), points.copy()
    one_missing[:, 2] = np.nan
    two_missing[:, 1:] = np.nan
    expected_one = [_integrated_log_density(est, p, [2], [_grid(X[:, 2], 4001)]) for p in points]
    grids = [_grid(X[:, 1], 301), _grid(X[:, 2], 301)]
    expected_two = [_integrated_log_density(est, p, [1, 2], grids) for p in points]
    np.testing.assert_allclose(est.score_samples(one_missing), expected_one, atol=1e-6)
    np.testing.assert_allclose(est.score_samples(two_missing), expected_two, atol=1e-6)


def test_density_rows_without_nan_are_unchanged_and_all_missing_scores_zero():
    from sklearn_ugmm import UGMMDensityEstimator

    X = _skewed_3d()
    est = UGMMDensityEstimator(**DENSITY_FAST).fit(X)
    full = est.score_samples(X)
    mixed = X.copy()
    mixed[::3, 2] = np.nan
    mixed[1::3, 1:] = np.nan
    scores = est.score_samples(mixed)
    # rows 2, 5, 8, ... are complete: bit for bit what they score without NaN in the batch
    np.testing.assert_array_equal(scores[2::3], full[2::3])
    # the incomplete rows score their marginals, not the full density
    assert np.all(scores[::3] != full[::3]) and np.all(scores[1::3] != full[1::3])
    assert est.score_samples(np.full((2, 3), np.nan)).tolist() == [0.0, 0.0]


def test_density_marginal_is_the_sum_of_leading_conditionals():
    from sklearn_ugmm import UGMMDensityEstimator

    X = _skewed_3d()
    est = UGMMDensityEstimator(order=[2, 0, 1], **DENSITY_FAST).fit(X)
    module = copy.deepcopy(est.module_).double().eval()
    Xs = torch.as_tensor(est.scaler_.transform(X[:20]), dtype=torch.float64)
    with torch.no_grad():
        conditionals = module.log_prob_conditionals(Xs).numpy()  # in the order 2, 0, 1
    log_scale = np.log(est.scaler_.scale_)
    queries = X[:20].copy()
    queries[:, 1] = np.nan  # the last variable of the order
    expected = conditionals[:, :2].sum(axis=1) - log_scale[2] - log_scale[0]
    np.testing.assert_allclose(est.score_samples(queries), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order, missing_column", [(None, 0), (None, 1), ([2, 0, 1], 2), ([2, 0, 1], 0)])
def test_density_unsupported_missing_patterns_raise(order, missing_column):
    from sklearn_ugmm import UGMMDensityEstimator

    X = _skewed_3d()
    est = UGMMDensityEstimator(order=order, **DENSITY_FAST).fit(X)
    queries = X[:4].copy()
    queries[2, missing_column] = np.nan
    with pytest.raises(ValueError, match=r"come after its observed ones in the variable order.*Sample 2"):
        est.score_samples(queries)


def test_density_fit_still_rejects_nan_and_inf_is_rejected_at_score_time():
    from sklearn_ugmm import UGMMDensityEstimator

    X = _skewed_3d()
    X_nan = X.copy()
    X_nan[0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        UGMMDensityEstimator(**DENSITY_FAST).fit(X_nan)
    est = UGMMDensityEstimator(**DENSITY_FAST).fit(X)
    assert not est.__sklearn_tags__().input_tags.allow_nan
    X_inf = X[:3].copy()
    X_inf[0, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        est.score_samples(X_inf)


def test_module_marginal_log_prob_refuses_unsupported_patterns():
    from sklearn_ugmm.nn import AutoregressiveUGMM

    model = AutoregressiveUGMM(3, (8,), order=[1, 2, 0]).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    suffix_missing = x.clone()
    suffix_missing[:, 0] = float("nan")  # last in the order
    conditionals = model.log_prob_conditionals(x)
    torch.testing.assert_close(model.marginal_log_prob(suffix_missing), conditionals[:, :2].sum(dim=1))
    torch.testing.assert_close(model.marginal_log_prob(x), model.log_prob(x), rtol=0, atol=0)
    x[1, 2] = float("nan")  # second in the order, before the observed x_0
    with pytest.raises(ValueError, match="come after all its observed ones"):
        model.marginal_log_prob(x)


# ---------------------------------------------------------------- missing inputs in the uGMM layers
def _dropped_component_reference(layer, x, observed):
    """Each neuron's mixture with the missing inputs' components removed and the rest renormalised, row by row."""
    loc, scale, logits = layer.component_loc.detach(), layer.scale.detach(), layer.logits.detach()
    rows = []
    for b in range(x.shape[0]):
        k = torch.nonzero(observed[b]).reshape(-1)
        log_w = torch.log_softmax(logits[:, k], dim=1)  # the weights renormalised over the observed inputs
        normal = torch.distributions.Normal(loc[:, k], scale[:, k])
        rows.append(torch.logsumexp(log_w + normal.log_prob(x[b, k]), dim=1))
    return torch.stack(rows)


def _with_missing(shape, fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    missing = torch.rand(shape, generator=generator) < fraction
    missing[:, 0] &= missing[:, 1:].all(dim=1).logical_not()  # every row keeps an input
    missing[0] = False  # one complete row
    return x.masked_fill(missing, float("nan")), ~missing


@pytest.mark.parametrize("tie_means", [False, True])
def test_layer_forward_observed_matches_the_dropped_component_formula(tie_means):
    from sklearn_ugmm.nn import UGMMLayer

    layer = UGMMLayer(6, 4, tie_means=tie_means, generator=torch.Generator().manual_seed(0)).double().eval()
    with torch.no_grad():
        layer.logits.copy_(torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    x, observed = _with_missing((40, 6), 0.4, seed=2)
    out = layer.forward_observed(x, observed)
    torch.testing.assert_close(out, _dropped_component_reference(layer, x, observed), rtol=1e-12, atol=1e-12)
    # the complete rows are exactly the layer's ordinary output on them
    complete = observed.all(dim=1)
    assert torch.equal(out[complete], layer(x[complete]))


def test_net_forward_with_nan_is_the_dropped_component_first_layer_then_the_rest():
    from sklearn_ugmm.nn import UGMMNet

    net = UGMMNet(5, (7,), 3, generator=torch.Generator().manual_seed(0)).double().eval()
    x, observed = _with_missing((30, 5), 0.3, seed=3)
    first = _dropped_component_reference(net.layers[0], x, observed)
    expected = net.layers[1](first)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)
        complete = observed.all(dim=1)
        torch.testing.assert_close(net(x)[complete], net(x[complete]), rtol=1e-13, atol=1e-13)


def test_forward_observed_gradients_and_training_dropout():
    from sklearn_ugmm.nn import UGMMNet

    net = UGMMNet(4, (5,), 2, dropout=0.5, generator=torch.Generator().manual_seed(0)).double()
    x, observed = _with_missing((12, 4), 0.5, seed=4)
    net.eval()
    first = net.layers[0]
    torch.autograd.gradcheck(
        lambda loc, logits: _layer_with(first, loc, logits, x, observed),
        (first.loc.detach().clone().requires_grad_(), first.logits.detach().clone().requires_grad_()),
    )
    net.train()  # dropout may remove every observed component of a neuron: it then keeps them all
    for _ in range(20):
        out = net(x)
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def _layer_with(layer, loc, logits, x, observed):
    from sklearn_ugmm.nn import ugmm_observed_parts

    keep = observed[:, None, :]
    numerator, log_mass = ugmm_observed_parts(x, keep, loc, layer.scale, torch.log_softmax(logits, dim=1))
    return numerator - log_mass


def test_score_states_with_nan_matches_forward_with_the_state_filled_in():
    from sklearn_ugmm.nn import UGMMNet

    net = UGMMNet(4, (6,), 1, generator=torch.Generator().manual_seed(0)).double().eval()
    x, _ = _with_missing((25, 4), 0.3, seed=5)
    x[:, 3] = 0.0  # the state column is never missing
    states = torch.tensor([-1.0, 0.0, 1.5], dtype=torch.float64)
    with torch.no_grad():
        scores = net.score_states(x, index=3, states=states)
        for s, value in enumerate(states):
            filled = x.clone()
            filled[:, 3] = value
            torch.testing.assert_close(scores[:, s], net(filled)[:, 0], rtol=1e-10, atol=1e-10)


def test_forward_observed_needs_an_observed_input_per_row():
    from sklearn_ugmm.nn import UGMMLayer

    layer = UGMMLayer(3, 2)
    x = torch.tensor([[1.0, float("nan"), 2.0], [float("nan")] * 3])
    with pytest.raises(ValueError, match="at least one observed input"):
        layer.forward_observed(x, ~torch.isnan(x))


# ---------------------------------------------------------------- missing values in UGMMClassifier
def _reference_scores_with_missing(clf, X):
    """Per-class scores: the dropped-component first layer (row by row), then the other layers, in float64."""
    module = copy.deepcopy(clf.module_).double().eval()
    Xs = torch.as_tensor(clf.scaler_.transform(X), dtype=torch.float64)

    def network(inputs):
        h = _dropped_component_reference(module.layers[0], inputs, ~torch.isnan(inputs))
        for layer in module.layers[1:]:
            h = layer(h)
        return h

    with torch.no_grad():
        if clf.objective == "discriminative":
            return network(Xs).numpy()
        labels = label_values(len(clf.classes_))
        columns = [network(torch.cat([Xs, torch.full((len(Xs), 1), float(v), dtype=Xs.dtype)], dim=1))[:, 0]
                   for v in labels]
        return torch.stack(columns, dim=1).numpy()


def _holes(X, fraction, seed):
    rng = np.random.RandomState(seed)
    X = X.astype(np.float64).copy()
    X[rng.rand(*X.shape) < fraction] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 1.0  # every row keeps a feature
    return X


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_classifier_fits_and_predicts_with_missing_values(iris, objective):
    X, y = iris
    X_train = _holes(X, 0.3, seed=0)
    # label smoothing (the discriminative default) trains more slowly: at 15 epochs model seeds 0-4
    # score 0.80-0.87 on these holes (0.83-0.93 without it), at 60 epochs 0.91-0.92 (0.85-0.93)
    options = dict(FAST, max_iter=60) if objective == "discriminative" else FAST
    clf = UGMMClassifier(objective=objective, **options).fit(X_train, y)
    assert clf.__sklearn_tags__().input_tags.allow_nan
    X_test = _holes(X, 0.3, seed=1)
    scores = _reference_scores_with_missing(clf, X_test)
    # the probabilities are those of the class scores times the fitted temperature; score_samples has none
    tempered = clf.temperature_ * scores
    log_proba = clf.predict_log_proba(X_test)
    np.testing.assert_allclose(log_proba, tempered - np.logaddexp.reduce(tempered, axis=1)[:, None], atol=1e-9)
    np.testing.assert_allclose(clf.score_samples(X_test), np.logaddexp.reduce(scores, axis=1), atol=1e-9)
    np.testing.assert_allclose(clf.predict_proba(X_test).sum(axis=1), 1.0)
    if objective == "discriminative":  # (the generative one is no classifier after 15 epochs of 8 neurons)
        assert clf.score(X_test, y) > 0.85
    # complete rows score as they do without NaN rows in the batch
    complete = ~np.isnan(X_test).any(axis=1)
    np.testing.assert_allclose(log_proba[complete], clf.predict_log_proba(X_test[complete]), atol=1e-12)


def test_classifier_scaler_ignores_missing_values(iris):
    X, y = iris
    X_train = _holes(X, 0.3, seed=0)
    clf = UGMMClassifier(standardize=True, **FAST).fit(X_train, y)
    np.testing.assert_allclose(clf.scaler_.mean_, np.nanmean(X_train, axis=0))
    np.testing.assert_allclose(clf.scaler_.scale_, np.nanstd(X_train, axis=0))
    assert np.all(np.isnan(clf.scaler_.transform(X_train)) == np.isnan(X_train))


def test_classifier_rejects_rows_without_any_observed_feature(iris):
    X, y = iris
    clf = UGMMClassifier(**FAST).fit(X, y)
    X_test = X[:3].copy()
    X_test[1] = np.nan
    with pytest.raises(ValueError, match=r"Sample\(s\) \[1\] have only missing values"):
        clf.predict(X_test)
    with pytest.raises(ValueError, match="no observed"):
        X_bad = X.copy()
        X_bad[:, 2] = np.nan
        X_bad[:, 0] = 1.0
        UGMMClassifier(**FAST).fit(X_bad, y)


def test_classifier_fitted_with_missing_values_round_trips_through_save_and_load(iris, tmp_path):
    from sklearn_ugmm import load_model, save_model

    X, y = iris
    X_train = _holes(X, 0.3, seed=0)
    clf = UGMMClassifier(**FAST).fit(X_train, y)
    path = tmp_path / "model.ugmm"
    save_model(clf, path)
    restored = load_model(path)
    X_test = _holes(X, 0.3, seed=1)
    np.testing.assert_array_equal(restored.predict_proba(X_test), clf.predict_proba(X_test))
    np.testing.assert_array_equal(restored.score_samples(X_test), clf.score_samples(X_test))


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_classifier_partial_fit_and_dropout_train_on_missing_values(iris, objective):
    X, y = iris
    X_train = _holes(X, 0.4, seed=3)
    clf = UGMMClassifier(objective=objective, dropout=0.3, **FAST)
    clf.partial_fit(X_train, y, classes=np.unique(y))
    clf.partial_fit(X_train, y)
    assert clf.n_iter_ == 2 and np.all(np.isfinite(clf.loss_curve_))
    assert np.all(np.isfinite(clf.predict_log_proba(X_train)))


# ---------------------------------------------------------------- missingness-aware training: input_dropout
def _spy_first_layer(net, seen):
    original = net.layers[0].forward_observed

    def spy(x, observed):
        seen.append(observed.clone())
        return original(x, observed)

    net.layers[0].forward_observed = spy


def test_input_dropout_drops_first_layer_inputs_in_training_only():
    from sklearn_ugmm.nn import UGMMNet

    net = UGMMNet(6, (5,), 3, generator=torch.Generator().manual_seed(0))
    net.set_input_dropout(0.5)
    seen, later = [], []
    _spy_first_layer(net, seen)
    net.layers[1].register_forward_pre_hook(lambda module, args: later.append(args[0].clone()))
    x = torch.randn(400, 6)
    x[0, 2] = float("nan")
    net.train()
    out = net(x)
    assert len(seen) == 1 and torch.isfinite(out).all()
    observed = seen[0]
    assert not observed[0, 2]  # a missing entry stays missing
    assert observed.any(dim=1).all()  # every row keeps an input
    assert 0.4 < 1 - observed.float().mean() < 0.6  # about half the entries dropped
    # the hidden layer gets complete activations: nothing is dropped after the first layer
    assert torch.isfinite(later[0]).all()
    # the dropped entries are handled exactly like NaN
    x_nan = x.masked_fill(~observed, float("nan"))
    net.eval()
    torch.testing.assert_close(net.layers[0].forward_observed(x_nan, observed), later[0])
    # eval mode (inference): nothing dropped, the complete rows take the plain forward
    seen.clear()
    complete = torch.randn(50, 6)
    expected = net.layers[1](net.layers[0](complete))
    torch.testing.assert_close(net(complete), expected)
    assert seen == []


def test_input_dropout_spares_inputs_after_n_inputs_and_reproduces_with_the_generator():
    from sklearn_ugmm.nn import UGMMNet

    masks = []
    for _ in range(2):
        net = UGMMNet(4, (3,), 1, generator=torch.Generator().manual_seed(1)).set_input_dropout(0.9, n_inputs=3)
        net.set_generator(torch.Generator().manual_seed(7))
        seen = []
        _spy_first_layer(net, seen)
        net.train()
        net(torch.randn(300, 4))
        masks.append(seen[0])
    assert masks[0][:, 3].all()  # the label input is never dropped
    assert (~masks[0][:, :3]).float().mean() > 0.6
    # every row keeps one feature: the label alone is not a row (it was at rate 0.9 for 73% of rows)
    assert masks[0][:, :3].any(dim=1).all()
    assert torch.equal(masks[0], masks[1])
    # rows with one observed feature keep it
    net = UGMMNet(4, (3,), 1, generator=torch.Generator().manual_seed(1)).set_input_dropout(0.5, n_inputs=3)
    seen = []
    _spy_first_layer(net, seen)
    net.train()
    x = torch.randn(300, 4)
    x[:, 1:3] = float("nan")
    net(x)
    assert seen[0][:, 0].all()
    with pytest.raises(ValueError, match="input dropout"):
        UGMMNet(4, (3,), 1).set_input_dropout(1.0)


def test_classifier_input_dropout_auto_is_the_training_missing_fraction(iris):
    X, y = iris
    complete = UGMMClassifier(**dict(FAST, max_iter=2, early_stopping=False)).fit(X, y)
    assert complete.resolved_params_["input_dropout"] == 0.0 and complete.module_.input_dropout == 0.0
    X_holes = _holes(X, 0.3, seed=0)
    clf = UGMMClassifier(**dict(FAST, max_iter=2, early_stopping=False)).fit(X_holes, y)
    assert clf.input_dropout == "auto"  # the parameter is left as given
    assert clf.resolved_params_["input_dropout"] == pytest.approx(np.isnan(X_holes).mean())
    assert clf.module_.input_dropout == clf.resolved_params_["input_dropout"] > 0.2
    fixed = UGMMClassifier(input_dropout=0.4, objective="generative", **dict(FAST, max_iter=2)).fit(X, y)
    assert fixed.resolved_params_["input_dropout"] == 0.4
    assert fixed.module_.input_dropout_inputs == X.shape[1]  # not the generative label input
    with pytest.raises(ValueError, match="input_dropout"):
        UGMMClassifier(input_dropout=1.0).fit(X, y)


def test_classifier_input_dropout_is_reproducible_and_leaves_global_rng_alone(iris):
    X, y = iris
    params = dict(FAST, input_dropout=0.3)
    state = torch.get_rng_state()
    first = UGMMClassifier(**params).fit(X, y).predict_proba(X)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(UGMMClassifier(**params).fit(X, y).predict_proba(X), first)
    without = UGMMClassifier(**FAST).fit(X, y).predict_proba(X)
    assert not np.allclose(without, first)  # the dropout changed training
    other_seed = UGMMClassifier(**dict(params, random_state=1)).fit(X, y).predict_proba(X)
    assert not np.allclose(other_seed, first)


# the model without input dropout trains to max_iter on wine with the defaults (its validation loss keeps improving)
@pytest.mark.filterwarnings("ignore:Stochastic optimizer:sklearn.exceptions.ConvergenceWarning")
def test_classifier_input_dropout_helps_with_missing_test_entries():
    # wine, trained on complete rows, scored with 40% of the test entries missing
    from sklearn.datasets import load_wine
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    X, y = load_wine(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    X_test = _holes(X_test, 0.4, seed=2)
    seeds = (0, 1, 2)
    plain = [UGMMClassifier(random_state=seed).fit(X_train, y_train) for seed in seeds]
    aware = [UGMMClassifier(input_dropout=0.4, random_state=seed).fit(X_train, y_train) for seed in seeds]
    # measured over model seeds 0-2 (defaults of 0fc5fcd, mixture outputs): accuracy 0.835 -> 0.948,
    # log-loss 0.429 -> 0.171; with the product outputs of f06aa69: 0.869 -> 0.940, 0.427 -> 0.167;
    # with label smoothing and its temperature (the defaults since then) the plain network already
    # copes better with the holes: 0.906 -> 0.925, log-loss 0.244 -> 0.172
    accuracy = [np.mean([model.score(X_test, y_test) for model in models]) for models in (plain, aware)]
    loss = [np.mean([log_loss(y_test, model.predict_proba(X_test)) for model in models]) for models in (plain, aware)]
    assert accuracy[1] > accuracy[0] + 0.01
    assert loss[1] < 0.8 * loss[0]


def test_missing_fraction_counts_nan_and_missing_raw_categories():
    from sklearn_ugmm._classifier import missing_fraction

    assert missing_fraction(np.array([[1.0, np.nan], [np.nan, np.nan]])) == 0.75
    assert missing_fraction(np.array([["a", None], [np.nan, "b"]], dtype=object)) == 0.5
    assert missing_fraction(np.ones((3, 2))) == 0.0


def test_classifier_input_dropout_survives_save_and_load(iris, tmp_path):
    from sklearn_ugmm import load_model, save_model

    X, y = iris
    clf = UGMMClassifier(input_dropout=0.3, **FAST).fit(X, y)
    save_model(clf, tmp_path / "model.ugmm")
    restored = load_model(tmp_path / "model.ugmm")
    assert restored.resolved_params_["input_dropout"] == 0.3 and restored.module_.input_dropout == 0.3
    # continued training draws the same input-dropout masks from the restored generator
    clf.partial_fit(X, y)
    restored.partial_fit(X, y)
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
