"""A stack of uGMM layers, with MPE scoring and data-dependent initialisation."""

import math

import numpy as np
import torch
from torch import nn

from ._functional import _HALF_LOG_2PI, ugmm_log_density, ugmm_observed_parts
from ._layer import GeneratorMixin, UGMMLayer
from ._product import UGMMProductLayer

__all__ = ["INIT_MAX_SAMPLES", "OUTPUT_LAYERS", "UGMMNet", "evenly_spaced_rows"]

#: The choices of ``output_layer``: the output neurons' layer class.
OUTPUT_LAYERS = {"mixture": UGMMLayer, "product": UGMMProductLayer}

#: Rows the data-dependent initialisations compute their statistics on.
INIT_MAX_SAMPLES = 4096


def evenly_spaced_rows(n_rows, max_rows):
    """Indices of at most ``max_rows`` rows spread evenly over ``n_rows`` (all when fewer).

    Unlike the first rows, they cover data sorted by class or by time.
    """
    return np.linspace(0, n_rows - 1, num=min(n_rows, max_rows)).round().astype(np.int64)


class UGMMNet(GeneratorMixin, nn.Module):
    """A uGMM neural network: uGMM layers stacked like an MLP.

    Parameters
    ----------
    n_inputs : int
        Number of input variables.
    hidden_layer_sizes : sequence of int
        Neurons in each hidden layer (may be empty).
    n_outputs : int
        Neurons in the output layer.
    output_layer : {"mixture", "product"}, default="mixture"
        The output neurons: uGMM mixtures, as in the paper, or Gaussian
        products (:class:`UGMMProductLayer`), which sum the evidence of
        their inputs.
    **layer_options
        Passed to every :class:`UGMMLayer` (``dropout``, ``tie_means``,
        ``min_scale``, ``block_elements``, ``kernel``, ``generator``,
        ``device``, ``dtype``).

    Attributes
    ----------
    layers : nn.ModuleList of UGMMLayer
        The hidden layers, then the output layer (a :class:`UGMMProductLayer`
        with ``output_layer="product"``).

    Examples
    --------
    >>> import torch
    >>> from sklearn_ugmm.nn import UGMMNet
    >>> net = UGMMNet(4, (8,), 3)
    >>> X = torch.randn(10, 4)
    >>> net.init_from_data(X)
    >>> net(X).shape
    torch.Size([10, 3])
    >>> net.score_states(torch.randn(10, 4), index=3, states=torch.tensor([0.0, 1.0])).shape
    torch.Size([10, 2, 3])
    """

    def __init__(self, n_inputs, hidden_layer_sizes, n_outputs, *, output_layer="mixture", **layer_options):
        super().__init__()
        if output_layer not in OUTPUT_LAYERS:
            raise ValueError(f"output_layer must be one of {sorted(OUTPUT_LAYERS)}, got {output_layer!r}")
        sizes = [int(n_inputs), *(int(h) for h in hidden_layer_sizes), int(n_outputs)]
        classes = [UGMMLayer] * (len(sizes) - 2) + [OUTPUT_LAYERS[output_layer]]
        self.layers = nn.ModuleList(
            cls(n_in, n_out, **layer_options) for cls, n_in, n_out in zip(classes, sizes[:-1], sizes[1:])
        )
        self.input_dropout = 0.0
        self.input_dropout_inputs = None

    def set_input_dropout(self, p, n_inputs=None):
        """Drop each observed input of each training sample with probability ``p``.

        In training mode every forward call draws, from the first layer's
        generator, an independent Bernoulli(``p``) mask over the observed
        entries of the batch (among the first ``n_inputs`` inputs; all when
        None) and treats the dropped entries as missing: the first layer
        drops their components and renormalises over the sample's remaining
        inputs, exactly as for a NaN (see :meth:`forward`). A sample keeps at
        least one observed input. The hidden layers are unaffected, and in
        eval mode (inference) nothing is dropped.

        Parameters
        ----------
        p : float in [0, 1)
            Probability of dropping each observed input entry.
        n_inputs : int or None, default=None
            Only the first ``n_inputs`` inputs may be dropped (the
            generative classifier's label input is never dropped).

        Returns
        -------
        self : UGMMNet
            The network itself.
        """
        if not 0.0 <= p < 1.0:
            raise ValueError(f"input dropout must be in [0, 1), got {p}")
        self.input_dropout = float(p)
        self.input_dropout_inputs = None if n_inputs is None else int(n_inputs)
        return self

    def _input_dropout_mask(self, missing):
        """Entries of the batch dropped by input dropout (never a missing one; every row keeps one of the
        droppable inputs it has)."""
        generator = self.layers[0].generator
        device = generator.device if generator is not None else missing.device
        u = torch.rand(missing.shape, generator=generator, device=device).to(missing.device)
        observed = ~missing
        # the first n inputs may be dropped (after them: the generative objective's label input)
        n = missing.shape[1] if self.input_dropout_inputs is None else self.input_dropout_inputs
        drop = (u < self.input_dropout) & observed
        drop[:, n:] = False
        # every row keeps one of those inputs (the label alone is no row of features)
        lost = ~(observed & ~drop)[:, :n].any(dim=1) & observed[:, :n].any(dim=1)
        if bool(lost.any()):
            # a row that would lose them all keeps its observed one with the largest draw
            best = u[:, :n].masked_fill(missing[:, :n], -1.0).argmax(dim=1)
            keep = torch.nn.functional.one_hot(best, u.shape[1]).bool() & lost[:, None]
            drop &= ~keep
        return drop

    @property
    def n_inputs(self):
        return self.layers[0].in_features

    @property
    def n_outputs(self):
        return self.layers[-1].out_features

    def forward(self, x):
        """Pass ``x`` through the layers in turn.

        NaN in ``x`` marks a missing input: the first layer drops its
        components and renormalises each neuron over the observed inputs
        (:meth:`UGMMLayer.forward_observed`); every sample needs at least
        one observed input. In training mode, input dropout
        (:meth:`set_input_dropout`) removes more inputs the same way.

        Parameters
        ----------
        x : Tensor of shape (batch, n_inputs)
            Input variables; NaN where missing.

        Returns
        -------
        out : Tensor of shape (batch, n_outputs)
            Log-density of each output neuron.
        """
        dropout = self.training and getattr(self, "input_dropout", 0.0) > 0  # modules pickled before the option
        if not dropout and not bool(torch.isnan(x.detach().sum())):
            # no NaN: the sum is NaN for any NaN (and for +inf with -inf);
            # one pass without a mask, 20 times cheaper than isnan(x).any()
            missing = None
        else:
            missing = torch.isnan(x)
            if dropout:
                missing = missing | self._input_dropout_mask(missing)
        first, *rest = self.layers  # (slicing a ModuleList builds a new one: 20 us a call)
        if missing is not None and bool(missing.any()):
            x = first.forward_observed(x, ~missing)
        else:
            x = first(x)
        for layer in rest:
            x = layer(x)
        return x

    def precision_penalty(self):
        """Sum over layers of :meth:`UGMMLayer.precision_penalty`.

        Returns
        -------
        penalty : Tensor of shape ()
            ``sum_l mean((reference_scale_l / scale_l) ** 2)``; equal to the
            number of layers at initialisation.
        """
        return sum(layer.precision_penalty() for layer in self.layers)

    def score_states(self, X, index, states):
        """Network output with input ``index`` set to each of ``states``.

        The paper's MPE inference over one discrete input variable, batched:
        the first layer's mixture is split into the part that does not depend
        on input ``index`` (computed once per sample) and the single component
        that does (computed once per state).

        NaN in the other columns marks missing inputs, as in :meth:`forward`:
        the first layer's mixtures are renormalised over each sample's
        observed inputs and the state's component.

        Parameters
        ----------
        X : Tensor of shape (batch, n_inputs)
            Inputs; column ``index`` is ignored, NaN elsewhere is missing.
        index : int
            The input variable to set.
        states : Tensor of shape (n_states,)
            Values to give it.

        Returns
        -------
        scores : Tensor of shape (batch, n_states) or (batch, n_states, n_outputs)
            Network output for each sample and state; the last axis holds
            the output neurons when the network has more than one.
        """
        n_inputs = self.n_inputs
        if X.dim() != 2 or X.shape[1] != n_inputs:
            raise ValueError(f"expected X of shape (batch, {n_inputs}), got {tuple(X.shape)}")
        if not -n_inputs <= index < n_inputs:
            raise IndexError(f"index {index} out of range for {n_inputs} inputs")
        index = index % n_inputs
        if isinstance(self.layers[0], UGMMProductLayer):
            raise ValueError("score_states needs a mixture first layer (a hidden layer, or output_layer='mixture')")
        states = torch.as_tensor(states, dtype=X.dtype, device=X.device).reshape(-1)
        n_batch, n_states = X.shape[0], states.shape[0]

        first = self.layers[0]
        log_w = first.log_weights()
        loc = first.component_loc
        scale = first.scale
        # component `index` of every first-layer neuron, for every state: (states, out)
        z = (states[:, None] - loc[:, index]) / scale[:, index]
        varying = log_w[:, index] - 0.5 * z**2 - torch.log(scale[:, index]) - _HALF_LOG_2PI
        if n_inputs > 1 and bool(torch.isfinite(log_w).sum(dim=1).gt(1).all()):
            rest_w = log_w.clone()
            rest_w[:, index] = -math.inf
            rest = _rest_of_mixture(X, index, loc, scale, rest_w, first)
            h = torch.logaddexp(rest[:, None, :], varying[None, :, :])
            h = _renormalise_over_observed(h, X, index, log_w)
        else:
            # no other live component: recompute the layer row by row
            X_rep = X.repeat_interleave(n_states, dim=0).clone()
            X_rep[:, index] = states.repeat(n_batch)
            missing = torch.isnan(X_rep)
            h = first.forward_observed(X_rep, ~missing) if bool(missing.any()) else first(X_rep)
            h = h.reshape(n_batch, n_states, -1)
        h = h.reshape(n_batch * n_states, -1)
        for layer in self.layers[1:]:
            h = layer(h)
        h = h.reshape(n_batch, n_states, -1)
        return h[..., 0] if self.n_outputs == 1 else h

    @torch.no_grad()
    def init_from_data(self, X, *, generator=None, max_samples=INIT_MAX_SAMPLES, focus=True):
        """Data-dependent initialisation, layer by layer.

        Each layer's components are placed on the activations that actually
        reach it: component means are the activations of randomly drawn
        samples (clipped to the 1st-99th percentile range, so outliers do not
        become centres), scales are robust per-input spreads (inter-quartile
        range; inputs with no spread get the median spread of the others).
        Output neurons start with uniform mixing weights; with ``focus``, a
        hidden neuron gives the components where its template sample is
        within half a spread of the input's median 1/100 of the weight of
        the others, so
        that it starts as a detector of the template's distinctive values
        (otherwise, on data with many near-constant inputs such as image
        borders, components that match every sample swamp the mixture). With
        untied means only; with tied means the evaluation point of
        each neuron is the median of a randomly chosen input, and component
        scales also cover the distance from that point to each input's median.

        Parameters
        ----------
        X : Tensor of shape (n_samples, n_inputs)
            Training inputs (a random subset of ``max_samples`` rows is used).
        generator : torch.Generator, optional
            Source of randomness (the global generator when None).
        max_samples : int, default=INIT_MAX_SAMPLES
            Rows used to compute the statistics.
        focus : bool, default=True
            Focus hidden neurons on their template's distinctive inputs (see
            above); False gives every hidden neuron uniform mixing weights.
        """
        if X.dim() != 2 or X.shape[1] != self.n_inputs:
            raise ValueError(f"expected X of shape (n, {self.n_inputs}), got {tuple(X.shape)}")
        if X.shape[0] == 0:
            raise ValueError("init_from_data needs at least one sample")
        if not bool(torch.isfinite(X).all()):
            raise ValueError("init_from_data needs finite inputs")
        was_training = self.training
        self.eval()
        try:
            if X.shape[0] > max_samples:
                idx = torch.randperm(X.shape[0], generator=generator)[:max_samples]
                X = X[idx.to(X.device)]
            h = X
            for i, layer in enumerate(self.layers):
                _init_layer(layer, h, generator, focus=focus and i < len(self.layers) - 1)
                h = layer(h)
        finally:
            self.train(was_training)

    def _output_layer_inputs(self, X, max_samples):
        """Rows of ``X`` spread over the set (at most ``max_samples``) and what the last layer gets from them.

        The activations are computed in eval mode (no dropout) and returned in float64.
        """
        rows = evenly_spaced_rows(len(X), max_samples)
        was_training = self.training
        self.eval()
        h = X[rows]
        for layer in self.layers[:-1]:
            h = layer(h)
        self.train(was_training)
        return rows, h.double()

    @torch.no_grad()
    def init_output_from_classes(self, X, y_index, n_classes, *, max_samples=INIT_MAX_SAMPLES):
        """Start each output neuron as a naive-Bayes-like mixture over its class.

        Output neuron c gets component means at the median activation of
        class c and scales equal to the within-class spread of each input, so
        training starts from a model that already separates the classes. Call
        after :meth:`init_from_data`; needs untied means.

        Parameters
        ----------
        X : Tensor of shape (n_samples, n_inputs)
            Training inputs (at most ``max_samples`` rows spread over them are used).
        y_index : array-like of int of shape (n_samples,)
            Class of each row, in ``range(n_classes)``.
        n_classes : int
            Number of classes (output neurons).
        max_samples : int, default=INIT_MAX_SAMPLES
            Rows used to compute the statistics.
        """
        rows, h = self._output_layer_inputs(X, max_samples)
        y = torch.as_tensor(np.asarray(y_index)[rows])
        last = self.layers[-1]
        overall = torch.quantile(h, torch.tensor([0.25, 0.75], dtype=h.dtype), dim=0)
        overall_spread = ((overall[1] - overall[0]) / 1.349).clamp(min=10 * last.min_scale)
        loc = last.loc.detach().double().clone()
        scale = last.scale.detach().double().clone()
        for c in range(n_classes):
            members = h[y == c]
            if len(members) == 0:
                continue
            q = torch.quantile(members, torch.tensor([0.25, 0.5, 0.75], dtype=h.dtype), dim=0)
            spread = (q[2] - q[0]) / 1.349
            # classes with too few samples for a spread borrow the overall one
            spread = torch.where(spread > 0.05 * overall_spread, spread, overall_spread)
            loc[c] = q[1]
            scale[c] = spread
        last.loc.copy_(loc.to(last.loc.dtype))
        last.set_scale(scale.to(last.raw_scale.dtype))

    @torch.no_grad()
    def init_output_at_quantile(self, X, quantile=0.95, *, max_samples=INIT_MAX_SAMPLES):
        """Start each output component at a high quantile of its input.

        Output component j models the output of last hidden neuron j; it
        starts at the ``quantile`` of that output over the rows of ``X``.
        For the generative root, the 95th percentile (where the hidden
        neuron's components match) beats the activations of one randomly
        drawn sample, which made the fit depend on the draw (Iris, 5-fold CV
        over seeds 0-9: mean accuracy 0.956 against 0.936; upper quantiles
        0.9-0.99 all beat the median, 0.945). Call after
        :meth:`init_from_data`; needs untied means.

        Parameters
        ----------
        X : Tensor of shape (n_samples, n_inputs)
            Training inputs (at most ``max_samples`` rows spread over them are used).
        quantile : float, default=0.95
            Quantile of each input of the output layer where its components start.
        max_samples : int, default=INIT_MAX_SAMPLES
            Rows used to compute the statistics.
        """
        _, h = self._output_layer_inputs(X, max_samples)
        last = self.layers[-1]
        high = torch.quantile(h, torch.tensor(quantile, dtype=h.dtype), dim=0)
        last.loc.copy_(high.expand_as(last.loc).to(last.loc.dtype))


