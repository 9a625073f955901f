"""Helpers shared by the displays: matplotlib import, layers, activations, names."""

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from .._objectives import label_values
from ..nn import AutoregressiveUGMM, UGMMNet

_PLOT_EXTRA_HINT = "You can install it with `pip install sklearn-ugmm[plot]`."


def check_matplotlib_support(caller_name):
    """Import ``matplotlib.pyplot``, raising a clear ImportError without it."""
    try:
        import matplotlib.pyplot as plt  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{caller_name} requires matplotlib. {_PLOT_EXTRA_HINT}") from exc
    return plt


def get_axes(ax):
    """``ax`` itself, or the axes of a new figure that lays itself out so that no label is clipped."""
    plt = check_matplotlib_support("Plotting a sklearn_ugmm display")
    if ax is None:
        _, ax = plt.subplots(layout="constrained")
    return ax


def uGMM_layers(estimator):
    """The uGMM layers of a fitted estimator's network, and what they are called."""
    check_is_fitted(estimator)
    module = estimator.module_
    if isinstance(module, UGMMNet):
        return list(module.layers), "layers"
    if isinstance(module, AutoregressiveUGMM):
        if len(module.hidden) == 0:
            raise ValueError(
                "This UGMMDensityEstimator has no hidden uGMM layers "
                "(hidden_layer_sizes is empty): there is no layer to inspect."
            )
        return list(module.hidden), "hidden"
    raise TypeError(
        f"Expected a fitted UGMMClassifier or UGMMDensityEstimator, got a model with a "
        f"{type(module).__name__} network."
    )


def check_layer_index(layers, layer):
    n_layers = len(layers)
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not -n_layers <= layer < n_layers:
        raise ValueError(f"layer must be an integer in [{-n_layers}, {n_layers - 1}], got {layer!r}.")
    return int(layer) % n_layers


def input_names(estimator, layer):
    """Names of the inputs of ``layer`` (features for the first layer, neurons after)."""
    layers, _ = uGMM_layers(estimator)
    n_in = layers[layer].in_features
    if layer > 0:
        return [f"n{k}" for k in range(n_in)]
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        names = [f"x{k}" for k in range(estimator.n_features_in_)]
    names = [str(name) for name in names]
    encoder = getattr(estimator.scaler_, "encoder", None)
    if encoder is not None:
        names = encoded_input_names(names, encoder)
    module = estimator.module_
    if isinstance(module, AutoregressiveUGMM):
        names = [names[k] for k in module.order.cpu().tolist()]
    elif n_in == len(names) + 1:
        names.append("label")  # the generative classifier's label input
    return names


def encoded_input_names(names, encoder):
    """The feature ``names`` with each categorical one expanded into ``name=category``, one per input."""
    categories = iter(encoder.categories_)
    expanded = []
    for name, categorical in zip(names, encoder.is_categorical):
        expanded.extend([f"{name}={value}" for value in next(categories)] if categorical else [name])
    return expanded


def input_axis_label(estimator, layer):
    if layer > 0:
        return f"neuron of layer {layer - 1}"
    if isinstance(estimator.module_, AutoregressiveUGMM):
        return "input feature (in the model's variable order)"
    return "input feature"


def network_inputs(estimator, X, y=None):
    """The standardised inputs the network sees for X (and labels y when generative)."""
    X_given = X
    X = estimator._validated_input(X)
    Xs = estimator.scaler_.transform(X).astype(np.float32)
    module = estimator.module_
    if isinstance(module, UGMMNet) and module.n_inputs == Xs.shape[1] + 1:
        # generative classifier: the label is the last input
        if y is None:
            y = estimator.predict(X_given)
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}.")
        unknown = np.setdiff1d(y, estimator.classes_)
        if len(unknown):
            raise ValueError(f"y contains labels the estimator was not fitted on: {unknown!r}.")
        y_index = np.searchsorted(estimator.classes_, y)
        labels = label_values(len(estimator.classes_))[y_index]
        Xs = np.hstack([Xs, labels[:, None].astype(np.float32)])
    return Xs


@torch.no_grad()
def layer_inputs(estimator, X, layer, y=None):
    """Activations reaching ``layer`` for the samples X, shape (n_samples, in_features).

    NaN marks a missing input (layer 0 only: the layers after it see none).
    """
    layers, kind = uGMM_layers(estimator)
    layer = check_layer_index(layers, layer)
    module = estimator.module_
    device = next(module.parameters()).device
    h = torch.as_tensor(network_inputs(estimator, X, y), device=device)
    if kind == "hidden":
        h = h[:, module.order]
    was_training = module.training
    module.eval()
    try:
        missing = torch.isnan(h)
        for i, earlier in enumerate(layers[:layer]):
            # as the network: the first layer renormalises each neuron over the observed inputs
            h = earlier.forward_observed(h, ~missing) if i == 0 and bool(missing.any()) else earlier(h)
    finally:
        module.train(was_training)
    return h.cpu().double().numpy()


@torch.no_grad()
def layer_parameters(layer_module):
    """Component means, scales and mixing weights of a layer, as float64 arrays.

    Weights are the eval-mode (no dropout) ``exp(log_weights())``; masked
    components have weight 0. Means are ``component_loc``: with tied means,
    each neuron's evaluation point broadcast over its components.
    """
    was_training = layer_module.training
    layer_module.eval()
    try:
        log_w = layer_module.log_weights().detach().cpu().double().numpy()
    finally:
        layer_module.train(was_training)
    loc = layer_module.component_loc.detach().cpu().double().numpy()
    scale = layer_module.scale.detach().cpu().double().numpy()
    return loc, scale, log_w
