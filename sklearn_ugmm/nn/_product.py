"""The product layer: neurons that add up weighted Gaussian evidence from their inputs."""

import torch

from . import _fused
from ._functional import _HALF_LOG_2PI, DEFAULT_BLOCK_ELEMENTS, _in_float32, _z_limit
from ._layer import UGMMLayer, _kept_components

__all__ = ["UGMMProductLayer", "product_log_density"]


def product_log_density(
    x, loc, scale, log_weights, *, observed=None, dropped=None, block_elements=DEFAULT_BLOCK_ELEMENTS
):
    """Weighted sum over inputs of univariate Gaussian log-densities.

    ::

        out[b, j] = sum_k w[j, k] * log N(x[b, k] | loc[j, k], scale[j, k]**2),   w = exp(log_weights)

    the log of the weighted product of experts ``prod_k N(x_k)^w_jk``.
    Components in ``dropped`` and, per sample, those of inputs not in
    ``observed`` are left out and the weights renormalised over the rest:
    ``out[b, j] = sum_{k kept} w[j, k] log N(...) / sum_{k kept} w[j, k]``.
    A neuron that would keep none of a sample's observed inputs keeps them
    all (as :class:`UGMMLayer` does).

    The standardised distance is clipped as in :func:`ugmm_log_density`, so
    outputs stay finite. Rows are processed in blocks of at most
    ``block_elements`` (batch x out x in) elements.

    Parameters
    ----------
    x : Tensor of shape (batch, in)
        Inputs; entries that are not observed are ignored (NaN is fine).
    loc, scale : Tensor of shape (out, in)
        Component means and standard deviations (strictly positive).
    log_weights : Tensor of shape (out, in)
        Log weights, each row's weights summing to one.
    observed : bool Tensor of shape (batch, in), optional
        Which inputs each sample has (all when None).
    dropped : bool Tensor of shape (out, in), optional
        Components removed for every sample (dropout); none when None.
    block_elements : int, default=DEFAULT_BLOCK_ELEMENTS
        Largest (batch x out x in) block held in memory at once.

    Returns
    -------
    Tensor of shape (batch, out)
        The weighted log-density sum of each neuron at each sample.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, 3)
    >>> log_w = torch.full((4, 3), 1 / 3).log()
    >>> product_log_density(x, torch.zeros(4, 3), torch.ones(4, 3), log_w)[0, 0]
    tensor(-0.9189)
    """
    if x.dtype == torch.float16:
        return _in_float32(
            product_log_density, x, loc, scale, log_weights, observed=observed, dropped=dropped,
            block_elements=block_elements,
        )
    n_out, n_in = loc.shape
    limit = _z_limit(x.dtype)
    log_norm = torch.log(scale) + _HALF_LOG_2PI
    if dropped is None:
        weights = log_weights.exp()
    else:
        weights = torch.softmax(log_weights.masked_fill(dropped, -torch.inf), dim=1)
    if observed is not None:
        observed = observed.to(device=x.device, dtype=torch.bool)
        x = x.masked_fill(~observed, 0.0)  # no NaN, even in the gradients of the unused entries
        removed = torch.zeros_like(weights, dtype=torch.bool) if dropped is None else dropped
        present = torch.zeros_like(log_weights).masked_fill(removed, -torch.inf)
    rows = max(1, int(block_elements) // max(1, n_out * n_in))
    blocks = []
    for start in range(0, max(x.shape[0], 1), rows):  # (an empty batch: one empty block, in the graph)
        z = ((x[start : start + rows, None, :] - loc) / scale).clamp(-limit, limit)
        terms = -0.5 * z * z - log_norm
        if observed is None:
            blocks.append((terms * weights).sum(dim=-1))
            continue
        keep = _kept_components(observed[start : start + rows], present)
        kept_weights = torch.softmax(log_weights.masked_fill(~keep, -torch.inf), dim=-1)
        blocks.append((torch.where(keep, terms, 0.0) * kept_weights).sum(dim=-1))
    return torch.cat(blocks)


class UGMMProductLayer(UGMMLayer):
    """A layer of Gaussian product neurons: weighted evidence summed over the inputs.

    Neuron ``j`` holds the same parameters as a :class:`UGMMLayer` neuron (a
    Gaussian and a weight per input) but multiplies its components instead of
    mixing them::

        out_j(x) = sum_k pi_jk * log N(x_k | mu_jk, sigma_jk**2),   pi_j = softmax(logits_j)

    the log of the weighted product of experts ``prod_k N(x_k)^pi_jk`` (the
    weighted geometric mean of the components, where a uGMM neuron takes
    their arithmetic mean). A uGMM neuron is high when *any* input matches
    its component (an OR over the inputs); a product neuron adds up the
    evidence of *all* of them (an AND), so it can weigh many weak cues.
    As the output layer of a classifier it is a Gaussian naive Bayes over
    the last hidden layer, each input's log-likelihood weighted.

    Dropout removes components and renormalises the weights over the rest,
    as in :class:`UGMMLayer`; :meth:`forward_observed` does the same for
    missing inputs. No exponential is evaluated, so the cost per component
    is a few multiply-adds. On the CPU, calls without dropout or missing
    inputs run on the fused kernel library (forward and backward; the
    estimators' prediction, inside
    :func:`sklearn_ugmm.nn._fused.inference_routes`, on a route that keeps
    its prepared parameters) unless ``kernel="reference"``; the others on
    PyTorch (:func:`product_log_density`).

    Parameters
    ----------
    in_features : int
        Number of inputs (one component per input in every neuron).
    out_features : int
        Number of neurons.
    dropout : float in [0, 1), default=0.0
        Probability of removing each component in a training forward pass.
    tie_means : bool, default=False
        Tie the component means to the inputs (one evaluation point per
        neuron), as in :class:`UGMMLayer`.
    min_scale : float, default=1e-3
        Floor of the standard deviations.
    block_elements : int, default=DEFAULT_BLOCK_ELEMENTS
        Largest (batch x out x in) block held in memory at once.
    kernel : {"auto", "fused", "reference"}, default="auto"
        As for :class:`UGMMLayer`: "reference" keeps every call on PyTorch,
        "auto" takes the kernel library for calls of at least
        ``AUTO_FUSED_MIN_COMPONENTS`` components, "fused" for all it can
        take.
    generator : torch.Generator, optional
        Source of randomness for the initial parameters and the dropout
        masks; the global generator when None.
    device, dtype : optional
        Factory arguments, as for :class:`torch.nn.Linear`.

    Examples
    --------
    >>> import torch
    >>> from sklearn_ugmm.nn import UGMMProductLayer
    >>> layer = UGMMProductLayer(4, 3)
    >>> layer(torch.randn(8, 4)).shape
    torch.Size([8, 3])
    """

    def forward(self, x):
        """Weighted sum of each neuron's component log-densities for each row of ``x``.

        Parameters
        ----------
        x : Tensor of shape (batch, in_features)
            Input activations.

        Returns
        -------
        out : Tensor of shape (batch, out_features)
            ``sum_k pi_jk log N(x_k | mu_jk, sigma_jk**2)`` of each neuron.
        """
        self._check_input(x)
        if self._on_prediction_route(x):
            out = _fused.cached_product_log_density(self, x, _z_limit(x.dtype))
            if out is not None:
                return out
        log_weights = torch.log_softmax(self.logits, dim=1)
        if self._on_kernel_library(x):
            out = _fused.product_log_density_fused(x, self.component_loc, self.scale, log_weights, _z_limit(x.dtype))
            if out is not None:
                return out
        return product_log_density(
            x, self.component_loc, self.scale, log_weights, dropped=self._dropped(), block_elements=self.block_elements,
        )

    def forward_observed(self, x, observed):
        """Layer output when only some inputs of each sample are observed.

        Each neuron sums over the sample's observed inputs (and the
        components dropout left) with its weights renormalised over them.

        Parameters
        ----------
        x : Tensor of shape (batch, in_features)
            Input activations; entries that are not observed are ignored.
        observed : bool Tensor of shape (batch, in_features)
            Which inputs each sample has; every sample needs at least one.

        Returns
        -------
        out : Tensor of shape (batch, out_features)
            Each neuron's weighted sum over the sample's kept components.
        """
        observed = self._check_observed(x, observed)
        return product_log_density(
            x, self.component_loc, self.scale, torch.log_softmax(self.logits, dim=1),
            observed=observed, dropped=self._dropped(), block_elements=self.block_elements,
        )

    def _dropped(self):
        """This forward pass's dropout mask (None outside training or without dropout)."""
        return self._dropout_mask() if self.training and self.dropout > 0 else None
