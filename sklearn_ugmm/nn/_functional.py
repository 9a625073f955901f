"""Log-density of a layer of univariate Gaussian mixture neurons.

For inputs ``x`` of shape (batch, in), component locations ``loc``, scales
``scale`` and log mixing weights ``log_weights`` (all of shape (out, in)) the
layer output is::

    out[b, j] = logsumexp_k( log_weights[j, k] + log N(x[b, k] | loc[j, k], scale[j, k]^2) )

:func:`ugmm_log_density` evaluates it without ever holding the whole
(batch, out, in) tensor: the batch is cut into blocks of at most
``block_elements`` elements and the backward pass recomputes each block
instead of saving it. With ``kernel="fused"`` (or ``"auto"`` on large
calls) it runs on the fused C++ kernel of :mod:`._fused` instead, which
tiles the same computation in registers. :func:`ugmm_log_density_reference`
is the plain formula, kept as the ground truth for tests and benchmarks.
"""

import math
import warnings

import torch

from . import _fused
from ._first_order import first_order_only

__all__ = [
    "ugmm_log_density",
    "ugmm_observed_parts",
    "ugmm_log_density_reference",
    "DEFAULT_BLOCK_ELEMENTS",
    "KERNELS",
    "AUTO_FUSED_MIN_COMPONENTS",
]

#: Default bound on the number of elements of one (in, batch block, out) block.
DEFAULT_BLOCK_ELEMENTS = 2**20
#: The choices of the ``kernel`` option.
KERNELS = ("auto", "fused", "reference")
#: With ``kernel="auto"``, calls of fewer components (batch x out x in) use
#: the reference kernel, so that small models never wait for the first build.
AUTO_FUSED_MIN_COMPONENTS = 2**16

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _z_limit(dtype):
    # |z| is clipped here so that z**2 stays below sqrt(finfo.max): the output
    # of a layer is then bounded and the next layer's standardised input
    # (x - loc) / scale cannot overflow either, however deep the network.
    return float(torch.finfo(dtype).max) ** 0.25


def _in_float32(function, x, *tensors, **kwargs):
    """``function(x, *tensors, **kwargs)`` of float16 tensors, computed in float32 and rounded back.

    float16 cannot hold the layers' bounds (the kernels' 2**-60 underflows,
    and a distance clipped at ``_z_limit(float16)``, about 16 standard
    deviations, is too tight).
    """
    return function(x.float(), *(t.float() for t in tensors), **kwargs).half()


def ugmm_log_density_reference(x, loc, scale, log_weights):
    """Plain, fully materialised uGMM layer log-density (the ground truth).

    Holds the whole (batch, out, in) tensor: use only for tests and baselines.

    Parameters
    ----------
    x : Tensor of shape (batch, in)
        Inputs.
    loc : Tensor of shape (out, in)
        Component means.
    scale : Tensor of shape (out, in)
        Component standard deviations, strictly positive.
    log_weights : Tensor of shape (out, in)
        Log mixing weights; ``-inf`` removes a component.

    Returns
    -------
    Tensor of shape (batch, out)
        Log-density of each neuron's mixture at each sample.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, 3)
    >>> p = torch.zeros(4, 3)
    >>> ugmm_log_density_reference(x, p, torch.ones(4, 3), p - torch.log(torch.tensor(3.0))).shape
    torch.Size([2, 4])
    """
    z = (x[:, None, :] - loc[None]) / scale[None]
    comp = log_weights[None] - 0.5 * z**2 - torch.log(scale)[None] - _HALF_LOG_2PI
    return torch.logsumexp(comp, dim=-1)


def _block_rows(n_in, n_out, block_elements):
    return max(1, int(block_elements) // max(1, n_in * n_out))


# Exponentials are taken base 2 (exp2 is markedly cheaper than exp on CPU), so
# the working values are log-densities times log2(e).
_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)
# A block whose mixture sums fall below 2**-_SAFE_BITS relative to the
# per-neuron upper bound is recomputed with an exact per-sample maximum.
_SAFE_BITS = 60.0
# Components more than 2**100 below the reference are evaluated as exactly
# 2**-100 of it: exp2 of smaller arguments yields subnormal numbers, which make
# exp2 and every later multiplication an order of magnitude slower on x86.
# Relative to a mixture sum of at least 2**-_SAFE_BITS this is below float64
# resolution.
_FLOOR_BITS = -100.0