def _rest_of_mixture(X, index, loc, scale, rest_w, layer):
    """First-layer mixture sums without component ``index``, over each row's observed inputs (NaN: missing)."""
    kernel = getattr(layer, "kernel", "auto")
    observed = ~torch.isnan(X)
    observed[:, index] = True
    incomplete = ~observed.all(dim=1)
    if not bool(incomplete.any()):
        return ugmm_log_density(X, loc, scale, rest_w, block_elements=layer.block_elements, kernel=kernel)
    rest = X.new_empty((X.shape[0], loc.shape[0]))
    complete = ~incomplete
    if bool(complete.any()):
        rest[complete] = ugmm_log_density(
            X[complete], loc, scale, rest_w, block_elements=layer.block_elements, kernel=kernel
        )
    numerator, _ = ugmm_observed_parts(
        X[incomplete], observed[incomplete][:, None, :], loc, scale, rest_w, block_elements=layer.block_elements
    )
    rest[incomplete] = numerator
    return rest


def _renormalise_over_observed(h, X, index, log_w):
    """Divide the first-layer mixtures ``h`` (batch, states, out) of rows with NaN by their observed weight."""
    observed = ~torch.isnan(X)
    observed[:, index] = True
    incomplete = ~observed.all(dim=1)
    if not bool(incomplete.any()):
        return h
    log_mass = torch.logsumexp(log_w.masked_fill(~observed[incomplete][:, None, :], -math.inf), dim=-1)
    h = h.clone()
    h[incomplete] = h[incomplete] - log_mass[:, None, :]
    return h


