"""NeuronDisplay: the univariate Gaussian mixture of one uGMM neuron."""

import numpy as np

from ..nn import UGMMProductLayer
from ._utils import (
    check_layer_index,
    check_matplotlib_support,
    get_axes,
    input_names,
    layer_inputs,
    layer_parameters,
    uGMM_layers,
)

__all__ = ["NeuronDisplay", "mixture_density", "product_density"]


def mixture_density(grid, means, scales, weights):
    """Density of a univariate Gaussian mixture on a grid.

    Parameters
    ----------
    grid : array-like of shape (n_points,)
        Where to evaluate the density.
    means, scales, weights : array-like of shape (n_components,)
        Component means, standard deviations and mixing weights.

    Returns
    -------
    density : ndarray of shape (n_points,)
        ``sum_k weights[k] * N(grid | means[k], scales[k]**2)``.
    """
    grid = np.asarray(grid, dtype=np.float64)[:, None]
    means, scales, weights = (np.asarray(a, dtype=np.float64)[None, :] for a in (means, scales, weights))
    z = (grid - means) / scales
    return np.sum(weights * np.exp(-0.5 * z**2) / (scales * np.sqrt(2 * np.pi)), axis=1)


def product_density(grid, means, scales, weights):
    """Normalised weighted product of univariate Gaussians on a grid.

    ``prod_k N(t | means[k], scales[k]**2) ** weights[k]``, normalised, is the
    Gaussian with precision ``sum_k weights[k] / scales[k]**2`` and mean the
    precision-weighted mean of ``means``.

    Parameters
    ----------
    grid : array-like of shape (n_points,)
        Where to evaluate the density.
    means, scales, weights : array-like of shape (n_components,)
        Component means, standard deviations and (non-negative) weights.

    Returns
    -------
    density : ndarray of shape (n_points,)
        The normalised product density on ``grid``.
    """
    means, scales, weights = (np.asarray(a, dtype=np.float64) for a in (means, scales, weights))
    precision = np.sum(weights / scales**2)
    mean = np.sum(weights * means / scales**2) / precision
    return mixture_density(grid, [mean], [precision**-0.5], [1.0])


