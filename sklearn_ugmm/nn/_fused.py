"""The fused CPU kernel of the uGMM layer: build on first use, load, call.

``_fused_kernel.cpp`` is plain C++ (no PyTorch headers), compiled once with
the system C++ compiler into a shared library cached under
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and called
through :mod:`ctypes`. Its threads come from the OpenMP runtime PyTorch has
already loaded, and each call uses at most ``torch.get_num_threads()`` of
them, fewer for small problems.

When no compiler is found, the build fails or the library does not load,
:func:`load` returns None and the caller falls back to the reference kernel.
The compiler is ``$SKLEARN_UGMM_CXX`` when set, else the first of ``c++``,
``g++`` and ``clang++`` on the PATH.
"""

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("_fused_kernel.cpp")
_LOG2E = 1.0 / math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
#: Components (batch x out x in) per thread below which a call stays on one thread.
GRAIN_COMPONENTS = 2**17
_FLAG_SETS = (
    ["-O3", "-std=gnu++17", "-march=native", "-fopenmp"],
    ["-O3", "-std=gnu++17", "-fopenmp"],
    ["-O3", "-std=gnu++17"],
)

# None: not tried yet; False: unavailable (see _failure); else the loaded library
_library = None
_failure = ""


def _compiler():
    explicit = os.environ.get("SKLEARN_UGMM_CXX")
    if explicit:
        return shutil.which(explicit)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_signature():
    # -march=native binaries must not be shared between different CPUs
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _cache_dir():
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions"
    )
    return Path(root) / "sklearn_ugmm_fused"


def _build(compiler):
    source = _SOURCE.read_text()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            "\0".join([source, compiler, *flags, _cpu_signature()]).encode()
        ).hexdigest()[:20]
        target = _cache_dir() / f"ugmm_fused_{key}.so"
        if target.exists():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # build beside the target and rename: concurrent builds never see half a file
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            cmd = [compiler, *flags, "-shared", "-fPIC", str(_SOURCE), "-o", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.replace(tmp, target)
                return target
            os.unlink(tmp)
            errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-500:]}")
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{compiler} {' '.join(flags)}: {exc}")
    raise RuntimeError("; ".join(errors))


def _bind(path):
    lib = ctypes.CDLL(str(path))
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(lib, f"ugmm_fused_forward_{suffix}").argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, cint]
        getattr(lib, f"ugmm_fused_backward_{suffix}").argtypes = [
            i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint,
        ]
    lib.widths = {torch.float32: lib.ugmm_fused_width_f32(), torch.float64: lib.ugmm_fused_width_f64()}
    return lib


def load():
    """The fused kernel library, built on first use; None when it is unavailable."""
    global _library, _failure
    if _library is None:
        compiler = _compiler()
        try:
            if compiler is None:
                raise RuntimeError("no C++ compiler found (set SKLEARN_UGMM_CXX to choose one)")
            _library = _bind(_build(compiler))
        except Exception as exc:  # any failure means: use the reference kernel
            _library, _failure = False, str(exc)
    return _library or None


def failure_reason():
    """Why :func:`load` returned None (empty when the kernel loaded or was not tried)."""
    return _failure


def _threads(n_components):
    return max(1, min(torch.get_num_threads(), n_components // GRAIN_COMPONENTS))


def _padded(t, width, fill):
    n = t.shape[-1]
    kp = -(-n // width) * width
    if kp == n:
        return t.contiguous()
    out = t.new_full((*t.shape[:-1], kp), fill)
    out[..., :n] = t
    return out


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


class FusedLogDensity(torch.autograd.Function):
    """Autograd function of the fused kernel (CPU, float32 or float64, contiguous-safe)."""

    @staticmethod
    def forward(ctx, x, loc, scale, log_weights):
        lib = load()
        suffix = "f32" if x.dtype == torch.float32 else "f64"
        width = lib.widths[x.dtype]
        n_batch, n_in = x.shape
        n_out = loc.shape[0]
        with torch.no_grad():
            const = (log_weights - torch.log(scale) - _HALF_LOG_2PI) * _LOG2E
            bound = const.amax(dim=1)
            params = torch.stack(
                [loc, scale.square().reciprocal_().mul_(-0.5 * _LOG2E), const.sub_(bound[:, None])], dim=1
            )
            params = _padded(params, width, 0.0)
            params[:, 2, n_in:] = -math.inf  # padding components have weight zero
            x_p = _padded(x, width, 0.0)
            out = x.new_empty((n_batch, n_out))
        kp = params.shape[-1]
        n_threads = _threads(n_batch * n_out * n_in)
        getattr(lib, f"ugmm_fused_forward_{suffix}")(
            n_batch, n_out, kp, _ptr(x_p), _ptr(params), _ptr(bound), _ptr(out), n_threads
        )
        ctx.save_for_backward(x_p, params, bound, scale, out)
        ctx.n_in = n_in
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x_p, params, bound, scale, out = ctx.saved_tensors
        lib = load()
        suffix = "f32" if x_p.dtype == torch.float32 else "f64"
        n_batch, kp = x_p.shape
        n_out, n_in = params.shape[0], ctx.n_in
        shift_t = (out * _LOG2E - bound).t().contiguous()
        grad_t = grad_out.t().contiguous()
        need_x = ctx.needs_input_grad[0]
        grad_x = x_p.new_empty((n_batch, kp)) if need_x else None
        sums = params.new_empty((n_out, 3, kp))
        n_threads = _threads(n_batch * n_out * n_in)
        getattr(lib, f"ugmm_fused_backward_{suffix}")(
            n_batch, n_out, kp, _ptr(x_p), _ptr(params), _ptr(shift_t), _ptr(grad_t),
            _ptr(grad_x) if need_x else None, _ptr(sums), n_threads,
        )
        sum_r, sum_rd, sum_rdd = sums[:, :, :n_in].unbind(dim=1)
        inv_var = scale.square().reciprocal()
        grad_loc = sum_rd * inv_var if ctx.needs_input_grad[1] else None
        grad_scale = None
        if ctx.needs_input_grad[2]:
            # d component / d scale = (z**2 - 1) / scale
            grad_scale = (sum_rdd * inv_var - sum_r) / scale
        if need_x:
            grad_x = grad_x[:, :n_in]
        return grad_x, grad_loc, grad_scale, sum_r if ctx.needs_input_grad[3] else None
