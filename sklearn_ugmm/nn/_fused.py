"""The fused CPU kernel of the uGMM layer: build on first use, load, call.

``_fused_kernel.cpp`` is plain C++ (no PyTorch headers), compiled once with
the system C++ compiler into a shared library cached under
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``; a per-user
temporary directory when that is not writable), keyed by the source, the
compiler, its flags and the CPU (``-march=native``), and called
through :mod:`ctypes`. Its threads come from the OpenMP runtime PyTorch has
already loaded, and each call uses at most ``torch.get_num_threads()`` of
them, fewer for small problems.

Routes: the dense kernel; for inputs of which at least half are exactly 0
(images, sparse features) the sparse route, where the zero inputs' part of
every mixture is one matrix product and only the nonzero inputs are
exponentiated (forward, and the parameter gradients when no input gradient
is wanted); missing inputs (:func:`log_density`'s ``missing``) as an
additive mask. float32 layers may pass their raw parameters
(:func:`layer_log_density`): softplus and log_softmax then run here too.
Calls that need no gradient create no autograd node; inside
:func:`inference_routes` (the estimators' prediction methods) they may take
the inference-only routes: the transposed dense route (vectorised over
neurons, for layers with few inputs) and, on the sparse route, the
complement route (the zero inputs' part as each neuron's total at x = 0
less the nonzero inputs' share, no matrix product), and layers keep
their prepared parameters between calls (:func:`cached_log_density`);
product layers (:class:`UGMMProductLayer`, the classifier's output neurons)
are evaluated there too (:func:`cached_product_log_density`). The
cache is keyed on the parameters' storage and version counters, which an
optimiser's fused kernel (``torch.optim.Adam(fused=True)``, the estimators'
optimiser) does not bump; so it is used only inside
:func:`inference_routes`, whose callers (the estimators' prediction
methods) evaluate a private copy of the network that is never trained.

When no compiler is found, the build fails or the library does not load,
:func:`load` returns None and the caller falls back to the reference kernel.
The compiler is ``$SKLEARN_UGMM_CXX`` when set, else the first of ``c++``,
``g++`` and ``clang++`` on the PATH.
"""

import contextlib
import contextvars
import ctypes
import hashlib
import math
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import weakref
from pathlib import Path

import torch

from ._first_order import first_order_only

_SOURCE = Path(__file__).with_name("_fused_kernel.cpp")
#: Components (batch x out x in) per thread below which a call stays on one thread.
GRAIN_COMPONENTS = 2**17
_FLAG_SETS = (
    ["-O3", "-std=gnu++17", "-march=native", "-fopenmp", "-Wno-psabi"],
    ["-O3", "-std=gnu++17", "-fopenmp", "-Wno-psabi"],
    ["-O3", "-std=gnu++17"],
)

# None: not tried yet; False: unavailable (see _failure); else the loaded library
_library = None
_failure = ""


def _compiler():
    explicit = os.environ.get("SKLEARN_UGMM_CXX")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise RuntimeError(
                f"SKLEARN_UGMM_CXX={explicit!r} is not an executable on PATH (name one program, no arguments)"
            )
        return found
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


#: /proc/cpuinfo lines that tell CPUs apart: x86 (model, flags) and ARM (features, implementer, part).
_CPU_LINES = ("model name", "flags", "Features", "CPU implementer", "CPU architecture", "CPU variant", "CPU part")