class NeuronDisplay:
    """The univariate Gaussian mixture of one uGMM neuron (or product of a product neuron).

    Neuron ``j`` of a uGMM layer outputs
    ``log sum_k pi[j, k] N(x_k | mu[j, k], sigma[j, k]**2)``: one component per
    input ``k``, each evaluated at its own input ``x_k``. This display draws
    the mixture as a univariate density of a common argument ``t``,
    ``p(t) = sum_k pi[j, k] N(t | mu[j, k], sigma[j, k]**2)``, over the range of
    the activations that reach the layer, together with the weighted
    components of the largest weights (one curve per input, labelled with its
    name) and, optionally, a histogram of the incoming activations where the
    samples of input ``k`` count with weight ``pi[j, k]`` (the data version of
    the mixture). Masked components (the density estimator's MADE masks,
    log-weight ``-inf``) are left out.

    With tied means (``tie_means=True``) the component means are the incoming
    activations themselves and the neuron evaluates its mixture at a learned
    point ``loc[j]``. The mixture then depends on the sample: the display
    draws it for a typical sample (component means at the per-input medians
    of the incoming activations over ``X``, or the activations of row
    ``sample`` of ``X``) and marks the evaluation point with a vertical line.

    A product neuron (:class:`~sklearn_ugmm.nn.UGMMProductLayer`, the
    classifier's ``output_layer="product"``) outputs
    ``sum_k pi[j, k] log N(x_k | mu[j, k], sigma[j, k]**2)``; for it the bold
    curve is the normalised weighted product of the components over the
    common argument, ``prod_k N(t | mu[j, k], sigma[j, k]**2) ** pi[j, k]``
    (:func:`product_density`), a Gaussian.

    Create it with :meth:`from_estimator`; the constructor takes
    precomputed values. All values are in the network's internal
    (standardised) space.

    Parameters
    ----------
    grid : ndarray of shape (n_points,)
        Arguments at which the mixture is evaluated.
    density : ndarray of shape (n_points,)
        Mixture density on ``grid``.
    means : ndarray of shape (n_components,)
        Means of the live (unmasked) components.
    scales : ndarray of shape (n_components,)
        Their standard deviations.
    weights : ndarray of shape (n_components,)
        Their mixing weights (summing to one).
    input_names : list of str, default=None
        Name of the input each component belongs to.
    activations : ndarray of shape (n_samples, n_components), default=None
        Incoming activations of the same inputs, for the histogram.
    eval_point : float, default=None
        Evaluation point of a tied-means neuron (None for untied neurons).
    layer : int, default=None
        Index of the layer, for the title.
    neuron : int, default=None
        Index of the neuron in its layer, for the title.
    xlabel : str, default=None
        Label of the x axis ("activation" when None).
    combination : {"mixture", "product"}, default="mixture"
        How the neuron combines its components; names the bold curve.

    Attributes
    ----------
    line_ : matplotlib Line2D
        The mixture density.
    component_lines_ : list of matplotlib Line2D
        The weighted components ``pi_k N(t | mu_k, sigma_k**2)`` drawn, largest
        weight first.
    hist_ : matplotlib BarContainer or None
        Weighted histogram of the incoming activations.
    eval_line_ : matplotlib Line2D or None
        The evaluation point of a tied-means neuron.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    See Also
    --------
    LayerDisplay : Mixing weights of a whole layer.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_ugmm import UGMMClassifier
    >>> from sklearn_ugmm.inspection import NeuronDisplay
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = UGMMClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    >>> disp = NeuronDisplay.from_estimator(clf, X, layer=0, neuron=2)
    >>> len(disp.means)
    4
    >>> disp.ax_.get_xlabel()
    'standardised input value'
    """

    def __init__(
        self,
        grid,
        density,
        means,
        scales,
        weights,
        *,
        input_names=None,
        activations=None,
        eval_point=None,
        layer=None,
        neuron=None,
        xlabel=None,
        combination="mixture",
    ):
        self.grid = grid
        self.density = density
        self.means = means
        self.scales = scales
        self.weights = weights
        self.input_names = input_names
        self.activations = activations
        self.eval_point = eval_point
        self.layer = layer
        self.neuron = neuron
        self.xlabel = xlabel
        self.combination = combination

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y=None,
        *,
        layer=0,
        neuron=0,
        sample=None,
        n_points=400,
        ax=None,
        max_components=8,
        show_activations=True,
    ):
        """Compute a neuron's mixture from a fitted estimator and plot it.

        Parameters
        ----------
        estimator : UGMMClassifier or UGMMDensityEstimator
            A fitted estimator. For the density estimator, ``layer`` indexes
            its masked hidden uGMM layers (``module_.hidden``).
        X : array-like of shape (n_samples, n_features)
            Data whose activations, passed through the layers before
            ``layer``, give the plotted range (and the histogram).
        y : array-like of shape (n_samples,), default=None
            Labels of X. Used only by a classifier with
            ``objective="generative"``, whose label is a network input; its
            predicted labels are used when None.
        layer : int, default=0
            Index of the layer (negative values count from the end).
        neuron : int, default=0
            Index of the neuron in the layer.
        sample : int, default=None
            Tied-means layers only: draw the mixture of this row of X
            (negative values count from the end) instead of the per-input
            medians of the activations.
        n_points : int, default=400
            Number of grid points of the curve.
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure when None.
        max_components : int, default=8
            Number of weighted component curves drawn (the largest weights).
        show_activations : bool, default=True
            Draw the weighted histogram of the incoming activations.

        Returns
        -------
        display : NeuronDisplay
            The display, with the artists drawn.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sklearn_ugmm import UGMMDensityEstimator
        >>> from sklearn_ugmm.inspection import NeuronDisplay
        >>> X = np.random.RandomState(0).normal(size=(200, 3))
        >>> est = UGMMDensityEstimator(hidden_layer_sizes=(6,), max_iter=3, random_state=0).fit(X)
        >>> disp = NeuronDisplay.from_estimator(est, X, neuron=5)
        >>> len(disp.weights)  # a MADE mask leaves some inputs out
        2
        """
        check_matplotlib_support(f"{cls.__name__}.from_estimator")
        layers, _ = uGMM_layers(estimator)
        layer = check_layer_index(layers, layer)
        layer_module = layers[layer]
        n_out = layer_module.out_features
        if not isinstance(neuron, (int, np.integer)) or isinstance(neuron, bool) or not -n_out <= neuron < n_out:
            raise ValueError(f"neuron must be an integer in [{-n_out}, {n_out - 1}], got {neuron!r}.")
        neuron = int(neuron) % n_out
        activations = layer_inputs(estimator, X, layer, y)
        loc, scale, log_w = layer_parameters(layer_module)
        live = np.flatnonzero(np.isfinite(log_w[neuron]))
        weights = np.exp(log_w[neuron, live])
        scales = scale[neuron, live]
        activations = activations[:, live]
        names = input_names(estimator, layer)
        names = [names[k] for k in live]
        eval_point = None
        if layer_module.tie_means:
            eval_point = float(loc[neuron, 0])
            if sample is None:
                observed = ~np.isnan(activations).all(axis=0)
                means = np.nanmedian(activations[:, observed], axis=0) if observed.any() else None
            else:
                means = activations[_check_sample_index(sample, len(activations))]
                observed = ~np.isnan(means)  # the sample's missing inputs have no component
                means = means[observed]
            if means is None or not observed.any():
                raise ValueError("No observed activation reaches this neuron in X (every input is missing).")
            weights, scales, activations = weights[observed], scales[observed], activations[:, observed]
            weights = weights / weights.sum()
            names = [name for name, keep in zip(names, observed) if keep]
        else:
            if sample is not None:
                raise ValueError("sample is only used by tied-means layers.")
            means = loc[neuron, live]
        points = [activations.ravel(), means]
        if eval_point is not None:
            points.append([eval_point])
        low = min(float(np.nanmin(p)) for p in points)  # NaN: a missing input
        high = max(float(np.nanmax(p)) for p in points)
        pad = 0.05 * (high - low) if high > low else 1.0
        grid = np.linspace(low - pad, high + pad, int(n_points))
        combination = "product" if isinstance(layer_module, UGMMProductLayer) else "mixture"
        density = (product_density if combination == "product" else mixture_density)(grid, means, scales, weights)
        display = cls(
            grid,
            density,
            means,
            scales,
            weights,
            input_names=names,
            activations=activations,
            eval_point=eval_point,
            layer=layer,
            neuron=neuron,
            xlabel=(
                "standardised input value"
                if layer == 0
                else f"activation of layer {layer - 1} (a log-density)"
            ),
            combination=combination,
        )
        return display.plot(ax=ax, max_components=max_components, show_activations=show_activations)

    def plot(self, ax=None, *, max_components=8, show_activations=True, line_kw=None):
        """Plot the mixture.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure when None.
        max_components : int, default=8
            Number of weighted component curves drawn (the largest weights).
        show_activations : bool, default=True
            Draw the weighted histogram of the incoming activations (when the
            display has them).
        line_kw : dict, default=None
            Keyword arguments for the mixture curve's ``ax.plot``.

        Returns
        -------
        display : NeuronDisplay
            Object that stores the computed values and the artists.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sklearn_ugmm.inspection import NeuronDisplay
        >>> grid = np.linspace(-3, 3, 50)
        >>> means, scales, weights = np.array([-1.0, 1.0]), np.ones(2), np.array([0.3, 0.7])
        >>> pdf = np.exp(-0.5 * (grid[:, None] - means) ** 2) / np.sqrt(2 * np.pi)
        >>> disp = NeuronDisplay(grid, pdf @ weights, means, scales, weights)
        >>> len(disp.plot().component_lines_)
        2
        """
        check_matplotlib_support(f"{type(self).__name__}.plot")
        ax = get_axes(ax)
        means = np.asarray(self.means, dtype=np.float64)
        scales = np.asarray(self.scales, dtype=np.float64)
        weights = np.asarray(self.weights, dtype=np.float64)
        names = self.input_names if self.input_names is not None else [f"x{k}" for k in range(len(means))]

        self.hist_ = None
        if show_activations and self.activations is not None:
            acts = np.asarray(self.activations, dtype=np.float64)
            sample_weights = np.broadcast_to(weights / acts.shape[0], acts.shape)
            _, _, self.hist_ = ax.hist(
                acts.ravel(),
                bins=40,
                range=(self.grid[0], self.grid[-1]),
                weights=sample_weights.ravel(),
                density=True,
                color="0.8",
                label="incoming activations (weighted)",
            )

        order = np.argsort(-weights, kind="stable")[: max(int(max_components), 0)]
        self.component_lines_ = []
        for k in order:
            curve = mixture_density(self.grid, means[k : k + 1], scales[k : k + 1], weights[k : k + 1])
            (line,) = ax.plot(
                self.grid, curve, linestyle="--", linewidth=1, label=f"{names[k]} (w={weights[k]:.2f})"
            )
            self.component_lines_.append(line)

        kw = {"color": "black", "linewidth": 2, "label": getattr(self, "combination", "mixture")}
        kw.update(line_kw or {})
        (self.line_,) = ax.plot(self.grid, self.density, **kw)

        self.eval_line_ = None
        if self.eval_point is not None:
            self.eval_line_ = ax.axvline(self.eval_point, color="tab:red", linestyle=":", label="evaluation point")

        ax.set_xlabel(self.xlabel if self.xlabel is not None else "activation")
        ax.set_ylabel("density")
        title = "uGMM neuron"
        if self.layer is not None and self.neuron is not None:
            title = f"layer {self.layer}, neuron {self.neuron}"
        if getattr(self, "combination", "mixture") == "product":
            title += " (product)"
        if self.eval_point is not None:
            title += " (tied means)"
        ax.set_title(title)
        ax.legend(fontsize="small")
        self.ax_ = ax
        self.figure_ = ax.figure
        return self


def _check_sample_index(sample, n_samples):
    """``sample`` as a row index of X (negative values count from the end)."""
    if not isinstance(sample, (int, np.integer)) or isinstance(sample, bool) or not -n_samples <= sample < n_samples:
        raise ValueError(f"sample must be an integer in [{-n_samples}, {n_samples - 1}] (a row of X), got {sample!r}.")
    return int(sample) % n_samples
