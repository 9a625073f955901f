"""LayerDisplay: the mixing weights of a uGMM layer."""

import numpy as np

from ._utils import (
    check_layer_index,
    check_matplotlib_support,
    get_axes,
    input_axis_label,
    input_names,
    layer_parameters,
    uGMM_layers,
)

__all__ = ["LayerDisplay"]

_MAX_TICK_LABELS = 40


class LayerDisplay:
    """Which inputs each neuron of a uGMM layer weights most.

    A heatmap of the mixing weights ``softmax(logits)`` of a layer: one row
    per neuron, one column per input, each row summing to one. Inputs of the
    first layer are named after the features (``feature_names_in_`` when the
    estimator was fitted on a DataFrame; the generative classifier's extra
    input is called ``label``; the density estimator's inputs are in its
    variable order). Masked components (the density estimator's MADE masks)
    are left blank, and a dot marks each neuron's largest weight.

    Create it with :meth:`from_estimator`; the constructor takes
    precomputed values.

    Parameters
    ----------
    weights : ndarray of shape (n_neurons, n_inputs)
        Mixing weights; masked (impossible) components are NaN.
    input_names : list of str, default=None
        Names of the inputs (columns).
    neurons : ndarray of shape (n_neurons,), default=None
        Indices of the neurons (rows) in their layer.
    layer : int, default=None
        Index of the layer, for the title.
    input_label : str, default="input"
        Label of the x axis.

    Attributes
    ----------
    im_ : matplotlib AxesImage
        The heatmap.
    colorbar_ : matplotlib Colorbar
        Its colour bar.
    top_markers_ : matplotlib PathCollection or None
        The dots on each neuron's largest weight.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    See Also
    --------
    NeuronDisplay : The mixture of one neuron.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_ugmm import UGMMClassifier
    >>> from sklearn_ugmm.inspection import LayerDisplay
    >>> X, y = load_iris(return_X_y=True, as_frame=True)
    >>> clf = UGMMClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    >>> disp = LayerDisplay.from_estimator(clf, layer=0)
    >>> disp.weights.shape
    (8, 4)
    >>> disp.input_names[0]
    'sepal length (cm)'
    """

    def __init__(self, weights, *, input_names=None, neurons=None, layer=None, input_label="input"):
        self.weights = weights
        self.input_names = input_names
        self.neurons = neurons
        self.layer = layer
        self.input_label = input_label

    @classmethod
    def from_estimator(cls, estimator, *, layer=0, neurons=None, ax=None, cmap="viridis", show_top=True):
        """Read a layer's mixing weights from a fitted estimator and plot them.

        Parameters
        ----------
        estimator : UGMMClassifier or UGMMDensityEstimator
            A fitted estimator. For the density estimator, ``layer`` indexes
            its masked hidden uGMM layers (``module_.hidden``).
        layer : int, default=0
            Index of the layer (negative values count from the end).
        neurons : array-like of int, default=None
            Neurons (rows) to show; all when None.
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure when None.
        cmap : str or matplotlib Colormap, default="viridis"
            Colour map of the heatmap.
        show_top : bool, default=True
            Mark each neuron's largest weight with a dot.

        Returns
        -------
        display : LayerDisplay
            The display, with the artists drawn.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sklearn_ugmm import UGMMDensityEstimator
        >>> from sklearn_ugmm.inspection import LayerDisplay
        >>> X = np.random.RandomState(0).normal(size=(200, 3))
        >>> est = UGMMDensityEstimator(hidden_layer_sizes=(6,), max_iter=3, random_state=0).fit(X)
        >>> disp = LayerDisplay.from_estimator(est)
        >>> int(np.isnan(disp.weights).sum())  # masked by the MADE degrees
        9
        """
        check_matplotlib_support(f"{cls.__name__}.from_estimator")
        layers, _ = uGMM_layers(estimator)
        layer = check_layer_index(layers, layer)
        _, _, log_w = layer_parameters(layers[layer])
        weights = np.where(np.isfinite(log_w), np.exp(log_w), np.nan)
        n_out = weights.shape[0]
        if neurons is None:
            neurons = np.arange(n_out)
        else:
            neurons = np.asarray(neurons).reshape(-1)
            if neurons.dtype.kind not in "iu" or np.any(neurons < -n_out) or np.any(neurons >= n_out):
                raise ValueError(f"neurons must be integers in [{-n_out}, {n_out - 1}], got {neurons!r}.")
            neurons = neurons % n_out
        display = cls(
            weights[neurons],
            input_names=input_names(estimator, layer),
            neurons=neurons,
            layer=layer,
            input_label=input_axis_label(estimator, layer),
        )
        return display.plot(ax=ax, cmap=cmap, show_top=show_top)

    def plot(self, ax=None, *, cmap="viridis", show_top=True):
        """Plot the heatmap.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure when None.
        cmap : str or matplotlib Colormap, default="viridis"
            Colour map of the heatmap.
        show_top : bool, default=True
            Mark each neuron's largest weight with a dot.

        Returns
        -------
        display : LayerDisplay
            Object that stores the computed values and the artists.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sklearn_ugmm.inspection import LayerDisplay
        >>> disp = LayerDisplay(np.array([[0.9, 0.1], [0.5, 0.5]]), input_names=["a", "b"]).plot()
        >>> [t.get_text() for t in disp.ax_.get_xticklabels()]
        ['a', 'b']
        """
        check_matplotlib_support(f"{type(self).__name__}.plot")
        ax = get_axes(ax)
        weights = np.asarray(self.weights, dtype=np.float64)
        n_neurons, n_inputs = weights.shape
        neurons = np.arange(n_neurons) if self.neurons is None else np.asarray(self.neurons)
        masked = np.ma.masked_invalid(weights)
        self.im_ = ax.imshow(masked, aspect="auto", cmap=cmap, vmin=0.0, interpolation="nearest")
        self.colorbar_ = ax.figure.colorbar(self.im_, ax=ax, label="mixing weight")

        self.top_markers_ = None
        if show_top and n_neurons:
            top = np.nanargmax(np.where(np.isnan(weights), -np.inf, weights), axis=1)
            self.top_markers_ = ax.scatter(top, np.arange(n_neurons), s=12, c="red", marker="o", label="largest weight")

        if self.input_names is not None and n_inputs <= _MAX_TICK_LABELS:
            ax.set_xticks(np.arange(n_inputs))
            rotate = n_inputs * max(len(str(name)) for name in self.input_names) > 24
            ax.set_xticklabels(self.input_names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        elif self.input_names is not None:
            _label_some_ticks(ax.xaxis, [str(name) for name in self.input_names])
        if n_neurons <= _MAX_TICK_LABELS:
            ax.set_yticks(np.arange(n_neurons))
            ax.set_yticklabels([str(int(j)) for j in neurons])
        else:  # some rows get a tick, labelled with the neuron's index (not the row's)
            _label_some_ticks(ax.yaxis, [str(int(j)) for j in neurons])
        ax.set_xlabel(self.input_label)
        ax.set_ylabel("neuron")
        ax.set_title("mixing weights" if self.layer is None else f"mixing weights of layer {self.layer}")
        self.ax_ = ax
        self.figure_ = ax.figure
        return self


def _label_some_ticks(axis, labels):
    """Integer ticks chosen by matplotlib on ``axis``, each labelled with ``labels[position]``."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    def label(value, _):
        position = int(round(value))
        return labels[position] if abs(value - position) < 1e-6 and 0 <= position < len(labels) else ""

    axis.set_major_locator(MaxNLocator(integer=True))
    axis.set_major_formatter(FuncFormatter(label))