def _cpu_signature(cpuinfo=None):
    """What distinguishes this CPU, for the cache key: -march=native binaries must not be shared
    between different CPUs. ``cpuinfo``: the text of /proc/cpuinfo (read when None)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() + platform.machine()
    lines = {ln.strip() for ln in cpuinfo.splitlines() if ln.startswith(_CPU_LINES)}
    return "\n".join(sorted(lines)) or platform.processor() + platform.machine()


def _private(path):
    """Whether ``path`` is a directory of this user that no one else may write to (POSIX)."""
    if not hasattr(os, "getuid"):
        return True
    info = os.lstat(path)
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _cache_dir():
    """Torch's extension directory, or a per-user temporary one when that is not writable.

    The temporary one has a name anyone can predict, so it is used only if
    it is this user's and nobody else can write to it (a library planted
    there would run on loading); else None: build in a fresh private
    directory, for this process only.
    """
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions"
    )
    path = Path(root) / "sklearn_ugmm_fused"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    user = os.getuid() if hasattr(os, "getuid") else "user"
    path = Path(tempfile.gettempdir()) / f"sklearn_ugmm_fused_{user}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        return path if _private(path) else None
    except OSError:
        return None


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cached(target):
    """Whether ``target`` is a complete library this user built: its digest file (written after the
    library was flushed to disk) names its SHA-256, and both are this user's. A cut or damaged file
    (a crash after the build, a broken copy) would crash the process when loaded."""
    check = target.with_suffix(".sha256")
    try:
        for path in (target, check):
            if hasattr(os, "getuid") and os.lstat(path).st_uid != os.getuid():
                return False
        return check.read_text().strip() == _digest(target)
    except OSError:
        return False


def _build(compiler):
    source = _SOURCE.read_text()
    cache = _cache_dir()
    if cache is None:
        cache = Path(tempfile.mkdtemp(prefix="sklearn_ugmm_fused_"))
    targets = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            "\0".join([source, compiler, *flags, _cpu_signature()]).encode()
        ).hexdigest()[:20]
        targets.append((flags, cache / f"ugmm_fused_{key}.so"))
    for _, target in targets:  # a library already built with any flag set (a failing set is not retried)
        if _cached(target):
            return target
    errors = []
    for flags, target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # build beside the target and rename: concurrent builds never see half a file
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            cmd = [compiler, *flags, "-shared", "-fPIC", str(_SOURCE), "-o", tmp]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if done.returncode == 0:
                    with open(tmp, "rb+") as built:
                        os.fsync(built.fileno())
                    digest = _digest(tmp)
                    os.replace(tmp, target)
                    _write_synced(target.with_suffix(".sha256"), digest)
                    return target
                errors.append(f"{' '.join(cmd)}: exit status {done.returncode}: {done.stderr.strip()[-500:]}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{compiler} {' '.join(flags)}: {exc}")
    raise RuntimeError("; ".join(errors))


def _write_synced(path, text):
    """Write ``text`` to ``path`` atomically, flushed to disk."""
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bind(path):
    lib = ctypes.CDLL(str(path))
    i64, ptr, cint, dbl = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    for suffix in ("f32", "f64"):
        getattr(lib, f"ugmm_fused_prepare_{suffix}").argtypes = [
            i64, i64, i64, i64, ptr, ptr, i64, i64, ptr, ptr, ptr, ptr, dbl,
        ]
        getattr(lib, f"ugmm_fused_prepare_{suffix}").restype = i64
        getattr(lib, f"ugmm_fused_forward_{suffix}").argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint]
        getattr(lib, f"ugmm_fused_sparse_zeros_{suffix}").argtypes = [i64, i64, i64, ptr, ptr]
        getattr(lib, f"ugmm_fused_sparse_zeros_{suffix}").restype = i64
        getattr(lib, f"ugmm_fused_sparse_setup_{suffix}").argtypes = [i64, i64, i64, ptr, ptr, ptr]
        getattr(lib, f"ugmm_fused_sparse_factors_{suffix}").argtypes = [i64, i64, i64, ptr, ptr, ptr]
        getattr(lib, f"ugmm_fused_sparse_backward_{suffix}").argtypes = [
            i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, cint,
        ]
        getattr(lib, f"ugmm_fused_sparse_forward_{suffix}").argtypes = [
            i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, cint,
        ]
        getattr(lib, f"ugmm_fused_transposed_forward_{suffix}").argtypes = [
            i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint,
        ]
        getattr(lib, f"ugmm_fused_backward_{suffix}").argtypes = [
            i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, cint,
        ]
        getattr(lib, f"ugmm_fused_scan_inputs_{suffix}").argtypes = [i64, i64, i64, ptr, ptr]
        getattr(lib, f"ugmm_fused_scan_inputs_{suffix}").restype = i64
        getattr(lib, f"ugmm_fused_pad_and_scan_inputs_{suffix}").argtypes = [i64, i64, i64, ptr, i64, ptr, ptr]
        getattr(lib, f"ugmm_fused_pad_and_scan_inputs_{suffix}").restype = i64
        getattr(lib, f"ugmm_fused_prepare_params_{suffix}").argtypes = [
            i64, i64, i64, ptr, i64, i64, ptr, ptr, ptr, ptr, ptr,
        ]
        getattr(lib, f"ugmm_fused_product_forward_{suffix}").argtypes = [i64, i64, i64, ptr, ptr, ptr, dbl, ptr, cint]
        getattr(lib, f"ugmm_fused_product_backward_{suffix}").argtypes = [i64, i64, i64, ptr, ptr, ptr, dbl, ptr, ptr]
        getattr(lib, f"ugmm_fused_complement_setup_{suffix}").argtypes = [i64, i64, i64, ptr, ptr, ptr]
        getattr(lib, f"ugmm_fused_complement_forward_{suffix}").argtypes = [
            i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, cint,
        ]
    lib.ugmm_fused_transform_f32.argtypes = [i64, i64, ptr, dbl, ptr, ptr, ptr, ptr, ptr]
    lib.ugmm_fused_untransform_f32.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr]
    lib.widths = {torch.float32: lib.ugmm_fused_width_f32(), torch.float64: lib.ugmm_fused_width_f64()}
    return lib


def load():
    """The fused kernel library, built on first use; None when it is unavailable."""
    global _library, _failure
    if _library is None:
        try:
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C++ compiler found (set SKLEARN_UGMM_CXX to choose one)")
            _library = _bind(_build(compiler))
        except Exception as exc:  # any failure means: use the reference kernel
            _library, _failure = False, str(exc)
    return _library or None


def loaded():
    """Whether :func:`load` has already loaded the library in this process (never builds it)."""
    return bool(_library)


def failure_reason():
    """Why :func:`load` returned None (empty when the kernel loaded or was not tried)."""
    return _failure


def _threads(n_components):
    return max(1, min(torch.get_num_threads(), n_components // GRAIN_COMPONENTS))


def _ptr(t):
    # a plain int: ctypes converts it for a c_void_p argument (no object per pointer)
    return t.data_ptr()


def _padded(n, dtype):
    """``n`` rounded up to whole vectors of the kernel library's width for ``dtype``."""
    width = load().widths[dtype]
    return -(-n // width) * width


def _optional_ptr(t):
    return None if t is None else _ptr(t)


#: What the missing-input mask adds to a component's log2 density: far below
#: exp2's range (the component is exactly 0), finite in float32 and float64
#: even added to the log2 of a zero weight.
ABSENT_BITS = -1e30


def _suffix(dtype):
    return "f32" if dtype == torch.float32 else "f64"


def log_density(x, loc, scale, log_weights, z_lim, missing=None):
    """The layer log-density on the fused kernel, or None when distances need clipping.

    ``x``, ``loc``, ``scale`` and ``log_weights`` are CPU tensors of one
    dtype, float32 or float64, of shapes (batch, in) and (out, in); ``loc``
    may be an expanded view. :func:`load` must have returned the library.

    ``missing``, a bool tensor of the shape of ``x`` (or None), marks inputs
    whose components are left out of every neuron's mixture for that sample
    (not renormalised: the mixture sum over the other components); ``x`` may
    hold anything there, NaN included, and gets a zero gradient there.
    """
    prepared = _prepare(x, loc, scale, log_weights, z_lim, missing)
    if prepared is None:
        return None
    return _apply(x, loc, scale, log_weights, prepared, None, None)


def layer_log_density(x, loc, raw_scale, min_scale, logits, z_lim):
    """:func:`log_density` of a layer from its raw parameters (float32 only).

    ``scale = min_scale + softplus(raw_scale)`` and ``log_weights =
    log_softmax(logits)`` (``logits`` may hold -inf: dropped components) are
    computed in the kernel library, and the backward pass returns the
    gradients of ``raw_scale`` and ``logits`` directly: two autograd nodes
    and four PyTorch kernels fewer per layer and step. None when distances
    need clipping.
    """
    lib = load()
    n_out, n_in = logits.shape
    with torch.no_grad():
        raw_d = raw_scale.detach().contiguous()
        logits_d = logits.detach().contiguous()
        scale, log_w, sig, weights = (raw_d.new_empty((n_out, n_in)) for _ in range(4))
        lib.ugmm_fused_transform_f32(n_out, n_in, _ptr(raw_d), float(min_scale), _ptr(logits_d), _ptr(scale),
                                     _ptr(log_w), _ptr(sig), _ptr(weights))
    prepared = _prepare(x, loc, scale, log_w, z_lim, None)
    if prepared is None:
        return None
    return _apply(x, loc, raw_scale, logits, prepared, sig, weights)


def _apply(x, loc, scale, log_weights, prepared, sig, weights):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, loc, scale, log_weights)):
        return _FusedLogDensity.apply(x, loc, scale, log_weights, *prepared, sig, weights)
    # inference: no autograd node, nothing kept for a backward pass
    return _forward(x.shape[1], *prepared, inference=True)[0]