_squared_difference = torch.ops.aten.mse_loss.out  # (a - b)**2, broadcast, reduction "none"


def _exp2_floored(t):
    # Arguments are log2 ratios to a reference that bounds every component, so
    # they are <= 0 in exact arithmetic; float32 rounding at very large
    # magnitudes (|log-density| ~ 1e12, where one ulp is 2**16) can push a
    # recomputed one above 0, and exp2 would overflow to inf (inf * 0 = NaN in
    # backward). Clamping to 0 keeps every softmax weight <= 1.
    return t.clamp_(min=_FLOOR_BITS, max=0.0).exp2_()


class _Prepared:
    """Per-call tensors in (in, out) layout shared by forward and backward.

    Component ``(k, j)`` at sample ``b`` has the log2-density
    ``const[k, j] + curv[k, j] * d**2`` with ``d = x[b, k] - loc[j, k]`` and
    ``curv = -log2(e) / (2 scale**2)``. When ``d**2`` could overflow, or the
    standardised distance ``z = d / scale`` must be clipped, the *clipped*
    mode works on ``z`` instead: ``const + (-log2(e) / 2) * z**2``.
    """

    def __init__(self, x, loc, scale, log_weights):
        self.x_t = x.t().contiguous()
        self.loc_t = loc.t().contiguous()
        inv_scale = scale.reciprocal()
        self.inv_scale_t = inv_scale.t().contiguous()
        # log2 of weight / (sqrt(2 pi) scale): the peak of each component
        const = (log_weights - torch.log(scale) - _HALF_LOG_2PI) * _LOG2E
        # upper bound of every component of neuron j, whatever the input
        self.bound = const.amax(dim=1)
        self.const_t = const.t().contiguous()
        self.shifted_const_t = (const - self.bound[:, None]).t().contiguous()
        self.z_lim = _z_limit(x.dtype)
        self.clipped = _needs_clip(x, self.loc_t, self.inv_scale_t, self.z_lim)
        if self.clipped:
            self.curv_t = None
            # factors turning sum_b R q and sum_b R q**2 into sum_b R z and sum_b R z**2
            self.q_to_z = torch.ones_like(self.inv_scale_t)
        else:
            self.curv_t = self.inv_scale_t.square().mul_(-0.5 * _LOG2E)
            self.q_to_z = self.inv_scale_t

    def components(self, start, stop, q2, t, shifted):
        """Fill t with log2 component densities; q2 gets q**2 (q = d or clipped z).

        Returns the mask of unclipped components, or None when nothing is clipped.
        """
        const = self.shifted_const_t if shifted else self.const_t
        if not self.clipped:
            _squared_difference(self.x_t[:, start:stop, None], self.loc_t[:, None, :], 0, out=q2)
            torch.addcmul(const[:, None, :], q2, self.curv_t[:, None, :], out=t)
            return None
        inside = self.distances(start, stop, q2)
        q2.square_()
        torch.add(const[:, None, :], q2, alpha=-0.5 * _LOG2E, out=t)
        return inside

    def distances(self, start, stop, q):
        """Fill q with d (plain mode) or the clipped z; return the unclipped mask or None."""
        torch.sub(self.x_t[:, start:stop, None], self.loc_t[:, None, :], out=q)
        if not self.clipped:
            return None
        q.mul_(self.inv_scale_t[:, None, :])
        inside = q.abs() < self.z_lim
        q.clamp_(-self.z_lim, self.z_lim)
        return inside