def _robust_stats(h):
    """Per-column median, spread and 1st/99th percentiles, in float64."""
    h = h.double()
    q = torch.quantile(h, torch.tensor([0.01, 0.25, 0.5, 0.75, 0.99], dtype=h.dtype, device=h.device), dim=0)
    low, q25, median, q75, high = q
    spread = (q75 - q25) / 1.349
    # columns with a degenerate IQR: fall back to the 1-99 range, then to the others
    spread = torch.where(spread > 0, spread, (high - low) / 4.653)
    scale_ref = median.abs().clamp(min=1.0)
    usable = spread > 1e-6 * scale_ref
    if bool(usable.any()):
        fallback = spread[usable].median()
    else:
        fallback = torch.tensor(1.0, dtype=h.dtype, device=h.device)
    spread = torch.where(usable, spread, fallback)
    return median, spread, low, high


#: Initial mixing weight, relative to the others, of a hidden neuron's
#: components whose mean sits at an input's typical value (see _init_layer).
_TYPICAL_WEIGHT = 1e-2
#: An input is concentrated when more than this share of the samples lie
#: within half a spread of its median (a normal variable: 38%).
_CONCENTRATED = 0.5


def _init_layer(layer, h, generator, focus=False):
    n_samples = h.shape[0]
    median, spread, low, high = _robust_stats(h)
    n_out, n_in = layer.out_features, layer.in_features
    dtype, device = layer.loc.dtype, layer.loc.device
    if layer.tie_means:
        column = torch.randint(n_in, (n_out,), generator=generator)
        loc = median[column.to(median.device)]
        scale = torch.sqrt(spread[None, :] ** 2 + (loc[:, None] - median[None, :]) ** 2)
    else:
        rows = torch.randint(n_samples, (n_out,), generator=generator).to(h.device)
        loc = torch.minimum(torch.maximum(h[rows].double(), low), high)
        scale = spread[None, :].expand(n_out, n_in)
    # keep the parameters inside a range where float32 arithmetic stays exact enough
    scale = scale.clamp(min=10 * layer.min_scale, max=1e15)
    layer.loc.copy_(loc.to(dtype=dtype, device=device))
    layer.set_scale(scale.to(dtype=dtype, device=device))
    layer.logits.zero_()
    if focus and not layer.tie_means:
        # A component centred on an input's typical value matches almost every
        # sample; on data with many (near-)constant inputs (image borders) such
        # components dominate the mixture and the neuron's output hardly varies
        # from sample to sample. Weight the inputs where the neuron's template
        # sample is atypical instead, so that the neuron starts as a detector
        # of that template's distinctive values.
        near = (h.double() - median).abs() <= 0.5 * spread
        concentrated = near.double().mean(dim=0) > _CONCENTRATED
        typical = ((loc - median[None, :]).abs() <= 0.5 * spread[None, :]) & concentrated[None, :]
        layer.logits.masked_fill_(typical.to(device), math.log(_TYPICAL_WEIGHT))