class _Prepared:
    """A layer's prepared parameters for inference, valid while ``key`` holds."""

    __slots__ = ("key", "params", "bound", "loc_max", "inv_max", "finite", "routes")

    def __init__(self, key, params, bound, stats):
        self.key = key
        self.params, self.bound = params, bound
        loc_max, inv_max, probe = stats.tolist()
        self.loc_max, self.inv_max, self.finite = loc_max, inv_max, probe == probe
        self.routes = {}  # route -> its parameter arrays (params_t, e0), built on first use


#: layer -> _Prepared (weak: the entry goes with the layer; never pickled or deep-copied)
_PREPARED = weakref.WeakKeyDictionary()


def _parameter_key(layer, dtype):
    # in-place updates bump _version; a replaced tensor has another data_ptr
    params = layer._parameters  # (not through Module.__getattr__)
    tensors = (params["loc"], params["raw_scale"], params["logits"])
    return (dtype, float(layer.min_scale), bool(layer.tie_means),
            *((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in tensors))


def _prepare_layer(layer, dtype):
    """The layer's parameters prepared once for inference (no dropout)."""
    key = _parameter_key(layer, dtype)
    entry = _PREPARED.get(layer)
    if entry is not None and entry.key == key:
        return entry
    lib = load()
    n_out, n_in = layer.logits.shape
    kp = _padded(n_in, dtype)
    suffix = _suffix(dtype)
    with torch.no_grad():
        loc = layer.component_loc.detach()
        if dtype == torch.float32:
            # as layer_log_density: softplus and log_softmax in the kernel library
            raw_d = layer.raw_scale.detach().contiguous()
            logits_d = layer.logits.detach().contiguous()
            scale, log_w, sig, weights = (raw_d.new_empty((n_out, n_in)) for _ in range(4))
            lib.ugmm_fused_transform_f32(n_out, n_in, _ptr(raw_d), float(layer.min_scale), _ptr(logits_d),
                                         _ptr(scale), _ptr(log_w), _ptr(sig), _ptr(weights))
        else:
            # as ugmm_log_density from UGMMLayer.forward
            scale = layer.scale.detach().contiguous()
            log_w = torch.log_softmax(layer.logits.detach(), dim=1).contiguous()
        params = scale.new_empty((n_out, 3, kp))
        bound = scale.new_empty(n_out)
        stats = scale.new_empty(3)
        getattr(lib, f"ugmm_fused_prepare_params_{suffix}")(
            n_out, n_in, kp, _ptr(loc), loc.stride(0), loc.stride(1), _ptr(scale), _ptr(log_w), _ptr(params),
            _ptr(bound), _ptr(stats),
        )
    entry = _Prepared(key, params, bound, stats)
    _PREPARED[layer] = entry
    return entry


def cached_log_density(layer, x, z_lim):
    """Inference output of a :class:`UGMMLayer` without dropout (eval mode, or
    dropout 0), its parameters prepared once (and again only after an
    in-place change that bumps their version counters, which fused
    optimisers do not: the layer calls this only inside
    :func:`inference_routes`), or None when distances need clipping.

    Equal, bit for bit, to the layer's fused output without the cache: the
    same transforms and the same kernels; only their parameter part is kept
    between calls (the softplus, log_softmax and log2 of every component,
    and the transposed parameters of the sparse and transposed routes).
    ``x`` is a CPU tensor of the parameters' dtype (float32 or float64),
    and no gradient may be wanted.
    """
    lib = load()
    entry = _prepare_layer(layer, x.dtype)
    n_batch, n_in = x.shape
    kp = entry.params.shape[2]
    suffix = _suffix(x.dtype)
    stats = x.new_empty(2)
    if kp == n_in and x.is_contiguous():
        x_p = x.detach()
        n_zero = getattr(lib, f"ugmm_fused_scan_inputs_{suffix}")(n_batch, n_in, kp, _ptr(x_p), _ptr(stats))
    elif x.stride(1) == 1 and x.stride(0) >= n_in:  # rows padded in the kernel library (no torch pad)
        x_p = x.new_empty((n_batch, kp))
        n_zero = getattr(lib, f"ugmm_fused_pad_and_scan_inputs_{suffix}")(
            n_batch, n_in, kp, _ptr(x), x.stride(0), _ptr(x_p), _ptr(stats)
        )
    else:
        with torch.no_grad():
            x_p = torch.nn.functional.pad(x.detach().contiguous(), (0, kp - n_in))
        n_zero = getattr(lib, f"ugmm_fused_scan_inputs_{suffix}")(n_batch, n_in, kp, _ptr(x_p), _ptr(stats))
    x_max, probe = stats.tolist()
    # prepare()'s clip check, on the same values
    reach = x_max + entry.loc_max
    sqrt_max = z_lim * z_lim
    if not (reach * entry.inv_max < z_lim and reach < sqrt_max and entry.inv_max < sqrt_max
            and probe == probe and entry.finite):
        return None
    return _forward(n_in, x_p, None, entry.params, entry.bound, n_zero, inference=True, routes=entry.routes)[0]


#: log sqrt(2 pi), as in _functional (which imports this module)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class _PreparedProduct:
    """A product layer's parameters for the kernel: params (out, 3, kp) holds
    loc, 1 / scale and -w / 2, cst (out) is -sum_k w log(scale sqrt(2 pi));
    None when some of them are not finite (the reference kernel then)."""

    __slots__ = ("key", "params", "cst")

    def __init__(self, key, params, cst):
        self.key, self.params, self.cst = key, params, cst


def _product_params(loc, inv, hw):
    """The product kernel's parameters (out, 3, kp): loc, inv and hw, each zero-padded to whole vectors."""
    n_out, n_in = loc.shape
    params = loc.new_zeros((n_out, 3, _padded(n_in, loc.dtype)))
    params[:, 0, :n_in] = loc
    params[:, 1, :n_in] = inv
    params[:, 2, :n_in] = hw
    return params


def _prepare_product(layer, dtype):
    key = _parameter_key(layer, dtype)
    entry = _PREPARED.get(layer)
    if entry is not None and entry.key == key:
        return entry
    with torch.no_grad():
        scale = layer.scale.detach()
        weights = torch.log_softmax(layer.logits.detach(), dim=1).exp()
        params = _product_params(layer.component_loc.detach(), scale.reciprocal(), -0.5 * weights)
        cst = -(weights.double() * (scale.double().log() + _HALF_LOG_2PI)).sum(dim=1).to(dtype)
        if not (bool(torch.isfinite(params).all()) and bool(torch.isfinite(cst).all())):
            params = cst = None
    entry = _PreparedProduct(key, params, cst)
    _PREPARED[layer] = entry
    return entry


class _ProductSquares(torch.autograd.Function):
    """``q[b, j] = sum_k hw[j, k] * clip((x[b, k] - loc[j, k]) * inv[j, k])**2`` on the kernel library.

    The part of a product neuron's output that depends on the inputs
    (:func:`product_log_density` is ``q`` plus a constant per neuron, with
    ``hw = -w / 2`` and ``inv = 1 / scale``), with its gradients with respect
    to ``x``, ``loc``, ``scale`` and ``hw``; the caller's autograd carries
    them on to the weights' logits and the raw scales. The clipped components
    pass no gradient to ``x``, ``loc`` and ``scale``, as the reference's
    ``clamp``. ``inv`` must be finite.
    """

    @staticmethod
    def forward(ctx, x, loc, scale, inv, hw, z_lim):
        n_batch, n_in = x.shape
        params = _product_params(loc.detach(), inv.detach(), hw.detach())
        n_out, _, kp = params.shape
        x_p = torch.nn.functional.pad(x.detach(), (0, kp - n_in)).contiguous()
        out = x.new_empty((n_batch, n_out))
        no_constant = x.new_zeros(n_out)  # (a name keeps it alive: the kernel gets its address only)
        getattr(load(), f"ugmm_fused_product_forward_{_suffix(x.dtype)}")(
            n_batch, n_out, kp, _ptr(x_p), _ptr(params), _ptr(no_constant), z_lim, _ptr(out), 1,
        )
        ctx.save_for_backward(x_p, params)
        ctx.z_lim, ctx.n_in = z_lim, n_in
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):
        x_p, params = ctx.saved_tensors
        n_batch, kp = x_p.shape
        n_out, n_in = params.shape[0], ctx.n_in
        grad_out = grad_out.contiguous()
        grad_x = x_p.new_empty((n_batch, kp))
        sums = params.new_empty((n_out, 3, kp))
        getattr(load(), f"ugmm_fused_product_backward_{_suffix(x_p.dtype)}")(
            n_batch, n_out, kp, _ptr(x_p), _ptr(params), _ptr(grad_out), ctx.z_lim, _ptr(grad_x), _ptr(sums),
        )
        inv, hw = params[:, 1, :n_in], params[:, 2, :n_in]
        factor = -2.0 * hw * inv
        return grad_x[:, :n_in], factor * sums[:, 0, :n_in], factor * sums[:, 1, :n_in], None, sums[:, 2, :n_in], None