class _UGMMLogDensity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, loc, scale, log_weights, block_elements):
        n_batch, n_in = x.shape
        n_out = loc.shape[0]
        prep = _Prepared(x, loc, scale, log_weights)
        rows = _block_rows(n_in, n_out, block_elements)
        out = x.new_empty((n_batch, n_out))
        buffers = _Buffers(x, n_in * min(rows, n_batch) * n_out, 2)
        tiny = 2.0**-_SAFE_BITS
        for start in range(0, n_batch, rows):
            stop = min(start + rows, n_batch)
            q2, t = buffers.get(n_in, stop - start, n_out)
            block_out = out[start:stop]
            prep.components(start, stop, q2, t, shifted=True)
            torch.sum(_exp2_floored(t), dim=0, out=block_out)
            if bool((block_out < tiny).any()):
                # far from every component: redo the block with the exact peak
                prep.components(start, stop, q2, t, shifted=False)
                peak = t.amax(dim=0)
                torch.sum(_exp2_floored(t.sub_(peak)), dim=0, out=block_out)
                block_out.log2_().add_(peak)
            else:
                block_out.log2_().add_(prep.bound)
        out.mul_(_LN2)
        ctx.save_for_backward(x, loc, scale, log_weights, out)
        ctx.block_elements = block_elements
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):
        x, loc, scale, log_weights, out = ctx.saved_tensors
        n_batch, n_in = x.shape
        n_out = loc.shape[0]
        prep = _Prepared(x, loc, scale, log_weights)
        rows = _block_rows(n_in, n_out, ctx.block_elements)
        grad_out = grad_out.contiguous()
        out2 = out * _LOG2E
        # d out_j / d component_jk = exp2(t_jk - out2_j) = exp2(t_jk - bound_j) * exp2(bound_j - out2_j)
        margin = out2 - prep.bound
        grad_scaled = grad_out * torch.exp2(-margin.clamp(min=-_SAFE_BITS))
        far = margin < -_SAFE_BITS

        need_x = ctx.needs_input_grad[0]
        grad_x_t = x.new_empty((n_in, n_batch)) if need_x else None
        # d out / d x = -sum_j R z / scale = -sum_j R q * q_to_z / scale
        x_factor = (prep.q_to_z * prep.inv_scale_t).neg_()[:, :, None] if need_x else None
        sum_r = torch.zeros_like(prep.loc_t)  # sum_b R
        sum_rq = torch.zeros_like(prep.loc_t)  # sum_b R q
        sum_rqq = torch.zeros_like(prep.loc_t)  # sum_b R q^2
        buffers = _Buffers(x, n_in * min(rows, n_batch) * n_out, 2)
        for start in range(0, n_batch, rows):
            stop = min(start + rows, n_batch)
            q, t = buffers.get(n_in, stop - start, n_out)
            if bool(far[start:stop].any()):
                inside = prep.components(start, stop, q, t, shifted=False)
                _exp2_floored(t.sub_(out2[start:stop])).mul_(grad_out[start:stop])
            else:
                inside = prep.components(start, stop, q, t, shifted=True)
                _exp2_floored(t).mul_(grad_scaled[start:stop])
            # t now holds R = softmax_k(component) * grad, q holds q**2
            sum_r += t.sum(dim=1)
            if inside is not None:
                t.mul_(inside)  # clipped components carry no gradient through z
            sum_rqq += q.mul_(t).sum(dim=1)
            prep.distances(start, stop, q)
            t.mul_(q)
            sum_rq += t.sum(dim=1)
            if need_x:
                grad_x_t[:, start:stop] = torch.bmm(t, x_factor).squeeze(-1)

        grad_x = grad_loc = grad_scale = grad_logw = None
        if need_x:
            grad_x = grad_x_t.t().contiguous()
        if ctx.needs_input_grad[1]:
            grad_loc = (sum_rq * prep.q_to_z * prep.inv_scale_t).t()
        if ctx.needs_input_grad[2]:
            sum_rzz = sum_rqq * prep.q_to_z.square()
            grad_scale = ((sum_rzz - sum_r) * prep.inv_scale_t).t()
        if ctx.needs_input_grad[3]:
            grad_logw = sum_r.t()
        return grad_x, grad_loc, grad_scale, grad_logw, None


