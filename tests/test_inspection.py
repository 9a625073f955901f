"""Tests of sklearn_ugmm.inspection: artists, their data, labels and errors."""

import sys

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.datasets import load_iris
from sklearn.exceptions import NotFittedError

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator, load_model, save_model  # noqa: E402
from sklearn_ugmm._objectives import label_values  # noqa: E402
from sklearn_ugmm.inspection import LayerDisplay, NeuronDisplay, TrainingCurveDisplay  # noqa: E402
from sklearn_ugmm.nn import UGMMProductLayer  # noqa: E402



@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True, as_frame=True)


@pytest.fixture(scope="module")
def clf(iris):
    X, y = iris
    return UGMMClassifier(hidden_layer_sizes=(6, 5), max_iter=8, n_iter_no_change=np.inf, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def tied_clf(iris):
    X, y = iris
    return UGMMClassifier(hidden_layer_sizes=(5,), tie_means=True, max_iter=5, n_iter_no_change=np.inf, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def generative_clf(iris):
    X, y = iris
    return UGMMClassifier(hidden_layer_sizes=(5,), objective="generative", max_iter=5, n_iter_no_change=np.inf, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def density():
    X = np.random.RandomState(0).normal(size=(150, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0, 0, 1]])
    est = UGMMDensityEstimator(hidden_layer_sizes=(6, 4), order=[2, 0, 1], max_iter=5, n_iter_no_change=np.inf, random_state=0).fit(X)
    return est, X


def _mixture(grid, loc, scale, weight):
    return np.sum(weight[None] * norm.pdf(grid[:, None], loc[None], scale[None]), axis=1)


def _product(grid, loc, scale, weight):
    """prod_k N(t | loc_k, scale_k)^weight_k, normalised by integrating over a grid wide enough for all of it."""
    wide = np.linspace(grid[0] - 50 * scale.max(), grid[-1] + 50 * scale.max(), 400_001)

    def unnormalised(t):
        return np.exp(np.sum(weight[None] * norm.logpdf(t[:, None], loc[None], scale[None]), axis=1))

    return unnormalised(grid) / np.trapezoid(unnormalised(wide), wide)


def _independent_activations(module_layers, inputs, upto):
    h = torch.as_tensor(inputs, dtype=torch.float32)
    with torch.no_grad():
        for layer in module_layers[:upto]:
            layer.eval()
            h = layer(h)
    return h.double().numpy()


def _layer_params(layer, neuron):
    loc = layer.loc.detach().double().numpy()
    scale = layer.scale.detach().double().numpy()[neuron]
    logits = layer.logits.detach().double().numpy()[neuron].copy()
    if hasattr(layer, "mask"):
        logits[~layer.mask.numpy()[neuron]] = -np.inf
    weight = np.exp(logits - logits.max())
    weight /= weight.sum()
    return loc, scale, weight


@pytest.mark.parametrize("layer, neuron", [(0, 0), (1, 3), (2, 2), (-1, 0)])
def test_neuron_display_classifier_curve_matches_model(clf, iris, tmp_path, layer, neuron):
    X, _ = iris
    disp = NeuronDisplay.from_estimator(clf, X, layer=layer, neuron=neuron, max_components=3)
    layers = clf.module_.layers
    index = layer % len(layers)
    Xs = clf.scaler_.transform(X.to_numpy())
    acts = _independent_activations(layers, Xs, index)
    loc, scale, weight = _layer_params(layers[index], neuron)
    # the grid covers the incoming activations and the component means
    assert disp.grid[0] <= min(acts.min(), loc[neuron].min())
    assert disp.grid[-1] >= max(acts.max(), loc[neuron].max())
    if isinstance(layers[index], UGMMProductLayer):  # the classifier's default output neurons
        assert disp.combination == "product" and disp.line_.get_label() == "product"
        expected = _product(disp.grid, loc[neuron], scale, weight)
    else:
        assert disp.combination == "mixture" and disp.line_.get_label() == "mixture"
        expected = _mixture(disp.grid, loc[neuron], scale, weight)
    np.testing.assert_allclose(disp.line_.get_ydata(), expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(disp.line_.get_xdata(), disp.grid)
    np.testing.assert_allclose(disp.activations, acts, rtol=1e-5, atol=1e-5)
    # 3 largest weighted components, each pi_k N(t | mu_k, s_k)
    top = np.argsort(-weight, kind="stable")[:3]
    assert len(disp.component_lines_) == 3
    for line, k in zip(disp.component_lines_, top):
        np.testing.assert_allclose(
            line.get_ydata(), weight[k] * norm.pdf(disp.grid, loc[neuron, k], scale[k]), rtol=1e-5, atol=1e-8
        )
    # 2 + 3 lines, a 40-bar histogram, no evaluation line
    assert len(disp.ax_.lines) == 4
    assert len(disp.ax_.patches) == 40
    assert disp.eval_line_ is None
    assert disp.ax_.get_ylabel() == "density"
    kind = " (product)" if isinstance(layers[index], UGMMProductLayer) else ""
    assert disp.ax_.get_title() == f"layer {index}, neuron {neuron}{kind}"
    if index == 0:
        assert disp.ax_.get_xlabel() == "standardised input value"
        assert disp.input_names == list(X.columns)
        assert disp.component_lines_[0].get_label().startswith(X.columns[top[0]])
    else:
        assert disp.ax_.get_xlabel() == f"activation of layer {index - 1} (a log-density)"
    path = tmp_path / "neuron.png"
    disp.figure_.savefig(path)
    assert path.stat().st_size > 1000


def test_neuron_display_histogram_is_weighted_activations(clf, iris):
    X, _ = iris
    disp = NeuronDisplay.from_estimator(clf, X, layer=0, neuron=1)
    heights = np.array([p.get_height() for p in disp.hist_.patches])
    widths = np.array([p.get_width() for p in disp.hist_.patches])
    # density=True with weights summing to one: total area one
    np.testing.assert_allclose(np.sum(heights * widths), 1.0, rtol=1e-6)
    expected, _ = np.histogram(
        disp.activations.ravel(),
        bins=40,
        range=(disp.grid[0], disp.grid[-1]),
        weights=np.broadcast_to(disp.weights / len(X), disp.activations.shape).ravel(),
        density=True,
    )
    np.testing.assert_allclose(heights, expected)
    no_hist = NeuronDisplay.from_estimator(clf, X, neuron=1, show_activations=False)
    assert no_hist.hist_ is None and len(no_hist.ax_.patches) == 0


def test_neuron_display_tied_means(tied_clf, iris):
    X, _ = iris
    layer = tied_clf.module_.layers[0]
    disp = NeuronDisplay.from_estimator(tied_clf, X, layer=0, neuron=2)
    Xs = tied_clf.scaler_.transform(X.to_numpy())
    _, scale, weight = _layer_params(layer, 2)
    # components centred on the median incoming activations, evaluated at loc[j]
    means = np.median(Xs, axis=0)
    np.testing.assert_allclose(disp.means, means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(disp.line_.get_ydata(), _mixture(disp.grid, means, scale, weight), rtol=1e-4, atol=1e-7)
    assert disp.eval_point == pytest.approx(float(layer.loc[2].detach()))
    assert disp.eval_line_ is not None
    np.testing.assert_allclose(disp.eval_line_.get_xdata(), [disp.eval_point] * 2)
    assert disp.ax_.get_title().endswith("(tied means)")
    one = NeuronDisplay.from_estimator(tied_clf, X, neuron=2, sample=7)
    np.testing.assert_allclose(one.means, Xs[7], rtol=1e-5, atol=1e-5)
    # the neuron's output for sample 7 is its mixture of that sample at loc[j]
    with torch.no_grad():
        out = tied_clf.module_.layers[0](torch.as_tensor(Xs[7:8], dtype=torch.float32))[0, 2].item()
    np.testing.assert_allclose(np.log(_mixture(np.array([one.eval_point]), one.means, scale, weight)), out, rtol=1e-4)


def test_neuron_display_sample_out_of_range(tied_clf, iris):
    X, _ = iris
    for bad in (len(X), 10**6, -len(X) - 1, 2.5, True):
        with pytest.raises(ValueError, match="sample must be an integer"):
            NeuronDisplay.from_estimator(tied_clf, X, neuron=2, sample=bad)
    last = NeuronDisplay.from_estimator(tied_clf, X, neuron=2, sample=-1)
    np.testing.assert_allclose(last.means, tied_clf.scaler_.transform(X.to_numpy()[-1:])[0], rtol=1e-5, atol=1e-5)


def test_neuron_display_generative_label_input(generative_clf, iris):
    X, y = iris
    disp = NeuronDisplay.from_estimator(generative_clf, X, y, layer=0, neuron=0)
    assert disp.input_names[-1] == "label"
    assert disp.activations.shape == (len(X), X.shape[1] + 1)
    labels = label_values(3)[y.to_numpy()]
    np.testing.assert_allclose(disp.activations[:, -1], labels)
    # without y the predicted labels are used
    predicted = NeuronDisplay.from_estimator(generative_clf, X, layer=0, neuron=0)
    np.testing.assert_allclose(
        predicted.activations[:, -1], label_values(3)[generative_clf.predict(X)]
    )


@pytest.mark.parametrize("layer", [0, 1])
def test_neuron_display_density_skips_masked_components(density, layer):
    est, X = density
    module = est.module_
    hidden = module.hidden[layer]
    mask = hidden.mask.numpy()
    neuron = int(np.argmin(mask.sum(axis=1)))
    disp = NeuronDisplay.from_estimator(est, X, layer=layer, neuron=neuron, max_components=100)
    live = np.flatnonzero(mask[neuron])
    assert len(disp.weights) == len(live) == len(disp.component_lines_)
    np.testing.assert_allclose(disp.weights.sum(), 1.0)
    loc, scale, weight = _layer_params(hidden, neuron)
    assert np.all(weight[~mask[neuron]] == 0)
    np.testing.assert_allclose(
        disp.line_.get_ydata(), _mixture(disp.grid, loc[neuron, live], scale[live], weight[live]), rtol=1e-5, atol=1e-8
    )
    # activations of the hidden layers: standardised data in the model's variable order
    Xs = ((X - est.scaling_mean_) / est.scaling_scale_)[:, module.order.numpy()]
    acts = _independent_activations(module.hidden, Xs, layer)
    np.testing.assert_allclose(disp.activations, acts[:, live], rtol=1e-5, atol=1e-5)
    if layer == 0:
        assert disp.input_names == [["x2", "x0", "x1"][k] for k in live]


def test_layer_display_classifier(clf, iris, tmp_path):
    X, _ = iris
    disp = LayerDisplay.from_estimator(clf, layer=0)
    logits = clf.module_.layers[0].logits.detach().double()
    expected = torch.softmax(logits, dim=1).numpy()
    np.testing.assert_allclose(disp.weights, expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(disp.im_.get_array()), expected, rtol=1e-6)
    assert [t.get_text() for t in disp.ax_.get_xticklabels()] == list(X.columns)
    assert [t.get_text() for t in disp.ax_.get_yticklabels()] == [str(j) for j in range(6)]
    np.testing.assert_array_equal(disp.top_markers_.get_offsets()[:, 0], expected.argmax(axis=1))
    np.testing.assert_array_equal(disp.top_markers_.get_offsets()[:, 1], np.arange(6))
    assert disp.ax_.get_xlabel() == "input feature"
    assert disp.ax_.get_ylabel() == "neuron"
    assert disp.colorbar_.ax.get_ylabel() == "mixing weight"
    disp.figure_.savefig(tmp_path / "layer.png")
    assert (tmp_path / "layer.png").stat().st_size > 1000

    deeper = LayerDisplay.from_estimator(clf, layer=-1, neurons=[2, 0], show_top=False)
    assert deeper.weights.shape == (2, 5)
    assert deeper.top_markers_ is None
    assert [t.get_text() for t in deeper.ax_.get_xticklabels()] == [f"n{k}" for k in range(5)]
    assert [t.get_text() for t in deeper.ax_.get_yticklabels()] == ["2", "0"]
    assert deeper.ax_.get_xlabel() == "neuron of layer 1"


def test_layer_display_labels_many_rows_by_neuron_index(iris):
    # above 40 rows matplotlib picks the ticks: they must still name neurons, not row positions
    X, y = iris
    wide = UGMMClassifier(hidden_layer_sizes=(60,), max_iter=2, n_iter_no_change=np.inf, random_state=0).fit(X, y)
    disp = LayerDisplay.from_estimator(wide, layer=1, neurons=[2, 1, 0])  # 60 inputs: neurons of layer 0
    disp.figure_.canvas.draw()
    shown = {(t.get_position()[0], t.get_text()) for t in disp.ax_.get_xticklabels() if t.get_text()}
    assert shown and all(text == f"n{int(round(x))}" for x, text in shown)
    rows = LayerDisplay.from_estimator(wide, layer=0, neurons=np.arange(10, 60))
    rows.figure_.canvas.draw()
    shown = {(t.get_position()[1], t.get_text()) for t in rows.ax_.get_yticklabels() if t.get_text()}
    assert shown and all(text == str(10 + int(round(y))) for y, text in shown)


def test_layer_display_without_feature_names(iris):
    X, y = iris
    est = UGMMClassifier(hidden_layer_sizes=(3,), objective="generative", max_iter=2, n_iter_no_change=np.inf, random_state=0)
    est.fit(X.to_numpy(), y)
    disp = LayerDisplay.from_estimator(est)
    assert disp.input_names == ["x0", "x1", "x2", "x3", "label"]


def test_layer_display_density_masks(density):
    est, _ = density
    disp = LayerDisplay.from_estimator(est, layer=0)
    mask = est.module_.hidden[0].mask.numpy()
    assert np.array_equal(np.isnan(disp.weights), ~mask)
    assert np.array_equal(np.ma.getmaskarray(disp.im_.get_array()), ~mask)
    np.testing.assert_allclose(np.nansum(disp.weights, axis=1), 1.0, rtol=1e-6)
    assert disp.input_names == ["x2", "x0", "x1"]
    assert "variable order" in disp.ax_.get_xlabel()


def test_training_curve_display_classifier(clf, tmp_path):
    disp = TrainingCurveDisplay.from_estimator(clf)
    np.testing.assert_allclose(disp.loss_line_.get_ydata(), clf.loss_curve_)
    np.testing.assert_array_equal(disp.loss_line_.get_xdata(), np.arange(1, clf.n_iter_ + 1))
    np.testing.assert_allclose(disp.validation_line_.get_ydata(), clf.validation_scores_)
    assert disp.ax_.get_xlabel() == "epoch"
    assert disp.ax_.get_ylabel() == "training loss (cross-entropy)"
    assert disp.ax_validation_.get_ylabel() == "validation accuracy"
    valid_loss = [row["valid_loss"] for row in clf.net_.history]
    assert disp.best_epoch == 1 + int(np.argmin(valid_loss))
    assert len(disp.ax_.lines) == 2 and len(disp.ax_validation_.lines) == 1
    disp.figure_.savefig(tmp_path / "curve.png")


def _clipped_labels(figure):
    """Texts of the axis labels and titles of ``figure`` that reach beyond its edges."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    edges = figure.bbox
    clipped = []
    for ax in figure.axes:
        for text in (ax.xaxis.label, ax.yaxis.label, ax.title):
            box = text.get_window_extent(renderer)
            if text.get_text() and not (
                edges.x0 <= box.x0 and box.x1 <= edges.x1 and edges.y0 <= box.y0 and box.y1 <= edges.y1
            ):
                clipped.append(text.get_text())
    return clipped


@pytest.mark.parametrize("name", ["training curve", "layer", "neuron"])
def test_displays_lay_out_their_own_figures_without_clipping(clf, iris, name):
    X, _ = iris
    make = {
        "training curve": lambda: TrainingCurveDisplay.from_estimator(clf),
        "layer": lambda: LayerDisplay.from_estimator(clf),
        "neuron": lambda: NeuronDisplay.from_estimator(clf, X),
    }[name]
    figure = make().figure_
    assert figure.get_layout_engine() is not None
    assert _clipped_labels(figure) == []


def test_training_curve_display_density_without_validation():
    X = np.random.RandomState(0).normal(size=(100, 2))
    est = UGMMDensityEstimator(hidden_layer_sizes=(4,), max_iter=4, n_iter_no_change=np.inf, early_stopping=False, random_state=0).fit(X)
    fig, ax = plt.subplots()
    disp = TrainingCurveDisplay.from_estimator(est, ax=ax)
    assert disp.ax_ is ax and disp.figure_ is fig
    assert disp.validation_line_ is None and disp.ax_validation_ is None and disp.best_epoch_line_ is None
    np.testing.assert_allclose(disp.loss_line_.get_ydata(), est.loss_curve_)
    assert disp.ax_.get_ylabel() == "training loss (negative log-likelihood per sample)"
    assert len(ax.lines) == 1


def test_training_curve_display_density_validation(density):
    est, _ = density
    disp = TrainingCurveDisplay.from_estimator(est)
    np.testing.assert_allclose(disp.validation_line_.get_ydata(), est.validation_scores_)
    assert disp.ax_validation_.get_ylabel() == "validation log-likelihood per sample"


def test_training_curve_display_loaded_model(clf, tmp_path):
    save_model(clf, tmp_path / "m.ugmm")
    loaded = load_model(tmp_path / "m.ugmm")
    disp = TrainingCurveDisplay.from_estimator(loaded)
    np.testing.assert_allclose(disp.loss_line_.get_ydata(), clf.loss_curve_)


def test_displays_use_given_axes(clf, iris):
    X, _ = iris
    fig, axes = plt.subplots(1, 2)
    n = NeuronDisplay.from_estimator(clf, X, ax=axes[0])
    layer = LayerDisplay.from_estimator(clf, ax=axes[1])
    assert n.ax_ is axes[0] and layer.ax_ is axes[1] and n.figure_ is fig and layer.figure_ is fig
    # plot() again on other axes redraws with the stored values
    _, other = plt.subplots()
    again = n.plot(ax=other, max_components=1)
    assert again.ax_ is other and len(other.lines) == 2


@pytest.mark.parametrize(
    "make", [lambda: UGMMClassifier(), lambda: UGMMDensityEstimator()], ids=["classifier", "density"]
)
def test_not_fitted(make):
    X = np.zeros((5, 2))
    with pytest.raises(NotFittedError):
        NeuronDisplay.from_estimator(make(), X)
    with pytest.raises(NotFittedError):
        LayerDisplay.from_estimator(make())
    with pytest.raises(NotFittedError):
        TrainingCurveDisplay.from_estimator(make())


def test_bad_indices(clf, iris):
    X, _ = iris
    with pytest.raises(ValueError, match="layer must be"):
        NeuronDisplay.from_estimator(clf, X, layer=3)
    with pytest.raises(ValueError, match="neuron must be"):
        NeuronDisplay.from_estimator(clf, X, neuron=6)
    with pytest.raises(ValueError, match="neurons must be"):
        LayerDisplay.from_estimator(clf, neurons=[7])
    with pytest.raises(ValueError, match="tied-means"):
        NeuronDisplay.from_estimator(clf, X, sample=0)
    with pytest.warns(UserWarning, match="valid feature names"), pytest.raises(ValueError, match="features"):
        NeuronDisplay.from_estimator(clf, X.to_numpy()[:, :3])


def test_density_without_hidden_layers():
    est = UGMMDensityEstimator(hidden_layer_sizes=(), max_iter=2, n_iter_no_change=np.inf, random_state=0).fit(np.random.rand(50, 2))
    with pytest.raises(ValueError, match="no hidden uGMM layers"):
        LayerDisplay.from_estimator(est)


def test_matplotlib_missing(clf, iris, monkeypatch):
    X, _ = iris
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    for call in (
        lambda: NeuronDisplay.from_estimator(clf, X),
        lambda: LayerDisplay.from_estimator(clf),
        lambda: TrainingCurveDisplay.from_estimator(clf),
        lambda: TrainingCurveDisplay([1.0]).plot(),
    ):
        with pytest.raises(ImportError, match=r"pip install sklearn-ugmm\[plot\]"):
            call()


def test_neuron_display_with_missing_inputs(clf, tied_clf, iris):
    # a missing entry (NaN, or a missing category) reached the displays as NaN activations: a blank
    # or failing plot; the first layer renormalises over the observed inputs, as the network does
    X, _ = iris
    X = X.copy()
    X.iloc[0, 1] = np.nan
    for layer in (0, 1, 2):
        disp = NeuronDisplay.from_estimator(clf, X, layer=layer, neuron=0)
        assert np.isfinite(disp.grid).all() and np.isfinite(disp.density).all()
    hidden = NeuronDisplay.from_estimator(clf, X, layer=1, neuron=0).activations
    Xs = clf.scaler_.transform(X.to_numpy())
    with torch.no_grad():
        x = torch.as_tensor(Xs, dtype=torch.float32)
        expected = clf.module_.layers[0].forward_observed(x, ~torch.isnan(x)).double().numpy()
    live = np.flatnonzero(np.isfinite(clf.module_.layers[1].log_weights().detach().numpy()[0]))
    np.testing.assert_allclose(hidden, expected[:, live], rtol=1e-6)
    # tied means: the sample's missing input has no component; the medians skip missing entries
    one = NeuronDisplay.from_estimator(tied_clf, X, neuron=2, sample=0)
    assert len(one.means) == 3 and one.input_names == [n for n in X.columns if n != X.columns[1]]
    np.testing.assert_allclose(one.weights.sum(), 1.0)
    typical = NeuronDisplay.from_estimator(tied_clf, X, neuron=2)
    np.testing.assert_allclose(typical.means, np.nanmedian(tied_clf.scaler_.transform(X.to_numpy()), axis=0), rtol=1e-5, atol=1e-5)