def product_log_density_fused(x, loc, scale, log_weights, z_lim):
    """:func:`~sklearn_ugmm.nn.product_log_density` without dropout or missing
    inputs on the kernel library, differentiable in all four tensors.

    ``z`` is ``(x - loc)`` times ``1 / scale`` (a rounding more than the
    reference's division); the log-normalisers' weighted sum is computed
    here in PyTorch. ``x`` and the parameters are CPU tensors of one dtype
    (float32 or float64). None when ``1 / scale`` overflows (the reference
    kernel then).
    """
    inv = scale.detach().reciprocal()
    if not bool(torch.isfinite(inv).all()):
        return None
    weights = log_weights.exp()
    constant = -(weights * (torch.log(scale) + _HALF_LOG_2PI)).sum(dim=1)
    return _ProductSquares.apply(x, loc, scale, inv, -0.5 * weights, z_lim) + constant


def cached_product_log_density(layer, x, z_lim):
    """Inference output of a :class:`UGMMProductLayer` without dropout, on the
    kernel library (its parameters prepared once, kept as in
    :func:`cached_log_density`, so only inside :func:`inference_routes`), or
    None when some parameter is not finite (1 / scale overflows: the
    reference kernel then).

    The reference formula's sum, in another order: ``z`` is ``(x - loc)``
    times ``1 / scale`` (a rounding more than the reference's division),
    clipped at ``z_lim`` as there, and the log-normalisers' weighted sum is
    one constant per neuron. ``x`` is a CPU tensor of the parameters' dtype
    (float32 or float64), and no gradient may be wanted.
    """
    entry = _prepare_product(layer, x.dtype)
    if entry.params is None:
        return None
    n_batch, n_in = x.shape
    n_out, _, kp = entry.params.shape
    with torch.no_grad():
        x_p = x.detach().contiguous()
        if kp != n_in:
            x_p = torch.nn.functional.pad(x_p, (0, kp - n_in))
    out = x_p.new_empty((n_batch, n_out))
    getattr(load(), f"ugmm_fused_product_forward_{_suffix(x.dtype)}")(
        n_batch, n_out, kp, _ptr(x_p), _ptr(entry.params), _ptr(entry.cst), z_lim, _ptr(out),
        _threads(n_batch * n_out * n_in),
    )
    return out


