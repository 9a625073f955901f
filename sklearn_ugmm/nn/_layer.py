"""The uGMM layer: a layer of univariate Gaussian mixture neurons."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import _fused
from ._functional import (
    DEFAULT_BLOCK_ELEMENTS,
    KERNELS,
    _fused_applies,
    _z_limit,
    fused_observed_log_density,
    ugmm_log_density,
    ugmm_observed_parts,
)

__all__ = ["UGMMLayer"]


def _inverse_softplus(y):
    # log(expm1(y)) computed without overflow for large y
    return y + torch.log(-torch.expm1(-y))


def raw_scale_for(scale, min_scale):
    """The unconstrained value whose ``min_scale + softplus`` is ``scale``.

    Values at or below ``min_scale`` are raised just above it and values are
    capped at 1e30. 16-bit values are converted in float32, whose range the
    bounds need.
    """
    work = scale.float() if scale.dtype in (torch.float16, torch.bfloat16) else scale
    excess = (work - min_scale).clamp(min=1e-6 * max(min_scale, 1e-30), max=1e30)
    return _inverse_softplus(excess).to(scale.dtype)


class GeneratorMixin:
    """``set_generator`` for a module made of uGMM layers."""

    def set_generator(self, generator):
        """Use ``generator`` for every uGMM layer's dropout masks.

        Parameters
        ----------
        generator : torch.Generator or None
            Source of randomness for the dropout masks; the global
            generator when None.

        Returns
        -------
        self : nn.Module
            The module itself.
        """
        for module in self.modules():
            if isinstance(module, UGMMLayer):
                module.generator = generator
        return self


class UGMMLayer(nn.Module):
    """A layer of uGMM neurons (arXiv 2509.07569).

    Neuron ``j`` is a univariate Gaussian mixture with one component per
    input ``k``; its output is a log-density. In eval mode::

        out[b, j] = logsumexp_k( log_softmax(logits)[j, k]
                                 + log N(x[b, k] | loc[j, k], scale[j, k]**2) )

    With ``tie_means=True`` (the paper's parameter tying) the component means
    are the incoming activations and neuron ``j`` evaluates its mixture at a
    learned point ``loc[j]``::

        out[b, j] = logsumexp_k( log_softmax(logits)[j, k]
                                 + log N(loc[j] | x[b, k], scale[j, k]**2) )

    Parameters
    ----------
    in_features : int
        Number of inputs (components per neuron).
    out_features : int
        Number of neurons.
    dropout : float, default=0.0
        Probability of removing each mixture component during training (its
        logit is set to -inf). The mask is drawn once per forward call and
        shared by the batch; a neuron never loses all its components. No
        effect in eval mode.
    tie_means : bool, default=False
        Tie the component means to the incoming activations.
    min_scale : float, default=1e-3
        Floor added to every standard deviation. It bounds each log-density
        above by ``-log(min_scale) - log(2 pi) / 2``, so no objective can run
        to +infinity.
    block_elements : int, default=2**20
        Bound on the size of the (in, batch block, out) work tensors; see
        :func:`~sklearn_ugmm.nn.ugmm_log_density`.
    kernel : {"auto", "fused", "reference"}, default="auto"
        Implementation of the layer's log-density; see
        :func:`~sklearn_ugmm.nn.ugmm_log_density`.
    generator : torch.Generator, optional
        Source of randomness for the initial parameters and the dropout
        masks; the global generator when None.
    device, dtype : optional
        Factory arguments, as for :class:`torch.nn.Linear`.

    Attributes
    ----------
    loc : Parameter of shape (out_features, in_features), or (out_features,)
        Component means (``tie_means=False``) or the evaluation points.
    raw_scale : Parameter of shape (out_features, in_features)
        Unconstrained scales: ``scale = min_scale + softplus(raw_scale)``.
    logits : Parameter of shape (out_features, in_features)
        Unnormalised log mixing weights.
    reference_scale : buffer of shape (out_features, in_features)
        The scales as last set by :meth:`set_scale` (the initialisation); the
        reference of :meth:`precision_penalty`.
    generator : torch.Generator or None
        Source of randomness for dropout masks (the global generator when
        None).

    Examples
    --------
    >>> import torch
    >>> from sklearn_ugmm.nn import UGMMLayer
    >>> layer = UGMMLayer(4, 3)
    >>> layer(torch.randn(8, 4)).shape
    torch.Size([8, 3])
    >>> layer.scale.shape
    torch.Size([3, 4])
    """

    def __init__(
        self,
        in_features,
        out_features,
        *,
        dropout=0.0,
        tie_means=False,
        min_scale=1e-3,
        block_elements=DEFAULT_BLOCK_ELEMENTS,
        kernel="auto",
        generator=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError("in_features and out_features must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not min_scale > 0:
            raise ValueError(f"min_scale must be positive, got {min_scale}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.dropout = float(dropout)
        self.tie_means = bool(tie_means)
        self.min_scale = float(min_scale)
        self.block_elements = int(block_elements)
        self.kernel = kernel
        self.generator = generator
        loc_shape = (out_features,) if tie_means else (out_features, in_features)
        self.loc = nn.Parameter(torch.empty(loc_shape, **factory))
        self.raw_scale = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.logits = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.register_buffer("reference_scale", torch.ones(out_features, in_features, **factory))
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        """Random initialisation as in the reference code.

        Means ~ N(0, 1), scales ~ U(0, 1) (plus the floor), uniform weights.

        Parameters
        ----------
        generator : torch.Generator, optional
            Source of randomness for the means and scales; the global
            generator when None.
        """
        with torch.no_grad():
            self.loc.copy_(torch.randn(self.loc.shape, generator=generator, dtype=self.loc.dtype))
            scale = torch.rand(self.raw_scale.shape, generator=generator, dtype=self.raw_scale.dtype)
            self.set_scale(scale.clamp_(min=1e-2) + self.min_scale)
            self.logits.zero_()

    @property
    def scale(self):
        """Effective standard deviations, shape (out_features, in_features)."""
        return self.min_scale + F.softplus(self.raw_scale)

    def set_scale(self, scale):
        """Set ``raw_scale`` so that :attr:`scale` equals ``scale`` (floored).

        Parameters
        ----------
        scale : float or Tensor broadcastable to (out_features, in_features)
            The new standard deviations. Values at or below ``min_scale``
            are raised just above it, and values are capped at 1e30. They
            also become :attr:`reference_scale`.
        """
        scale = torch.as_tensor(scale, dtype=self.raw_scale.dtype, device=self.raw_scale.device)
        with torch.no_grad():
            self.raw_scale.copy_(raw_scale_for(scale, self.min_scale).expand_as(self.raw_scale))
            self.reference_scale.copy_(self.scale)

    def precision_penalty(self):
        """Mean squared precision of the components relative to their reference.

        ``mean((reference_scale / scale) ** 2)``: 1 at initialisation, large
        when components have become much narrower than they started (sharp,
        overconfident mixtures).

        Returns
        -------
        penalty : Tensor of shape ()
            Differentiable with respect to ``raw_scale``.
        """
        return ((self.reference_scale / self.scale) ** 2).mean()

    @property
    def component_loc(self):
        """Component means, shape (out_features, in_features).

        With tied means the component means are the inputs themselves; this
        then returns ``loc`` broadcast to one evaluation point per neuron.
        """
        if self.tie_means:
            return self.loc[:, None].expand(self.out_features, self.in_features)
        return self.loc

    def log_weights(self):
        """Log mixing weights, with this forward pass's dropout applied.

        In training mode with ``dropout > 0`` a new dropout mask is drawn on
        every call; dropped components get weight zero (log-weight -inf).

        Returns
        -------
        log_weights : Tensor of shape (out_features, in_features)
            ``log_softmax`` of the logits over each neuron's components.
        """
        logits = self.logits
        if self.training and self.dropout > 0:
            logits = logits.masked_fill(self._dropout_mask(), -math.inf)
        return torch.log_softmax(logits, dim=1)

    def _dropout_mask(self, allowed=None):
        """Components dropped in this forward pass, among the ``allowed`` ones (all when None).

        A neuron that would lose every allowed component keeps the one with
        the largest uniform draw.
        """
        gen = self.generator
        gen_device = gen.device if gen is not None else self.logits.device
        u = torch.rand(self.logits.shape, generator=gen, device=gen_device).to(self.logits.device)
        drop = u < self.dropout
        live = ~drop
        if allowed is not None:
            drop &= allowed
            live = allowed & live
            u = u.masked_fill(~allowed, -1.0)
        lost = ~live.any(dim=1)
        if bool(lost.any()):
            keep = F.one_hot(u.argmax(dim=1), u.shape[1]).bool() & lost[:, None]
            drop &= ~keep
        return drop

    def forward(self, x):
        """Log-density of every neuron's mixture for each row of ``x``.

        Parameters
        ----------
        x : Tensor of shape (batch, in_features)
            Input activations.

        Returns
        -------
        out : Tensor of shape (batch, out_features)
            Output log-density of each neuron.
        """
        self._check_input(x)
        # N(loc | x, s^2) = N(x | loc, s^2): tied means use the same kernel
        kernel = getattr(self, "kernel", "auto")  # layers pickled before the option
        if (
            type(self).log_weights is UGMMLayer.log_weights  # subclasses may mask the weights
            and type(self).scale is UGMMLayer.scale
            and type(self).component_loc is UGMMLayer.component_loc
            and self._on_prediction_route(x)
        ):
            # inference: the parameters' part of the kernel's work is kept between calls
            out = _fused.cached_log_density(self, x, _z_limit(x.dtype))
            if out is not None:
                return out
        log_weights = None
        if (
            kernel != "reference"
            and x.dtype == torch.float32
            and type(self).log_weights is UGMMLayer.log_weights  # subclasses may mask the weights
            and _fused_applies(x, self.component_loc, self.raw_scale, self.logits, kernel)
        ):
            # float32 on the fused kernel: softplus and log_softmax inside it too
            logits = self.logits
            if self.training and self.dropout > 0:
                logits = logits.masked_fill(self._dropout_mask(), -math.inf)
            out = _fused.layer_log_density(
                x, self.component_loc, self.raw_scale, self.min_scale, logits, _z_limit(x.dtype)
            )
            if out is not None:
                return out
            log_weights = torch.log_softmax(logits, dim=1)  # distances need clipping: same dropout mask
        return ugmm_log_density(
            x,
            self.component_loc,
            self.scale,
            self.log_weights() if log_weights is None else log_weights,
            block_elements=self.block_elements,
            kernel=kernel,
        )

    def _on_kernel_library(self, x, prediction=False):
        """Whether the fused kernel library takes this call without dropout (``kernel`` allowing;
        ``prediction``: a prediction route's call, see :func:`_fused_applies`)."""
        kernel = getattr(self, "kernel", "auto")  # layers pickled before the option
        return (
            kernel != "reference"
            and not (self.training and self.dropout > 0)
            and _fused_applies(x, self.loc, self.raw_scale, self.logits, kernel, prediction=prediction)
        )

    def _on_prediction_route(self, x):
        """Whether this call is the estimators' prediction (:func:`_fused.inference_routes`, no
        gradient wanted, no dropout) and runs on the kernel library's prediction route."""
        return (
            _fused.inference_routes_active()  # only the estimators' evaluation copies: never stepped in place
            and not (torch.is_grad_enabled() and any(p.requires_grad for p in (x, self.loc, self.raw_scale, self.logits)))
            and self._on_kernel_library(x, prediction=True)
        )

    def forward_observed(self, x, observed):
        """Layer output when only some inputs of each sample are observed.

        Each neuron drops the components of a sample's missing inputs and
        renormalises its mixture over the observed ones (the paper's
        component dropout, applied per sample)::

            out[b, j] = logsumexp_{k observed}( log w[j, k] + log N(x[b, k] | loc[j, k], scale[j, k]**2) )
                        - logsumexp_{k observed} log w[j, k]

        Where the fused kernel applies (see
        :func:`~sklearn_ugmm.nn.ugmm_log_density`'s ``kernel``) every sample
        goes through it, missing inputs left out of its sums, with the
        renormaliser computed as ``log(observed @ weights.T)``. Otherwise
        samples with every input observed go through :meth:`forward`'s
        kernel and the others through the plain, row-blocked formula
        (:func:`~sklearn_ugmm.nn.ugmm_observed_parts`), the reference.
        In training mode the components removed by dropout are dropped
        too, with one dropout mask for the whole batch; a neuron that would
        be left with no component for a sample keeps all its observed ones.

        Parameters
        ----------
        x : Tensor of shape (batch, in_features)
            Input activations; entries that are not observed are ignored
            (NaN is fine).
        observed : bool Tensor of shape (batch, in_features)
            Which inputs each sample has; every sample needs at least one.

        Returns
        -------
        out : Tensor of shape (batch, out_features)
            Output log-density of each neuron.
        """
        observed = self._check_observed(x, observed)
        log_weights = self.log_weights()
        kernel = getattr(self, "kernel", "auto")  # layers pickled before the option
        if kernel != "reference" and _fused_applies(x, self.component_loc, self.scale, log_weights, kernel):
            out, redo = fused_observed_log_density(x, observed, self.component_loc, self.scale, log_weights)
            if out is not None:
                if redo is not None:
                    out = out.index_put((redo,), self._observed_plain(x[redo], observed[redo], log_weights))
                return out
        return self._observed_plain(x, observed, log_weights)

    def _check_input(self, x):
        """Raise a ValueError unless ``x`` has shape (batch, in_features), a RuntimeError unless the layer's dtype."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"expected input of shape (batch, {self.in_features}), got {tuple(x.shape)}"
            )
        self._check_dtype(x)

    def _check_dtype(self, x):
        # as nn.Linear: no silent promotion (the backward pass would fail on the mix)
        if x.dtype != self.logits.dtype:
            raise RuntimeError(
                f"expected input of the layer's dtype {self.logits.dtype}, got {x.dtype}; "
                "convert the input (x.to(dtype)) or the layer (layer.to(dtype))"
            )

    def _check_observed(self, x, observed):
        """``observed`` as a bool mask on ``x``'s device; a ValueError unless every sample has an input."""
        if x.dim() != 2 or x.shape[1] != self.in_features or observed.shape != x.shape:
            raise ValueError(
                f"expected input and observed mask of shape (batch, {self.in_features}), "
                f"got {tuple(x.shape)} and {tuple(observed.shape)}"
            )
        self._check_dtype(x)
        observed = observed.to(device=x.device, dtype=torch.bool)
        if not bool(observed.any(dim=1).all()):
            raise ValueError("every sample needs at least one observed input")
        return observed

    def _observed_plain(self, x, observed, log_weights):
        """:meth:`forward_observed` with the plain formula for rows that miss inputs."""
        if x.shape[0] == 0:  # (an empty output in the graph, as forward's)
            return ugmm_log_density(x, self.component_loc, self.scale, log_weights, kernel="reference")
        complete = observed.all(dim=1)
        out = x.new_empty((x.shape[0], self.out_features))
        if bool(complete.any()):
            out[complete] = ugmm_log_density(
                x[complete], self.component_loc, self.scale, log_weights,
                block_elements=self.block_elements, kernel=getattr(self, "kernel", "auto"),
            )
        incomplete = ~complete
        if bool(incomplete.any()):
            keep = _kept_components(observed[incomplete], log_weights, getattr(self, "mask", None))
            numerator, log_mass = ugmm_observed_parts(
                x[incomplete], keep, self.component_loc, self.scale, torch.log_softmax(self.logits, dim=1),
                block_elements=self.block_elements,
            )
            out[incomplete] = numerator - log_mass
        return out

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"dropout={self.dropout}, tie_means={self.tie_means}, min_scale={self.min_scale}"
        )


def _kept_components(observed, log_weights, allowed=None):
    """(batch, out, in) mask of the components each neuron keeps for each sample.

    The observed inputs' components that ``log_weights`` has not removed
    (dropout); a neuron left with none for a sample keeps all its observed
    ones (of those ``allowed``, an (out, in) mask, when given).
    """
    keep = observed[:, None, :] & torch.isfinite(log_weights)[None]
    lost = ~keep.any(dim=2, keepdim=True)
    fallback = observed[:, None, :] if allowed is None else observed[:, None, :] & allowed[None]
    return keep | (lost & fallback)