def _needs_clip(x, loc_t, inv_scale_t, z_lim):
    # True unless every |z| < z_lim and d**2, 1 / scale**2 and their product stay finite
    if x.numel() == 0:
        return False
    reach = x.abs().max() + loc_t.abs().max()
    inv_max = inv_scale_t.max()
    sqrt_max = z_lim * z_lim
    return not bool((reach * inv_max < z_lim) & (reach < sqrt_max) & (inv_max < sqrt_max))


class _Buffers:
    """Block-sized work tensors, reused across the blocks of one call.

    Each of ``count`` flat tensors holds ``max_elements``; a block gets
    contiguous views of their leading elements, so the last, shorter block
    reuses the same memory.
    """

    def __init__(self, like, max_elements, count):
        self.flat = [like.new_empty(max_elements) for _ in range(count)]

    def get(self, n_in, n_rows, n_out):
        size = n_in * n_rows * n_out
        return [f[:size].view(n_in, n_rows, n_out) for f in self.flat]


def ugmm_log_density(x, loc, scale, log_weights, *, block_elements=DEFAULT_BLOCK_ELEMENTS, kernel="auto"):
    """Memory-bounded uGMM layer log-density with an exact, recomputing backward.

    Equal to :func:`ugmm_log_density_reference` (up to floating point
    rounding) for standardised distances ``|x - loc| / scale`` below
    ``finfo(dtype).max ** 0.25``; beyond that the distance is clipped, which
    keeps outputs and gradients finite for any finite input.

    Parameters
    ----------
    x : Tensor of shape (batch, in)
        Inputs.
    loc : Tensor of shape (out, in)
        Component means (an expanded view is fine, e.g. for tied means).
    scale : Tensor of shape (out, in)
        Component standard deviations, strictly positive.
    log_weights : Tensor of shape (out, in)
        Log mixing weights; ``-inf`` removes a component, but every row must
        keep at least one finite entry.
    block_elements : int, default=2**20
        Upper bound on the elements of one (in, batch block, out) block; the
        forward and backward passes each hold two such blocks (plus a boolean
        mask when distances are clipped). Reference kernel only.
    kernel : {"auto", "fused", "reference"}, default="auto"
        Implementation. ``"reference"`` is the blocked PyTorch kernel
        described above. ``"fused"`` is a C++ kernel, compiled with the
        system compiler on first use (a few seconds) and cached under
        ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), for
        float32 and float64 CPU tensors: one pass over the inputs per (sample,
        neuron), nothing of size (batch, out, in) in memory, several times
        faster. It falls back to the reference kernel with a warning when
        no C++ compiler is available (``$SKLEARN_UGMM_CXX`` chooses one) or
        the build fails, and silently for tensors on other devices (CUDA
        included: no GPU kernel yet) or of other dtypes, and for inputs so
        extreme that distances must be clipped. ``"auto"`` uses the fused
        kernel for calls of at least 2**16 components (batch x out x in)
        when it is available, else the reference kernel, without a warning:
        small models never wait for the build.

    Returns
    -------
    Tensor of shape (batch, out)
        Log-density of each neuron's mixture at each sample.

    Raises
    ------
    RuntimeError
        From a backward pass asked to build a graph (``create_graph=True``:
        Hessians, gradient penalties): both kernels give first derivatives
        only. :func:`ugmm_log_density_reference` is differentiable twice.

    Examples
    --------
    >>> import torch
    >>> from sklearn_ugmm.nn import ugmm_log_density
    >>> x = torch.randn(5, 3)
    >>> loc, scale = torch.zeros(2, 3), torch.ones(2, 3)
    >>> log_w = torch.log_softmax(torch.zeros(2, 3), dim=1)
    >>> ugmm_log_density(x, loc, scale, log_w).shape
    torch.Size([5, 2])
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (batch, in), got shape {tuple(x.shape)}")
    n_out, n_in = log_weights.shape
    if x.shape[1] != n_in or loc.shape != (n_out, n_in) or scale.shape != (n_out, n_in):
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, loc {tuple(loc.shape)}, "
            f"scale {tuple(scale.shape)}, log_weights {tuple(log_weights.shape)}"
        )
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not x.dtype == loc.dtype == scale.dtype == log_weights.dtype:
        raise RuntimeError(
            f"x, loc, scale and log_weights must share a dtype, got {x.dtype}, {loc.dtype}, {scale.dtype} "
            f"and {log_weights.dtype}"
        )
    if x.dtype == torch.float16:
        return _in_float32(ugmm_log_density, x, loc, scale, log_weights, block_elements=block_elements, kernel=kernel)
    if kernel != "reference" and _fused_applies(x, loc, scale, log_weights, kernel):
        out = _fused.log_density(x, loc, scale, log_weights, _z_limit(x.dtype))
        if out is not None:  # None: distances need clipping
            return out
    return _UGMMLogDensity.apply(x, loc, scale, log_weights, block_elements)


_warned_unavailable = False


def _fused_applies(x, loc, scale, log_weights, kernel, prediction=False):
    """Whether this call can and should run on the fused kernel.

    With ``kernel="auto"`` calls of fewer than ``AUTO_FUSED_MIN_COMPONENTS``
    components stay on PyTorch, so that small fits never build the library.
    ``prediction`` (the layers' prediction routes, whose parameters are
    prepared once and cost a few microseconds a call) takes calls of any
    size, but only once the library is loaded: a prediction never builds it.
    """
    global _warned_unavailable
    dtype = x.dtype  # (no generator over the tensors: this runs on every layer call)
    if not (x.is_cpu and loc.is_cpu and scale.is_cpu and log_weights.is_cpu):
        return False
    if loc.dtype != dtype or scale.dtype != dtype or log_weights.dtype != dtype:
        return False
    if x.dtype not in (torch.float32, torch.float64):
        return False
    if kernel == "auto" and x.shape[0] * log_weights.numel() < AUTO_FUSED_MIN_COMPONENTS:
        if not (prediction and _fused.loaded()):
            return False
    if _fused.load() is None:
        if kernel == "fused" and not _warned_unavailable:
            _warned_unavailable = True
            warnings.warn(
                "the fused uGMM kernel is unavailable, using the reference kernel: "
                + _fused.failure_reason(),
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return True


def fused_observed_log_density(x, observed, loc, scale, log_weights):
    """Layer output over each sample's observed inputs, on the fused kernel.

    The fused counterpart of :meth:`UGMMLayer.forward_observed`'s formula::

        out[b, j] = logsumexp_{k observed}( log_weights[j, k] + log N(x[b, k] | loc[j, k], scale[j, k]^2) )
                    - logsumexp_{k observed} log_weights[j, k]

    The kernel leaves the missing inputs' components out of its online sum
    (``x`` may hold NaN there: it is never read into a result, and gets a zero
    gradient); the renormaliser is ``log(observed @ exp(log_weights).T)``, a
    matrix product with its gradient through autograd, and 0 for complete
    rows. Where that mass falls below ``2**-60`` (weights far below the
    neuron's largest) it is recomputed as an exact log-sum-exp.

    The caller must have checked that the fused kernel applies
    (:func:`_fused_applies`) and that every sample has an observed input.

    Returns
    -------
    out : Tensor of shape (batch, out), or None
        None when distances need clipping (use the reference path).
    redo : bool Tensor of shape (batch,), or None
        Rows where some neuron keeps no observed component with a nonzero
        weight (dropout removed them all): their ``out`` is meaningless and
        the caller must compute them with its own rule. None when there are none.
    """
    missing = ~observed
    numerator = _fused.log_density(x, loc, scale, log_weights, _z_limit(x.dtype), missing=missing)
    if numerator is None:
        return None, None
    complete = observed.all(dim=1)
    if bool(complete.all()):
        return numerator, None
    obs = observed.to(x.dtype)
    live = torch.isfinite(log_weights)
    redo = None
    if not bool(live.all()):
        lost = (obs @ live.to(x.dtype).t()) == 0
        if bool(lost.any()):
            redo = lost.any(dim=1)
    mass = obs @ log_weights.exp().t()
    tiny = 2.0**-_SAFE_BITS
    log_mass = mass.clamp(min=tiny).log()
    far = (mass < tiny) & ~complete[:, None]
    if redo is not None:
        far &= ~redo[:, None]
    far = far.any(dim=1)
    if bool(far.any()):
        rows = far.nonzero().squeeze(1)
        exact = torch.logsumexp(log_weights.masked_fill(missing[rows][:, None, :], -math.inf), dim=-1)
        log_mass = log_mass.index_put((rows,), exact)
    log_mass = torch.where(complete[:, None], torch.zeros_like(log_mass), log_mass)
    return numerator - log_mass, redo


def ugmm_observed_parts(x, keep, loc, scale, log_weights, *, block_elements=DEFAULT_BLOCK_ELEMENTS):
    """The two sums of a uGMM layer restricted, per sample, to some components.

    For ``K[b, j] = {k : keep[b, j, k]}``::

        numerator[b, j] = logsumexp_{k in K[b, j]}( log_weights[j, k]
                                                    + log N(x[b, k] | loc[j, k], scale[j, k]^2) )
        log_mass[b, j]  = logsumexp_{k in K[b, j]} log_weights[j, k]

    so that ``numerator - log_mass`` is neuron ``j``'s mixture renormalised
    over the kept components (for missing inputs: keep the observed ones).
    Entries of ``x`` outside the kept components are never read into the
    result (NaN there is fine). This is the plain formula, materialised one
    block of rows (at most ``block_elements`` elements of (rows, out, in))
    at a time, with ordinary autograd; standardised distances are clipped
    at ``finfo(dtype).max ** 0.25`` as in :func:`ugmm_log_density`. Both
    sums are ``-inf`` where nothing is kept.

    Parameters
    ----------
    x : Tensor of shape (batch, in)
        Inputs.
    keep : bool Tensor broadcastable to (batch, out, in)
        Which components count for each sample (and neuron).
    loc, scale, log_weights : Tensor of shape (out, in)
        Component means, standard deviations and log mixing weights.
    block_elements : int, default=2**20
        Upper bound on the elements of one (rows, out, in) block.

    Returns
    -------
    numerator, log_mass : Tensor of shape (batch, out)
        The two sums above.

    Examples
    --------
    >>> import torch
    >>> from sklearn_ugmm.nn import ugmm_observed_parts
    >>> x = torch.tensor([[0.5, float("nan")]])
    >>> keep = ~torch.isnan(x)[:, None, :]
    >>> log_w = torch.log(torch.tensor([[0.25, 0.75]]))
    >>> num, mass = ugmm_observed_parts(x, keep, torch.zeros(1, 2), torch.ones(1, 2), log_w)
    >>> round(float(num - mass), 4)  # log N(0.5 | 0, 1): the only observed component
    -1.0439
    """
    n_batch, n_in = x.shape
    n_out = log_weights.shape[0]
    keep = keep.expand(n_batch, n_out, n_in)
    filled = torch.where(keep.any(dim=1), x, torch.zeros_like(x))
    limit = _z_limit(x.dtype)
    peak = log_weights - torch.log(scale) - _HALF_LOG_2PI
    rows = _block_rows(n_in, n_out, block_elements)
    numerators, masses = [], []
    for start in range(0, n_batch, rows):
        dropped = ~keep[start : start + rows]
        z = ((filled[start : start + rows, None, :] - loc) / scale).clamp(-limit, limit)
        numerators.append(torch.logsumexp((peak - 0.5 * z * z).masked_fill(dropped, -math.inf), dim=-1))
        masses.append(torch.logsumexp(log_weights.masked_fill(dropped, -math.inf), dim=-1))
    if not numerators:
        empty = x.new_empty((0, n_out))
        return empty, empty
    return torch.cat(numerators), torch.cat(masses)