#: Fraction of inputs exactly 0 from which the forward pass takes the sparse
#: route: the zero inputs' components as one matrix product, exponentials
#: only for the nonzero inputs (MNIST: about 80% zeros).
SPARSE_MIN_ZERO_FRACTION = 0.5


_INFERENCE_ROUTES = contextvars.ContextVar("sklearn_ugmm_inference_routes", default=False)


def inference_routes_active():
    """Whether the calling context is inside :func:`inference_routes`."""
    return _INFERENCE_ROUTES.get()


@contextlib.contextmanager
def inference_routes():
    """Let no-grad calls inside the block take the inference-only routes.

    They are the transposed dense route (vectorised over neurons, for layers
    with few inputs), the sparse route's complement route (no matrix
    product over the zero inputs), in float64 an exp2 polynomial of lower
    degree (relative error 9e-15) and the log2 of the mixture sums eight at
    a time, and product layers on the kernel library; calls keep no shifts
    for a backward pass. Results agree with the other routes to rounding
    (float64: 1e-14, float32: 1e-6 relative), not bit for bit, which is why they are opt-in: a fit's
    no-grad work (the data-dependent initialisation, validation scores)
    stays on the routes of its backward pass and gives the same fit. The
    estimators' prediction methods enable them.
    """
    token = _INFERENCE_ROUTES.set(True)
    try:
        yield
    finally:
        _INFERENCE_ROUTES.reset(token)


