"""A normalised density built from uGMM neurons: the autoregressive uGMM.

The root score of the paper's uGMM-NN is not a density: already for one
layer, ``sum_k pi_k N(x_k | mu_k, sigma_k^2)`` integrates to infinity over
R^D when D > 1. :class:`AutoregressiveUGMM` keeps the uGMM neurons but
arranges them so that the result is a true, normalised density that can be
sampled exactly::

    p(x) = prod_d p(x_d | x_<d)

* The hidden layers are :class:`MaskedUGMMLayer` s: uGMM layers whose
  mixing weights are masked with MADE degrees (a disallowed input gets the
  mixing logit ``-inf``, the same mechanism as dropout), so that a hidden
  neuron of degree ``m`` only sees the first ``m`` variables of the order.
* Every conditional ``p(x_d | x_<d)`` is a genuine uGMM neuron over the
  actual variable ``x_d``: a univariate Gaussian mixture whose components are
  tied to the hidden neurons of degree ``< d`` (the component mean is an
  affine map of the neuron's activation -- the paper's parameter tying --
  and its log-weight and log-scale are gated by it), plus
  ``n_free_components`` free components. All component means share a masked
  linear term ``sum_{k<d} W[d, k] x_k``, so a full-covariance Gaussian (a
  Cholesky factorisation) is a special case; each free component adds its
  own masked linear term and scale, and its log-weight at
  position ``d`` is gated by the log-likelihood of ``x_<d`` under that
  component's own chain of conditionals, so the free components alone form
  an exact mixture of full-covariance Gaussians (see
  :meth:`AutoregressiveUGMM.init_from_mixture`); their weights are further
  gated linearly by the allowed hidden activations.

Each conditional is a normalised univariate mixture of ``x_d`` whatever
``x_<d``, hence ``exp(log_prob)`` integrates to one and ancestral sampling
draws exactly from it.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._functional import _HALF_LOG_2PI, DEFAULT_BLOCK_ELEMENTS, _z_limit
from ._layer import GeneratorMixin, UGMMLayer, raw_scale_for
from ._net import INIT_MAX_SAMPLES, _init_layer, _robust_stats

__all__ = ["AutoregressiveUGMM", "MaskedUGMMLayer", "hidden_degrees"]
# hidden activations enter the output neurons through c * tanh(u / c)
_FEATURE_BOUND = 3.0


def hidden_degrees(n_features, size):
    """Deterministic MADE degrees of a hidden layer, evenly spread on 1..D-1.

    With a single feature there is nothing to condition on; the degrees are
    then all 1 (such neurons reach no output).
    """
    top = max(int(n_features) - 1, 1)
    return 1 + (torch.arange(int(size)) * top) // int(size)


class MaskedUGMMLayer(UGMMLayer):
    """A :class:`UGMMLayer` whose neurons see only some of their inputs.

    ``mask[j, k]`` says whether neuron ``j`` has a component on input ``k``;
    a disallowed component gets the mixing logit ``-inf``. In training mode
    dropout removes allowed components only, and a neuron always keeps at
    least one allowed component.

    Parameters
    ----------
    in_features : int
        Number of inputs (components per neuron).
    out_features : int
        Number of neurons.
    mask : bool tensor of shape (out_features, in_features), optional
        Allowed connections (all allowed when None). Every row needs at least
        one allowed entry.
    **options
        Passed to :class:`UGMMLayer` (``dropout``, ``min_scale``,
        ``block_elements``, ``device``, ``dtype``, ``tie_means``).

    Attributes
    ----------
    mask : bool buffer of shape (out_features, in_features)

    Examples
    --------
    >>> import torch
    >>> from sklearn_ugmm.nn import MaskedUGMMLayer
    >>> mask = torch.tensor([[True, False], [True, True]])
    >>> layer = MaskedUGMMLayer(2, 2, mask=mask)
    >>> layer.log_weights()[0, 1].item()
    -inf
    """

    def __init__(self, in_features, out_features, *, mask=None, **options):
        super().__init__(in_features, out_features, **options)
        device = self.logits.device
        self.register_buffer(
            "mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device)
        )
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask):
        """Set the allowed connections.

        Parameters
        ----------
        mask : bool array-like of shape (out_features, in_features)
            ``mask[j, k]`` is True when neuron ``j`` has a component on
            input ``k``. Every row needs at least one True entry.

        Returns
        -------
        self : MaskedUGMMLayer
            The layer itself.
        """
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.mask.device)
        if mask.shape != self.mask.shape:
            raise ValueError(f"mask must have shape {tuple(self.mask.shape)}, got {tuple(mask.shape)}")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every neuron needs at least one allowed input")
        self.mask.copy_(mask)
        return self

    def forward_observed(self, x, observed):
        """:meth:`UGMMLayer.forward_observed` over each neuron's allowed inputs.

        Every neuron needs at least one observed allowed input in each
        sample: it never reads a disallowed one.

        Parameters
        ----------
        x : Tensor of shape (batch, in_features)
            Input activations; entries that are not observed are ignored.
        observed : bool Tensor of shape (batch, in_features)
            Which inputs each sample has.

        Returns
        -------
        out : Tensor of shape (batch, out_features)
            Output log-density of each neuron.
        """
        observed = self._check_observed(x, observed)
        blind = ~(observed[:, None, :] & self.mask[None]).any(dim=2)
        if bool(blind.any()):
            sample, neuron = (int(i) for i in blind.nonzero()[0])
            raise ValueError(
                f"neuron {neuron} sees none of its allowed inputs in sample {sample}: every neuron of a "
                "masked layer needs one observed allowed input"
            )
        return super().forward_observed(x, observed)

    def log_weights(self):
        """Masked log mixing weights, with this forward pass's dropout applied.

        Returns
        -------
        log_weights : Tensor of shape (out_features, in_features)
            ``log_softmax`` of the logits over each neuron's components;
            disallowed (and, in training mode, dropped) components get -inf.
        """
        remove = ~self.mask
        if self.training and self.dropout > 0:
            remove = remove | self._dropout_mask(allowed=self.mask)
        return torch.log_softmax(self.logits.masked_fill(remove, -math.inf), dim=1)


class AutoregressiveUGMM(GeneratorMixin, nn.Module):
    """Autoregressive density of uGMM neurons: ``exp(log_prob)`` integrates to 1.

    Parameters
    ----------
    n_features : int
        Dimension D of the data.
    hidden_layer_sizes : sequence of int, default=(64,)
        Sizes of the masked uGMM hidden layers (may be empty: the model is
        then a Gaussian-mixture-noise linear autoregression).
    n_free_components : int, default=8
        Components of every conditional that do not depend on a hidden
        neuron (the only components of the first variable's marginal).
    order : sequence of int, optional
        Permutation of the features: the variable order of the factorisation
        (``order[0]`` comes first). Identity when None.
    dropout : float, default=0.0
        Dropout of the hidden layers' mixture components (training only).
    min_scale : float, default=1e-3
        Floor of every standard deviation, so the likelihood is bounded.
    block_elements : int
        Work-tensor bound of the hidden layers and of the output mixtures.
    generator : torch.Generator, optional
        Source of randomness for the initial parameters and the dropout
        masks; the global generator when None.
    device, dtype : optional
        Factory arguments.

    Attributes
    ----------
    hidden : nn.ModuleList of MaskedUGMMLayer
    linear : Parameter (D, D)
        Linear autoregression, masked to its strictly lower triangle (in the
        variable order).
    out_mask : bool buffer (D, H)
        Which hidden neurons of the last layer each conditional uses.

    Examples
    --------
    >>> import torch
    >>> from sklearn_ugmm.nn import AutoregressiveUGMM
    >>> X = torch.randn(100, 3)
    >>> model = AutoregressiveUGMM(3, (16,))
    >>> model.init_from_data(X, generator=torch.Generator().manual_seed(0))
    >>> model.log_prob(X).shape
    torch.Size([100])
    >>> model.sample(5, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5, 3])
    """

    def __init__(
        self,
        n_features,
        hidden_layer_sizes=(64,),
        *,
        n_free_components=8,
        order=None,
        dropout=0.0,
        min_scale=1e-3,
        block_elements=DEFAULT_BLOCK_ELEMENTS,
        generator=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        D = int(n_features)
        if D < 1:
            raise ValueError("n_features must be positive")
        if int(n_free_components) < 1:
            raise ValueError("n_free_components must be at least 1")
        if not min_scale > 0:
            raise ValueError("min_scale must be positive")
        sizes = [int(h) for h in hidden_layer_sizes]
        if any(h < 1 for h in sizes):
            raise ValueError("hidden layer sizes must be positive")
        factory = {"device": device, "dtype": dtype}
        self.n_features = D
        self.hidden_layer_sizes = tuple(sizes)
        self.n_free_components = int(n_free_components)
        self.min_scale = float(min_scale)
        self.block_elements = int(block_elements)

        if order is None:
            order = torch.arange(D)
        order = torch.as_tensor(order, dtype=torch.long).reshape(-1)
        if order.numel() != D or not torch.equal(order.sort().values, torch.arange(D)):
            raise ValueError(f"order must be a permutation of range({D})")
        self.register_buffer("order", order.to(device))
        self.register_buffer("inverse_order", torch.argsort(order).to(device))

        # MADE degrees: input (position) d has degree d + 1
        in_deg = torch.arange(1, D + 1)
        self.hidden = nn.ModuleList()
        prev = in_deg
        for i, size in enumerate(sizes):
            deg = hidden_degrees(D, size)
            mask = deg[:, None] >= prev[None, :]
            layer = MaskedUGMMLayer(
                prev.numel(), size, mask=mask.to(device), dropout=dropout,
                min_scale=min_scale, block_elements=block_elements, generator=generator, **factory,
            )
            self.hidden.append(layer)
            self.register_buffer(f"degrees_{i}", deg.to(device))
            prev = deg
        H = sizes[-1] if sizes else 0
        self.n_tied = H
        out_mask = in_deg[:, None] > prev[None, :] if sizes else torch.zeros(D, 0, dtype=torch.bool)
        self.register_buffer("out_mask", out_mask.to(device))
        self.register_buffer("linear_mask", torch.ones(D, D, dtype=torch.bool).tril(-1).to(device))
        # standardisation of the last hidden activations (set by init_from_data)
        self.register_buffer("feature_shift", torch.zeros(H, **factory))
        self.register_buffer("feature_scale", torch.ones(H, **factory))

        K = self.n_free_components
        self.linear = nn.Parameter(torch.zeros(D, D, **factory))
        self.free_loc = nn.Parameter(torch.zeros(D, K, **factory))
        self.free_raw_scale = nn.Parameter(torch.zeros(D, K, **factory))
        self.free_logits = nn.Parameter(torch.zeros(D, K, **factory))
        # components tied to hidden neuron j: mean = bias + slope * f_j,
        # log-weight = logit + gate * f_j, raw scale = raw_scale + scale_gate * f_j
        self.tied_bias = nn.Parameter(torch.zeros(D, H, **factory))
        self.tied_slope = nn.Parameter(torch.zeros(D, H, **factory))
        self.tied_raw_scale = nn.Parameter(torch.zeros(D, H, **factory))
        self.tied_scale_gate = nn.Parameter(torch.zeros(D, H, **factory))
        self.tied_logits = nn.Parameter(torch.zeros(D, H, **factory))
        self.tied_gate = nn.Parameter(torch.zeros(D, H, **factory))
        # free components: own linear autoregression and hidden-gated weights
        self.free_linear = nn.Parameter(torch.zeros(D, K, D, **factory))
        self.free_gate = nn.Parameter(torch.zeros(D, K, H, **factory))
        self.reset_parameters(generator)

    # ------------------------------------------------------------------ setup
    def reset_parameters(self, generator=None):
        """Data-free initialisation (for standardised data).

        Parameters
        ----------
        generator : torch.Generator, optional
            Source of randomness for the hidden layers and the tied
            components; the global generator when None.
        """
        with torch.no_grad():
            for layer in self.hidden:
                layer.reset_parameters(generator=generator)
            dtype = self.linear.dtype
            self.linear.zero_()
            K = self.n_free_components
            q = (torch.arange(K, dtype=dtype) + 0.5) / K
            locs = math.sqrt(2.0) * torch.erfinv(2 * q - 1)
            self.free_loc.copy_(locs.expand(self.n_features, K))
            self._set_raw(self.free_raw_scale, torch.ones((), dtype=dtype))
            self.free_logits.zero_()
            self.free_linear.zero_()
            self.free_gate.zero_()
            H = self.n_tied
            if H:
                self.tied_bias.copy_(torch.randn(self.n_features, H, generator=generator, dtype=dtype))
                self.tied_slope.copy_(0.1 * torch.randn(self.n_features, H, generator=generator, dtype=dtype))
                self._set_raw(self.tied_raw_scale, torch.ones((), dtype=dtype))
                self.tied_scale_gate.zero_()
                self.tied_logits.zero_()
                self.tied_gate.copy_(0.1 * torch.randn(self.n_features, H, generator=generator, dtype=dtype))
            self.feature_shift.zero_()
            self.feature_scale.fill_(1.0)

    def _set_raw(self, param, scale):
        scale = torch.as_tensor(scale, dtype=param.dtype, device=param.device)
        param.copy_(raw_scale_for(scale, self.min_scale).expand_as(param))

    def n_parameters(self):
        """Number of free parameters (for BIC and AIC).

        Counts only entries that can change the density: those the masks
        leave in the model, of hidden neurons that some conditional reads
        (directly or through later layers; with one feature, none), less one
        mixing logit per softmax (their common shift changes nothing), and
        one gate of the free components per tied entry (likewise). The
        shared linear term of a conditional without tied components adds
        nothing to its free components' own linear terms and is not counted.
        This is the rank of the Jacobian of the log-density with respect to
        all parameters at a generic point (the tests check it).

        Returns
        -------
        count : int
            Number of free parameters.
        """
        count = 0
        live = self.out_mask.any(dim=0)  # neurons of the last hidden layer that a conditional reads
        for layer in reversed(self.hidden):
            inputs = layer.mask[live].sum(dim=1)
            count += int((3 * inputs - 1).sum())
            live = layer.mask[live].any(dim=0)  # the neurons of the layer below that a live one reads
        n_linear = int(self.linear_mask.sum())
        n_tied = int(self.out_mask.sum())
        K, D = self.n_free_components, self.n_features
        count += int(self.linear_mask[self.out_mask.any(dim=1)].sum())  # shared linear term
        count += 3 * D * K - D  # free loc, scale, logits
        # free components' linear terms, and their gates: the free logits are normalised among
        # themselves, so a common shift of the K gates of one tied entry changes nothing
        count += K * n_linear + (K - 1) * n_tied
        count += 6 * n_tied  # tied bias, slope, scale, scale gate, logit, gate
        return count

    # --------------------------------------------------------------- forward
    def _hidden(self, x_o):
        """Raw log-density activations of the last hidden layer."""
        h = x_o
        for layer in self.hidden:
            h = layer(h)
        return h

    def _features(self, h):
        u = (h - self.feature_shift) / self.feature_scale
        return _FEATURE_BOUND * torch.tanh(u / _FEATURE_BOUND)

    def _conditionals(self, x_o, f, rows=slice(None)):
        """Mixture parameters of the conditionals at positions ``rows``.

        Returns loc (B, R, C), scale (B, R, C) and log-weights (B, R, C)
        with C = H + n_free_components.
        """
        mask = self.linear_mask
        # every position is computed: the gates below need all earlier ones
        W = self.linear * mask  # (D, D)
        lin = x_o @ W.t()  # (B, D)
        fW = self.free_linear * mask[:, None, :]  # (D, K, D)
        free_loc = lin[:, :, None] + self.free_loc + torch.einsum("bk,rck->brc", x_o, fW)
        free_scale = (self.min_scale + F.softplus(self.free_raw_scale)).expand_as(free_loc)
        free_logits = self.free_logits.expand_as(free_loc)
        # free component k's weight at position d is also gated by the
        # log-likelihood of x_<d under component k's own chain of
        # conditionals: the free components alone form a mixture of
        # full-covariance Gaussians (exactly when the logits agree over d)
        z = (x_o[:, :, None] - free_loc) / free_scale
        lim = _z_limit(z.dtype)
        z = z.clamp(-lim, lim)
        ll = -0.5 * z * z - torch.log(free_scale) - _HALF_LOG_2PI  # (B, D, K)
        prefix = torch.cumsum(ll, dim=1) - ll  # sum over j < d
        free_logits = free_logits + prefix
        free_loc, free_scale, free_logits = free_loc[:, rows], free_scale[:, rows], free_logits[:, rows]
        if self.n_tied == 0:
            return free_loc, free_scale, torch.log_softmax(free_logits, dim=-1)
        fG = (self.free_gate * self.out_mask[:, None, :])[rows]  # (R, K, H)
        free_logits = free_logits + torch.einsum("bh,rch->brc", f, fG)
        # the free components' weights are normalised among themselves first:
        # the tied logits then set the tied components' share on a fixed scale
        free_logits = torch.log_softmax(free_logits, dim=-1)
        fb = f[:, None, :]  # (B, 1, H)
        tied_loc = lin[:, rows][:, :, None] + self.tied_bias[rows] + self.tied_slope[rows] * fb
        tied_scale = self.min_scale + F.softplus(self.tied_raw_scale[rows] + self.tied_scale_gate[rows] * fb)
        tied_logits = (self.tied_logits[rows] + self.tied_gate[rows] * fb).masked_fill(
            ~self.out_mask[rows], -math.inf
        )
        loc = torch.cat([tied_loc, free_loc], dim=-1)
        scale = torch.cat([tied_scale, free_scale], dim=-1)
        log_w = torch.log_softmax(torch.cat([tied_logits, free_logits], dim=-1), dim=-1)
        return loc, scale, log_w

    def _log_prob_block(self, x_o):
        f = self._features(self._hidden(x_o)) if self.n_tied else None
        loc, scale, log_w = self._conditionals(x_o, f)
        z = (x_o[:, :, None] - loc) / scale
        lim = _z_limit(z.dtype)
        z = z.clamp(-lim, lim)
        comp = log_w - 0.5 * z * z - torch.log(scale) - _HALF_LOG_2PI
        return torch.logsumexp(comp, dim=-1)  # (B, D)

    def log_prob_conditionals(self, x):
        """Per-variable conditional log-densities, in the variable order.

        Parameters
        ----------
        x : Tensor of shape (batch, n_features)
            Samples, in the original feature order.

        Returns
        -------
        log_probs : Tensor of shape (batch, n_features)
            Column ``i`` is ``log p(x[order[i]] | earlier)``, the
            log-density of the ``i``-th variable of the order given the
            variables before it.
        """
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected x of shape (batch, {self.n_features}), got {tuple(x.shape)}")
        x_o = x[:, self.order]
        per_row = self.n_features * (self.n_tied + self.n_free_components)
        rows = max(1, self.block_elements // (4 * per_row))
        if x_o.shape[0] <= rows:
            return self._log_prob_block(x_o)
        return torch.cat([self._log_prob_block(x_o[i:i + rows]) for i in range(0, x_o.shape[0], rows)])

    def log_prob(self, x):
        """Log-density of each sample.

        Parameters
        ----------
        x : Tensor of shape (batch, n_features)
            Samples, in the original feature order.

        Returns
        -------
        log_prob : Tensor of shape (batch,)
            ``log p(x)``, the sum of the conditional log-densities.
        """
        return self.log_prob_conditionals(x).sum(dim=1)

    def marginal_log_prob(self, x):
        """Log-density of the observed entries of each sample; NaN marks a missing entry.

        When a sample's missing variables all come after its observed ones in
        ``order`` (the observed ones are ``order[:m]``), the marginal density
        of the observed ones is exactly the product of their conditionals,
        ``p(x_order[:m]) = prod_{i < m} p(x_order[i] | x_order[:i])``: the
        missing variables integrate out of the later conditionals, each of
        which integrates to one. Other patterns have no such closed form and
        raise a ValueError.

        Parameters
        ----------
        x : Tensor of shape (batch, n_features)
            Samples, in the original feature order; NaN where missing.

        Returns
        -------
        log_prob : Tensor of shape (batch,)
            ``log p(observed entries)``; 0 for a sample with no observed
            entry. Samples without NaN get :meth:`log_prob`.

        Raises
        ------
        ValueError
            If a sample misses a variable that comes before one of its
            observed variables in ``order``.
        """
        observed = ~torch.isnan(x)
        observed_o = observed[:, self.order]
        if bool(unsupported_missing(observed_o).any()):
            raise ValueError(
                "marginal_log_prob needs each sample's missing variables (NaN) to come after all "
                "its observed ones in the variable order."
            )
        conditionals = self.log_prob_conditionals(torch.where(observed, x, torch.zeros_like(x)))
        return torch.where(observed_o, conditionals, torch.zeros_like(conditionals)).sum(dim=1)

    def forward(self, x):
        """Log-density of each sample (same as :meth:`log_prob`).

        Parameters
        ----------
        x : Tensor of shape (batch, n_features)
            Samples, in the original feature order.

        Returns
        -------
        log_prob : Tensor of shape (batch,)
            ``log p(x)`` of each sample.
        """
        return self.log_prob(x)

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, n, generator=None):
        """Exact ancestral samples, in the original feature order.

        Dropout is never applied. Randomness comes only from ``generator``
        (the global generator when None).

        Parameters
        ----------
        n : int
            Number of samples to draw (may be 0).
        generator : torch.Generator, optional
            Source of randomness; the global generator when None.

        Returns
        -------
        samples : Tensor of shape (n, n_features)
            The drawn samples.
        """
        n = int(n)
        dtype, device = self.linear.dtype, self.linear.device
        gen_device = generator.device if generator is not None else device
        was_training = self.training
        self.eval()
        try:
            x_o = torch.zeros(n, self.n_features, dtype=dtype, device=device)
            if n == 0:
                return x_o
            for d in range(self.n_features):
                f = self._features(self._hidden(x_o)) if self.n_tied else None
                loc, scale, log_w = self._conditionals(x_o, f, rows=slice(d, d + 1))
                probs = log_w[:, 0].exp().to(gen_device)
                comp = torch.multinomial(probs, 1, generator=generator).to(device)
                eps = torch.randn(n, 1, generator=generator, dtype=dtype, device=gen_device).to(device)
                x_o[:, d] = (loc[:, 0].gather(1, comp) + scale[:, 0].gather(1, comp) * eps)[:, 0]
            return x_o[:, self.inverse_order]
        finally:
            self.train(was_training)

    # -------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_from_data(self, X, generator=None, *, max_samples=INIT_MAX_SAMPLES, ridge=1e-3):
        """Data-dependent initialisation.

        * The linear autoregression starts at the (ridge-regularised)
          Gaussian fit of the winsorised data: the conditionals start as the
          conditionals of a full-covariance Gaussian.
        * Hidden components sit on the winsorised values of random samples,
          with robust (inter-quartile) per-input spreads as scales.
        * Each conditional's components sit on residuals of random samples
          (free components on residual quantiles), with the residual's robust
          spread as scale; hidden activations are standardised by their
          median and robust spread.

        Constant columns and heavy tails are handled by the robust statistics
        (winsorising at the 1st/99th percentiles, spread fall-backs, ridge).

        Parameters
        ----------
        X : Tensor of shape (n_samples, n_features)
            Finite training samples, in the original feature order.
        generator : torch.Generator, optional
            Source of randomness for the row subset and the samples the
            components start on; the global generator when None.
        max_samples : int, default=INIT_MAX_SAMPLES
            Rows used for the statistics (a random subset of larger X).
        ridge : float, default=1e-3
            Relative ridge added to the covariance diagonal.
        """
        if X.dim() != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected X of shape (n, {self.n_features}), got {tuple(X.shape)}")
        if X.shape[0] == 0:
            raise ValueError("init_from_data needs at least one sample")
        if not bool(torch.isfinite(X).all()):
            raise ValueError("init_from_data needs finite inputs")
        dtype, device = self.linear.dtype, self.linear.device
        if X.shape[0] > max_samples:
            idx = torch.randperm(X.shape[0], generator=generator)[:max_samples]
            X = X[idx.to(X.device)]
        X = X.to(device=device, dtype=torch.float64)[:, self.order]
        n, D = X.shape
        med, spread, low, high = _robust_stats(X)
        Xc = torch.minimum(torch.maximum(X, low), high)

        # linear part: Gaussian conditionals of the winsorised data
        mu = Xc.mean(dim=0)
        C = (Xc - mu).t() @ (Xc - mu) / max(n - 1, 1)
        diag = torch.maximum(C.diagonal(), spread**2)
        C = C + torch.diag(ridge * diag + 1e-12)
        L = _safe_cholesky(C)
        T = torch.linalg.solve_triangular(L, torch.eye(D, dtype=C.dtype, device=device), upper=False)
        W = -(T / T.diagonal()[:, None]).tril(-1)
        resid = Xc - Xc @ W.t()
        r_med, r_spread, r_low, r_high = _robust_stats(resid)
        resid = torch.minimum(torch.maximum(resid, r_low), r_high)
        self.linear.copy_(W.to(dtype))

        K = self.n_free_components
        q = (torch.arange(K, dtype=torch.float64, device=device) + 0.5) / K
        free = torch.quantile(resid, q, dim=0).t()  # (D, K)
        self.free_loc.copy_(free.to(dtype))
        self._set_raw(self.free_raw_scale, r_spread[:, None].clamp(min=10 * self.min_scale).to(dtype))
        self.free_logits.zero_()

        was_training = self.training
        self.eval()
        try:
            h = Xc.to(dtype)
            for layer in self.hidden:
                _init_layer(layer, h, generator)
                h = layer(h)
            H = self.n_tied
            if H:
                h_med, h_spread, _, _ = _robust_stats(h.double())
                self.feature_shift.copy_(h_med.to(dtype))
                self.feature_scale.copy_(h_spread.clamp(min=1e-3).to(dtype))
                rows = torch.randint(n, (D, H), generator=generator).to(device)
                self.tied_bias.copy_(resid.t().gather(1, rows).to(dtype))
                self.tied_slope.zero_()
                self._set_raw(self.tied_raw_scale, r_spread[:, None].clamp(min=10 * self.min_scale).to(dtype))
                self.tied_scale_gate.zero_()
                self.tied_logits.zero_()
                self.tied_gate.zero_()
        finally:
            self.train(was_training)

    @torch.no_grad()
    def init_from_mixture(self, weights, means, covariances, *, tied_share=0.05, generator=None):
        """Start the free components at a full-covariance Gaussian mixture.

        The free components' chains of conditionals then reproduce the
        mixture exactly; the tied components keep their
        parameters and get a total weight of about ``tied_share``. Call after
        :meth:`init_from_data` (which sets the shared linear term).

        Parameters
        ----------
        weights : array-like of shape (M,)
            Mixing weights of the M mixture components (normalised here).
        means : array-like of shape (M, D)
            Component means, in the original feature order.
        covariances : array-like of shape (M, D, D)
            In the original feature order. With M < n_free_components the
            heaviest components are split (slightly shifted copies sharing
            the weight); with M > n_free_components only the heaviest are kept.
        tied_share : float, default=0.05
            Total starting weight of the tied components, in (0, 1).
        generator : torch.Generator, optional
            Source of randomness for the shifts of split components; the
            global generator when None.
        """
        dtype = self.linear.dtype
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        M, D, K = w.numel(), self.n_features, self.n_free_components
        if mu.shape != (M, D) or cov.shape != (M, D, D):
            raise ValueError(f"expected means ({M}, {D}) and covariances ({M}, {D}, {D})")
        order = self.order.cpu()
        mu = mu[:, order]
        cov = cov[:, order][:, :, order]
        keep = torch.argsort(w, descending=True)[:K]
        w, mu, cov = w[keep], mu[keep], cov[keep]
        eye = torch.eye(D, dtype=torch.float64)
        locs, scales, slopes = [], [], []
        for m in range(w.numel()):
            L = _safe_cholesky(cov[m])
            T = torch.linalg.solve_triangular(L, eye, upper=False)
            diag = T.diagonal()
            slopes.append(-(T / diag[:, None]).tril(-1))
            locs.append((T @ mu[m]) / diag)
            scales.append(1.0 / diag)
        locs, scales, slopes = torch.stack(locs), torch.stack(scales), torch.stack(slopes)  # (M, D), (M, D), (M, D, D)
        # split the heaviest components until there are K
        w = w / w.sum()
        while w.numel() < K:
            j = int(torch.argmax(w))
            shift = 0.2 * scales[j] * (2.0 * torch.rand(D, generator=generator, dtype=torch.float64) - 1.0)
            w = torch.cat([w, w[j:j + 1] / 2])
            w[j] = w[j] / 2
            locs = torch.cat([locs, (locs[j] + shift)[None]])
            locs[j] = locs[j] - shift
            scales = torch.cat([scales, scales[j:j + 1]])
            slopes = torch.cat([slopes, slopes[j:j + 1]])
        W = (self.linear * self.linear_mask).double().cpu()
        self.free_loc.copy_(locs.t().to(dtype))
        self._set_raw(self.free_raw_scale, scales.t().clamp(min=2 * self.min_scale).to(dtype))
        self.free_linear.copy_((slopes.permute(1, 0, 2) - W[:, None, :]).to(dtype))
        self.free_logits.copy_(w.log().expand(D, K).to(dtype))
        self.free_gate.zero_()
        if self.n_tied:
            tied = math.log(tied_share / (1.0 - tied_share)) - math.log(self.n_tied)
            self.tied_logits.fill_(tied)

    def extra_repr(self):
        return (
            f"n_features={self.n_features}, hidden_layer_sizes={self.hidden_layer_sizes}, "
            f"n_free_components={self.n_free_components}, min_scale={self.min_scale}"
        )


def unsupported_missing(observed_in_order):
    """Rows whose observed entries are not a prefix of the variable order.

    Parameters
    ----------
    observed_in_order : bool Tensor of shape (batch, n_features)
        Which variables each row observes, in the variable order.

    Returns
    -------
    unsupported : bool Tensor of shape (batch,)
        True where a missing variable comes before an observed one.
    """
    return (observed_in_order[:, 1:] & ~observed_in_order[:, :-1]).any(dim=1)


def _safe_cholesky(C):
    eye = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    jitter = 0.0
    base = float(C.diagonal().abs().max().clamp(min=1e-12))
    for _ in range(10):
        L, info = torch.linalg.cholesky_ex(C + jitter * eye)
        if int(info) == 0:
            return L
        jitter = base * 1e-8 if jitter == 0.0 else jitter * 10
    return torch.diag(C.diagonal().clamp(min=1e-12).sqrt())