#: The transposed dense route (inside :func:`inference_routes`): vectorised
#: over neurons instead of inputs, for layers where that takes fewer vector
#: operations. None chooses by :func:`_transposed_pays`; True or False forces
#: it (tests).
TRANSPOSED_ROUTE = None


def _transposed_pays(n_in, n_out, width):
    """Whether the transposed route pays: clearly fewer vectors per sample.

    Vectorised over inputs, a sample costs ``ceil(in / W)`` vectors per
    neuron; vectorised over neurons, ``ceil(out / W)`` vectors per input,
    each about 10% dearer (measured: 10 -> 64 and 36 -> 64 float32 layers
    0.68 and 0.82 times the time, 128 -> 64 1.08 times, 64 -> 10 2.5 times).
    """
    if TRANSPOSED_ROUTE is not None:
        return bool(TRANSPOSED_ROUTE)
    by_inputs = n_out * -(-n_in // width)
    by_neurons = n_in * -(-n_out // width)
    return 1.1 * by_neurons < by_inputs


def _route_parameters(routes, route, params, jp, with_e0):
    """params_t (kp, 3, jp) and e0 (out, kp) or None: from ``routes`` when it
    holds them (a cached layer), else computed (and kept there when a dict)."""
    found = routes.get(route) if routes is not None else None
    if found is not None:
        return found
    n_out, _, kp = params.shape
    e0 = params.new_empty((n_out, kp)) if with_e0 else None
    params_t = params.new_empty((kp, 3, jp))
    getattr(load(), f"ugmm_fused_sparse_setup_{_suffix(params.dtype)}")(
        n_out, kp, jp, _ptr(params), _optional_ptr(e0), _ptr(params_t)
    )
    if routes is not None:
        routes[route] = (params_t, e0)
    return params_t, e0


def _forward(n_in, x_p, x_mask, params, bound, n_zero, inference=False, routes=None):
    """Kernel forward: the output (batch, out), the log2 mixture shifts (out, batch)
    (None in inference) and, on the sparse route, what its backward pass
    needs (else None).

    ``inference`` (no backward pass will follow) inside
    :func:`inference_routes` allows the inference-only routes, whose sums
    are rounded in another order. ``routes`` (a dict, inference only) keeps
    the routes' parameter arrays between calls."""
    fast = inference and inference_routes_active()
    n_batch = x_p.shape[0]
    n_out, _, kp = params.shape
    out = x_p.new_empty((n_batch, n_out))
    # log2 of each mixture relative to its bound, for the backward pass
    # (none on the inference routes: the kernels then also take the log2 of
    # the sums eight at a time in float64)
    shift_t = None if fast else x_p.new_empty((n_out, n_batch))
    lib = load()
    suffix = _suffix(x_p.dtype)
    if x_mask is None and n_batch > 1 and n_zero >= SPARSE_MIN_ZERO_FRACTION * n_batch * n_in:
        jp = _padded(n_out, x_p.dtype)
        params_t, e0 = _route_parameters(routes, "sparse", params, jp, with_e0=True)
        if fast:
            # the complement route: no matrix product over the zero inputs
            e0_t, total = _complement_parameters(routes, e0, jp)
            getattr(lib, f"ugmm_fused_complement_forward_{suffix}")(
                n_batch, n_out, kp, jp, _ptr(x_p), _ptr(params), _ptr(params_t), _ptr(e0_t), _ptr(total),
                _ptr(bound), _ptr(out), _threads(n_batch * n_out * n_in),
            )
            return out, None, None
        zeros = torch.empty_like(x_p)
        getattr(lib, f"ugmm_fused_sparse_zeros_{suffix}")(n_batch, n_in, kp, _ptr(x_p), _ptr(zeros))
        zero_sums = zeros @ e0.t()
        getattr(lib, f"ugmm_fused_sparse_forward_{suffix}")(
            n_batch, n_out, kp, jp, _ptr(x_p), _ptr(params), _ptr(params_t), _ptr(bound), _ptr(zero_sums),
            _ptr(out), _optional_ptr(shift_t), _threads(n_batch * n_out * n_in),
        )
        return out, shift_t, (zeros, params_t)
    width = lib.widths[x_p.dtype]
    if fast and x_mask is None and _transposed_pays(n_in, n_out, width):
        jp = _padded(n_out, x_p.dtype)
        params_t, _ = _route_parameters(routes, "transposed", params, jp, with_e0=False)
        getattr(lib, f"ugmm_fused_transposed_forward_{suffix}")(
            n_batch, n_out, n_in, kp, jp, _ptr(x_p), _ptr(params), _ptr(params_t), _ptr(bound), _ptr(out),
            None, _threads(n_batch * n_out * n_in),
        )
        return out, shift_t, None
    getattr(lib, f"ugmm_fused_forward_{suffix}")(
        n_batch, n_out, kp, _ptr(x_p), _optional_ptr(x_mask), _ptr(params), _ptr(bound), _ptr(out),
        _optional_ptr(shift_t), _threads(n_batch * n_out * n_in),
    )
    return out, shift_t, None


def _complement_parameters(routes, e0, jp):
    """e0_t (kp, jp) and total (jp) of the complement route, from ``routes``
    when it holds them (a cached layer), else computed (and kept there)."""
    found = routes.get("complement") if routes is not None else None
    if found is not None:
        return found
    n_out, kp = e0.shape
    e0_t, total = e0.new_empty((kp, jp)), e0.new_empty(jp)
    getattr(load(), f"ugmm_fused_complement_setup_{_suffix(e0.dtype)}")(n_out, kp, jp, _ptr(e0), _ptr(e0_t),
                                                                         _ptr(total))
    if routes is not None:
        routes["complement"] = (e0_t, total)
    return e0_t, total


def _sparse_backward(x_p, shift_t, grad_out, zeros, params_t, n_threads):
    """Parameter gradients (3, out, kp) on the sparse route, or None when some
    mixture is far from its bound (the dense backward handles those)."""
    lib = load()
    suffix = _suffix(x_p.dtype)
    n_batch, kp = x_p.shape
    n_out = shift_t.shape[0]
    jp = params_t.shape[2]
    factor_bt = x_p.new_empty((n_batch, jp))
    if getattr(lib, f"ugmm_fused_sparse_factors_{suffix}")(n_batch, n_out, jp, _ptr(shift_t), _ptr(grad_out),
                                                           _ptr(factor_bt)):
        return None
    zero_grads = zeros.t() @ factor_bt  # (kp, jp)
    grads = x_p.new_empty((3, n_out, kp))
    getattr(lib, f"ugmm_fused_sparse_backward_{suffix}")(
        n_batch, n_out, kp, jp, _ptr(x_p), _ptr(params_t), _ptr(factor_bt), _ptr(zero_grads), _ptr(grads),
        n_threads,
    )
    return grads


def _prepare(x, loc, scale, log_weights, z_lim, missing):
    """x_p, x_mask, params, bound and the count of zero inputs for the kernel,
    or None when distances need clipping."""
    lib = load()
    n_batch, n_in = x.shape
    n_out = log_weights.shape[0]
    kp = _padded(n_in, x.dtype)
    with torch.no_grad():
        x_p = x.detach().contiguous()
        x_mask = None
        if missing is not None:
            x_p = x_p.masked_fill(missing, 0.0)
            x_mask = torch.zeros_like(x_p).masked_fill_(missing, ABSENT_BITS)
            if kp != n_in:
                x_mask = torch.nn.functional.pad(x_mask, (0, kp - n_in))
        if kp != n_in:
            x_p = torch.nn.functional.pad(x_p, (0, kp - n_in))
        loc_d = loc.detach()
        scale_d = scale.detach().contiguous()
        log_w = log_weights.detach().contiguous()
        params = x.new_empty((n_out, 3, kp))
        bound = x.new_empty(n_out)
        n_zero = getattr(lib, f"ugmm_fused_prepare_{_suffix(x.dtype)}")(
            n_batch, n_out, n_in, kp, _ptr(x_p), _ptr(loc_d), loc_d.stride(0), loc_d.stride(1),
            _ptr(scale_d), _ptr(log_w), _ptr(params), _ptr(bound), z_lim,
        )
    if n_zero < 0:  # distances need clipping
        return None
    return x_p, x_mask, params, bound, n_zero


class _FusedLogDensity(torch.autograd.Function):
    """The kernel as an autograd node; with ``sig`` and ``weights`` (raw mode)
    its third and fourth inputs are ``raw_scale`` and ``logits`` instead of
    ``scale`` and ``log_weights``."""

    @staticmethod
    def forward(ctx, x, loc, scale, log_weights, x_p, x_mask, params, bound, n_zero, sig, weights):
        n_in = x.shape[1]
        out, shift_t, sparse = _forward(n_in, x_p, x_mask, params, bound, n_zero)
        zeros, params_t = sparse if sparse is not None else (None, None)
        ctx.save_for_backward(x_p, x_mask, params, shift_t, sig, weights, zeros, params_t)
        ctx.n_in = n_in
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):
        x_p, x_mask, params, shift_t, sig, weights, zeros, params_t = ctx.saved_tensors
        n_batch, kp = x_p.shape
        n_out, n_in = params.shape[0], ctx.n_in
        need_x = ctx.needs_input_grad[0]
        grad_x = x_p.new_empty((n_batch, kp)) if need_x else None
        grad_out = grad_out.contiguous()
        n_threads = _threads(n_batch * n_out * n_in)
        grads = None
        if zeros is not None and not need_x:
            grads = _sparse_backward(x_p, shift_t, grad_out, zeros, params_t, n_threads)
        if grads is None:
            grads = params.new_empty((3, n_out, kp))
            factor, offset = params.new_empty((n_out, n_batch)), params.new_empty((n_out, n_batch))
            getattr(load(), f"ugmm_fused_backward_{_suffix(x_p.dtype)}")(
                n_batch, n_out, kp, _ptr(x_p), _optional_ptr(x_mask), _ptr(params), _ptr(shift_t),
                _ptr(grad_out), _ptr(factor), _ptr(offset), _ptr(grad_x) if need_x else None, _ptr(grads),
                n_threads,
            )
        grad_logw, grad_loc, grad_scale = grads[:, :, :n_in].unbind(dim=0)
        if sig is not None:  # raw mode: to the gradients of raw_scale and logits
            grad_scale, grad_logw = sig.new_empty(sig.shape), sig.new_empty(sig.shape)
            load().ugmm_fused_untransform_f32(n_out, n_in, kp, _ptr(grads), _ptr(sig), _ptr(weights),
                                              _ptr(grad_scale), _ptr(grad_logw))
        if need_x:
            grad_x = grad_x[:, :n_in]
        needs = ctx.needs_input_grad
        return (
            grad_x,
            grad_loc if needs[1] else None,
            grad_scale if needs[2] else None,
            grad_logw if needs[3] else None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )
