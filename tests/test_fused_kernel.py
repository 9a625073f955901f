"""The fused C++ kernel: exactness against the plain formula, routing and fallback."""

import contextlib
import math
import os
import platform
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sklearn_ugmm.nn import (
    MaskedUGMMLayer,
    UGMMLayer,
    UGMMNet,
    UGMMProductLayer,
    product_log_density,
    ugmm_log_density,
    ugmm_log_density_reference,
)
from sklearn_ugmm.nn import _functional, _fused

requires_fused = pytest.mark.skipif(
    _fused.load() is None, reason=f"fused kernel unavailable: {_fused.failure_reason()}"
)


def _inputs(n_batch, n_in, n_out, dtype, seed=0, x_scale=1.0, min_scale=0.2):
    """x, loc, scale and mixing logits, all leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batch, n_in, generator=g, dtype=dtype) * x_scale
    loc = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    scale = torch.rand(n_out, n_in, generator=g, dtype=dtype) + min_scale
    logits = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, loc, scale, logits)]


def _value_and_grads(fn, x, loc, scale, logits, mask=None, seed=1):
    """Output of fn(x, loc, scale, log_softmax(logits)) and the gradients of all four leaves."""
    masked = logits if mask is None else logits.masked_fill(mask, -math.inf)
    out = fn(x, loc, scale, torch.log_softmax(masked, dim=1))
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    weight = weight.to(out.dtype)
    grads = torch.autograd.grad(out, (x, loc, scale, logits), weight)
    return out.detach(), grads


def _fused_fn(*args):
    return ugmm_log_density(*args, kernel="fused")


def _as_float64(tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


def _assert_relative(ours, ref, rtol):
    # normwise per tensor: elementwise relative error is meaningless where
    # a gradient cancels to ~0
    assert bool(torch.isfinite(ours).all())
    assert float((ours.double() - ref.double()).abs().max()) <= rtol * max(float(ref.abs().max()), 1e-30)


def _assert_matches_formula(inputs, mask=None, rtol=None):
    """Fused (in the inputs' dtype) against the plain formula in float64."""
    dtype = inputs[0].dtype
    rtol = rtol if rtol is not None else (1e-10 if dtype == torch.float64 else 1e-5)
    out, grads = _value_and_grads(_fused_fn, *inputs, mask=mask)
    ref_out, ref_grads = _value_and_grads(ugmm_log_density_reference, *_as_float64(inputs), mask=mask)
    rel = ((out.double() - ref_out).abs() / ref_out.abs().clamp(min=1.0)).max()
    assert float(rel) <= rtol
    for name, ours, ref in zip(("x", "loc", "scale", "logits"), grads, ref_grads):
        if mask is not None and name == "logits":
            # the formula's gradient is nan behind -inf weights (0 * inf); ours is 0
            assert bool((ours[mask] == 0).all())
            ours, ref = ours[~mask], ref[~mask]
        _assert_relative(ours, ref, rtol)


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape",
    [(37, 11, 7), (1, 1, 1), (5, 16, 3), (300, 33, 5), (64, 784, 9)],
    ids=["odd", "single", "one-vector", "two-row-tiles", "mnist-wide"],
)
def test_matches_the_formula(dtype, shape):
    _assert_matches_formula(_inputs(*shape, dtype))


@contextlib.contextmanager
def two_threads(n_components):
    """Torch (and so the kernel) at two threads for a call of ``n_components`` components."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _fused._threads(n_components) == 2
        yield
    finally:
        torch.set_num_threads(previous)


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_the_formula_with_two_threads(dtype):
    # large enough for the kernel to split the work
    shape = (300, 40, 30)
    with two_threads(math.prod(shape)):
        _assert_matches_formula(_inputs(*shape, dtype, seed=3))


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dropout_and_minus_inf_weights(dtype):
    x, loc, scale, logits = _inputs(23, 19, 6, dtype, seed=4)
    mask = torch.rand(6, 19, generator=torch.Generator().manual_seed(0)) < 0.6
    mask[:, 0] = False  # every neuron keeps a component
    mask[0, 1:] = True  # and one neuron keeps only that one
    _assert_matches_formula([x, loc, scale, logits], mask=mask)


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_from_every_component(dtype):
    # log-densities around -2000: the per-neuron bound underflows and the
    # kernel switches to an exact per-sample peak, forward and backward
    x, loc, scale, logits = _inputs(12, 21, 3, dtype, seed=5)
    with torch.no_grad():
        x[::2] += 60.0
        scale.fill_(1.0)
    out, _ = _value_and_grads(_fused_fn, x, loc, scale, logits)
    assert float(out.min()) < -1500
    # float32: softmax weights from differences of log-densities near -2000
    # (ulp 1.2e-4) carry that much rounding in any implementation
    _assert_matches_formula([x, loc, scale, logits], rtol=1e-10 if dtype == torch.float64 else 1e-3)


@requires_fused
def test_extreme_inputs_float64():
    # |x| ~ 1e6 and scales down to 1e-4: log-densities ~ -1e16, one component dominates
    inputs = _inputs(16, 10, 4, torch.float64, seed=6, x_scale=1e6, min_scale=1e-4)
    _assert_matches_formula(inputs)


@requires_fused
def test_extreme_inputs_float32():
    # |x| ~ 1e6, scales down to 1e-3: log-densities ~ -1e11, still below the clipping limit
    inputs = _inputs(16, 10, 4, torch.float32, seed=6, x_scale=1e6, min_scale=1e-3)
    out, grads = _value_and_grads(_fused_fn, *inputs)
    ref_out, ref_grads = _value_and_grads(ugmm_log_density_reference, *_as_float64(inputs))
    assert float(out.min()) < -1e11
    rel = ((out.double() - ref_out).abs() / ref_out.abs()).max()
    assert float(rel) <= 1e-5
    for ours, ref in zip(grads, ref_grads):
        _assert_relative(ours, ref, 1e-5)


@requires_fused
def test_beyond_the_clipping_limit_uses_the_reference_kernel():
    x, loc, scale, logits = _inputs(10, 6, 4, torch.float32, seed=8, x_scale=1e6)
    with torch.no_grad():
        scale.mul_(1e-4)  # |z| up to ~1e11: distances must be clipped in float32
    log_w = torch.log_softmax(logits, dim=1)
    assert _fused.log_density(x, loc, scale, log_w, _functional._z_limit(torch.float32)) is None
    ours = ugmm_log_density(x, loc, scale, log_w, kernel="fused")
    torch.testing.assert_close(ours, ugmm_log_density(x, loc, scale, log_w, kernel="reference"), rtol=0, atol=0)
    assert all(bool(torch.isfinite(g).all()) for g in torch.autograd.grad(ours.sum(), (x, loc, scale, logits)))


@requires_fused
def test_tied_means_use_the_fused_kernel():
    x, _, scale, logits = _inputs(17, 20, 4, torch.float64, seed=9)
    point = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def tied(fn):
        out = fn(x, point[:, None].expand(4, 20), scale, torch.log_softmax(logits, dim=1))
        return out, torch.autograd.grad(out.sum(), (x, point, scale, logits))

    out, grads = tied(_fused_fn)
    ref_out, ref_grads = tied(ugmm_log_density_reference)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@requires_fused
def test_gradcheck_float64():
    x, loc, scale, logits = _inputs(6, 5, 3, torch.float64, seed=10)
    log_w = torch.log_softmax(logits, dim=1).detach().requires_grad_()
    assert torch.autograd.gradcheck(_fused_fn, (x, loc, scale, log_w))


@requires_fused
def test_gradcheck_float64_far_path():
    x, loc, scale, logits = _inputs(4, 3, 2, torch.float64, seed=11)
    with torch.no_grad():
        x[0] += 40.0
        scale.fill_(0.9)
    log_w = torch.log_softmax(logits, dim=1).detach().requires_grad_()
    assert torch.autograd.gradcheck(_fused_fn, (x, loc, scale, log_w))


@requires_fused
@pytest.mark.parametrize("layer_cls", ["plain", "tied", "masked"])
def test_layers_agree_across_kernels(layer_cls):
    # the same layer (dropout on, so -inf weights too) under both kernels
    torch.manual_seed(0)
    if layer_cls == "masked":
        mask = torch.rand(12, 20) < 0.5
        mask[:, 0] = True
        layer = MaskedUGMMLayer(20, 12, mask=mask, dropout=0.3, dtype=torch.float64)
    else:
        layer = UGMMLayer(20, 12, dropout=0.3, tie_means=layer_cls == "tied", dtype=torch.float64)
    x = torch.randn(40, 20, dtype=torch.float64, requires_grad=True)
    results = []
    for kernel in ("fused", "reference"):
        layer.kernel = kernel
        layer.generator = torch.Generator().manual_seed(5)  # same dropout masks
        out = layer(x)
        results.append((out, torch.autograd.grad(out.square().sum(), (x, *layer.parameters()))))
    (out_f, grads_f), (out_r, grads_r) = results
    torch.testing.assert_close(out_f, out_r, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@requires_fused
def test_net_trains_identically_on_both_kernels():
    X = torch.rand(64, 30)
    y = torch.arange(64) % 3
    losses = {}
    for kernel in ("fused", "reference"):
        net = UGMMNet(30, (16,), 3, kernel=kernel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        net.init_from_data(X.double(), generator=torch.Generator().manual_seed(1))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        history = []
        for _ in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(X.double()), y)
            loss.backward()
            opt.step()
            history.append(loss.item())
        losses[kernel] = history
    assert losses["fused"] == pytest.approx(losses["reference"], rel=1e-9)


def test_auto_keeps_small_problems_on_the_reference_kernel(monkeypatch):
    # an ordinary small fit never waits for (or needs) the build
    def fail():
        raise AssertionError("the fused kernel must not be loaded for a small problem")

    monkeypatch.setattr(_fused, "load", fail)
    x, loc, scale, logits = _inputs(30, 4, 8, torch.float32)
    ugmm_log_density(x, loc, scale, torch.log_softmax(logits, dim=1), kernel="auto")
    UGMMNet(4, (32,), 3)(torch.randn(128, 4))  # iris-sized


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_an_iris_fit_never_builds_the_fused_kernel(monkeypatch, objective):
    from sklearn.datasets import load_iris
    from sklearn.exceptions import ConvergenceWarning

    from sklearn_ugmm import UGMMClassifier

    monkeypatch.setattr(_fused, "_library", None)  # a fresh process: nothing loaded yet
    monkeypatch.setattr(_fused, "load", lambda: pytest.fail("an iris fit must not load the fused kernel"))
    X, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = UGMMClassifier(objective=objective, max_iter=3, random_state=0).fit(X, y)
    clf.predict_proba(X)
    clf.predict_proba(X[:1])


@requires_fused
def test_small_predictions_take_the_prediction_route_once_the_library_is_loaded(monkeypatch):
    # below AUTO_FUSED_MIN_COMPONENTS a fit stays on PyTorch; a prediction
    # takes the kernel library's prepared route at any size once the library
    # is loaded (it never builds it: see the iris test above)
    from sklearn.datasets import load_breast_cancer
    from sklearn.exceptions import ConvergenceWarning

    from sklearn_ugmm import UGMMClassifier

    assert _fused.load() is not None
    X, y = load_breast_cancer(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = UGMMClassifier((16,), max_iter=3, random_state=0).fit(X, y)
    rows = X[:3]
    assert 3 * 30 * 16 < _functional.AUTO_FUSED_MIN_COMPONENTS
    mixture = _count_calls(monkeypatch, "cached_log_density", _fused)
    product = _count_calls(monkeypatch, "cached_product_log_density", _fused)
    proba = clf.predict_proba(rows)
    assert len(mixture) == 1 and len(product) == 1
    monkeypatch.setattr(_fused, "_library", False)  # as without a compiler: the reference kernel
    reference = clf.predict_proba(rows)
    assert len(mixture) == 1 and len(product) == 1
    np.testing.assert_allclose(proba, reference, rtol=0, atol=1e-12)


@requires_fused
def test_auto_uses_the_fused_kernel_for_large_problems(monkeypatch):
    calls = _count_calls(monkeypatch, "log_density", _fused)
    n_batch, n_in, n_out = 64, 128, 32
    assert n_batch * n_in * n_out >= _functional.AUTO_FUSED_MIN_COMPONENTS
    x, loc, scale, logits = _inputs(n_batch, n_in, n_out, torch.float32)
    ugmm_log_density(x, loc, scale, torch.log_softmax(logits, dim=1))
    assert calls == [1]


@pytest.fixture
def unbuilt_kernel(monkeypatch, tmp_path):
    """A process that has not loaded the kernel yet, with an empty build cache."""
    monkeypatch.setattr(_fused, "_library", None)
    monkeypatch.setattr(_fused, "_failure", "")
    monkeypatch.setattr(_functional, "_warned_unavailable", False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return monkeypatch


@pytest.mark.parametrize("compiler", ["/nonexistent/c++", "false"], ids=["missing", "failing"])
def test_falls_back_to_the_reference_kernel_without_a_compiler(unbuilt_kernel, compiler):
    unbuilt_kernel.setenv("SKLEARN_UGMM_CXX", compiler)
    x, loc, scale, logits = _inputs(64, 128, 32, torch.float64)
    log_w = torch.log_softmax(logits, dim=1)
    expected = ugmm_log_density(x, loc, scale, log_w, kernel="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back silently
        torch.testing.assert_close(ugmm_log_density(x, loc, scale, log_w), expected, rtol=0, atol=0)
    assert _fused.load() is None
    assert _fused.failure_reason()
    with pytest.warns(RuntimeWarning, match="fused uGMM kernel is unavailable"):
        out = ugmm_log_density(x, loc, scale, log_w, kernel="fused")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # a layer asking for the fused kernel still trains
    layer = UGMMLayer(128, 32, kernel="fused", dtype=torch.float64)
    layer(x).sum().backward()
    assert torch.isfinite(layer.loc.grad).all()


@requires_fused
def test_build_is_cached_on_disk(unbuilt_kernel, tmp_path):
    path = _fused._build(_fused._compiler())
    assert path.parent.parent == tmp_path and path.exists()
    stamp = path.stat().st_mtime_ns
    assert _fused._build(_fused._compiler()) == path  # found, not rebuilt
    assert path.stat().st_mtime_ns == stamp
    assert _fused.load() is not None


def test_other_devices_and_dtypes_use_the_reference_kernel(monkeypatch):
    monkeypatch.setattr(_fused, "log_density", lambda *a: pytest.fail("fused kernel used"))
    x, loc, scale, logits = _inputs(64, 128, 32, torch.bfloat16)
    ugmm_log_density(x, loc, scale, torch.log_softmax(logits, dim=1), kernel="fused")
    if torch.cuda.is_available():
        x, loc, scale, logits = (t.detach().cuda() for t in _inputs(64, 128, 32, torch.float32))
        ugmm_log_density(x, loc, scale, torch.log_softmax(logits, dim=1), kernel="fused")


def test_rejects_an_unknown_kernel():
    x, loc, scale, logits = _inputs(3, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="kernel must be one of"):
        ugmm_log_density(x, loc, scale, logits, kernel="triton")
    with pytest.raises(ValueError, match="kernel must be one of"):
        UGMMLayer(4, 2, kernel="fast")


def test_layers_pickled_before_the_option_still_run():
    layer = UGMMLayer(4, 3)
    del layer.kernel  # as unpickled from an older version
    assert layer(torch.randn(5, 4)).shape == (5, 3)


@requires_fused
def test_never_materialises_a_batch_out_in_tensor():
    from test_functional import _LargestTensor

    n_batch, n_in, n_out = 3000, 40, 30
    x, loc, scale, logits = _inputs(n_batch, n_in, n_out, torch.float32, seed=12)
    log_w = torch.log_softmax(logits, dim=1)
    probe = _LargestTensor()
    with probe:
        out = ugmm_log_density(x, loc, scale, log_w, kernel="fused")
        torch.autograd.grad(out, (x, loc, scale, log_w), torch.ones_like(out))
    # inputs (padded to whole vectors) and outputs are (batch, in) or
    # (batch, out); parameters (out, 3, in)
    n_in_padded = -(-n_in // 16) * 16
    assert probe.largest <= max(n_batch * n_in_padded, n_batch * n_out, 3 * n_in_padded * n_out)
    assert probe.largest * 10 < n_batch * n_in * n_out


@requires_fused
def test_classifier_passes_the_kernel_option():
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning

    from sklearn_ugmm import UGMMClassifier

    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    probas = {}
    for kernel in ("fused", "reference"):
        clf = UGMMClassifier((32,), kernel=kernel, max_iter=3, early_stopping=False, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # three epochs on purpose
            clf.fit(X, y)
        assert all(layer.kernel == kernel for layer in clf.module_.layers)
        probas[kernel] = clf.predict_proba(X)
    # float32 rounding differs between the kernels; three epochs keep it small
    assert abs(probas["fused"] - probas["reference"]).max() < 1e-3


def test_small_calls_stay_on_one_thread(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    # iris- and digits-output-sized calls: thread start-up would cost more than it saves
    assert _fused._threads(128 * 4 * 64) == 1
    assert _fused._threads(_fused.GRAIN_COMPONENTS * 2 - 1) == 1
    assert _fused._threads(_fused.GRAIN_COMPONENTS * 2) == 2
    assert _fused._threads(128 * 784 * 128) == 2  # never more than torch's thread count


def test_an_unwritable_cache_falls_back_to_a_temporary_directory(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(blocked))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = _fused._cache_dir()
    assert not str(path).startswith(str(blocked))
    assert path.parent == Path(tempfile.gettempdir())
    if hasattr(os, "getuid"):
        # the temporary name is predictable: a directory others may write to is not used
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
        path.chmod(0o777)
        assert _fused._cache_dir() is None


def _copying_compiler(tmp_path, library):
    """A stand-in compiler that writes a copy of ``library`` where ``-o`` says, and counts its calls."""
    script = tmp_path / "fake-c++"
    script.write_text(
        "#!/bin/sh\n"
        f"echo call >> {tmp_path / 'calls'}\n"
        'while [ "$#" -gt 0 ]; do if [ "$1" = "-o" ]; then out="$2"; fi; shift; done\n'
        f'cp {library} "$out"\n'
    )
    script.chmod(0o755)
    return str(script)


@requires_fused
@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX shell script as the compiler")
def test_a_damaged_cached_library_is_rebuilt_not_loaded(unbuilt_kernel, tmp_path):
    # a library cut short (a crash after the build, a broken copy) crashed the process with SIGBUS when
    # loaded, and any other damaged one switched the kernel off for good
    real = _fused._build(_fused._compiler())  # (a real build, in this test's cache)
    compiler = _copying_compiler(tmp_path, real)
    target = _fused._build(compiler)
    intact = target.read_bytes()
    assert (tmp_path / "calls").read_text().count("call") == 1
    with open(target, "r+b") as f:
        f.truncate(4096)
    assert _fused._build(compiler) == target and target.read_bytes() == intact
    assert (tmp_path / "calls").read_text().count("call") == 2
    assert _fused._build(compiler) == target  # intact: found, not rebuilt
    assert (tmp_path / "calls").read_text().count("call") == 2


def test_the_cpu_signature_tells_arm_cores_apart():
    # aarch64's /proc/cpuinfo has no "model name" or "flags" lines: every ARM CPU had the same key, so a
    # -march=native library could be loaded on another core
    n1 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
    v1 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16 atomics\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n"
    assert _fused._cpu_signature(n1) != _fused._cpu_signature(v1)
    assert _fused._cpu_signature(n1) == _fused._cpu_signature(n1 + n1)  # one line per core, once


def test_an_explicit_compiler_that_is_not_found_is_named(unbuilt_kernel):
    unbuilt_kernel.setenv("SKLEARN_UGMM_CXX", "g++ -O1")
    assert _fused.load() is None
    assert "SKLEARN_UGMM_CXX='g++ -O1' is not an executable on PATH" in _fused.failure_reason()


@requires_fused
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction-set flags")
@pytest.mark.parametrize("isa", [["-mavx2", "-mfma"], []], ids=["avx2", "x86-64"])
def test_portable_builds_match_the_formula(unbuilt_kernel, isa):
    # the generic exp2 (no AVX-512), as compiled for older or other CPUs
    unbuilt_kernel.setattr(_fused, "_FLAG_SETS", (["-O3", "-std=gnu++17", *isa, "-fopenmp", "-Wno-psabi"],))
    assert _fused.load() is not None, _fused.failure_reason()
    for dtype in (torch.float32, torch.float64):
        _assert_matches_formula(_inputs(37, 21, 7, dtype, seed=13))
        x, loc, scale, logits = _inputs(12, 21, 3, dtype, seed=5)
        with torch.no_grad():
            x[::2] += 60.0  # the far path too
            scale.fill_(1.0)
        mask = torch.zeros(3, 21, dtype=torch.bool)
        mask[:, 1::2] = True  # -inf weights
        _assert_matches_formula([x, loc, scale, logits], mask=mask, rtol=1e-10 if dtype == torch.float64 else 1e-3)
        # the inference routes: by neurons (a narrow layer), the sparse complement route
        _assert_inference_matches_formula(_inputs(40, 10, 64, dtype, seed=25))
        x, loc, scale, logits = _sparse_inputs(40, 37, 20, dtype, seed=26)
        with torch.no_grad():
            x[:, 3::5] = 0.0
        _assert_inference_matches_formula([x, loc, scale, logits])
        # and product output neurons
        product = UGMMProductLayer(21, 5, kernel="fused", dtype=dtype).eval()
        x = _inputs(30, 21, 5, dtype, seed=27)[0].detach()
        with torch.no_grad(), _fused.inference_routes():
            out = product(x)
        with torch.no_grad():
            ref = product_log_density(x.double(), product.component_loc.double(), product.scale.double(),
                                      torch.log_softmax(product.logits.double(), 1))
        assert float(((out.double() - ref).abs() / ref.abs().clamp(min=1.0)).max()) <= (
            1e-10 if dtype == torch.float64 else 1e-5
        )


@requires_fused
@pytest.mark.parametrize("tie_means", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_float32_layers_transform_their_parameters_in_the_kernel(monkeypatch, tie_means, dropout):
    # float32 layers hand raw_scale and the logits to the kernel (softplus and
    # log_softmax inside it); against the float64 reference formula
    calls = _count_calls(monkeypatch, "layer_log_density", _fused)
    g = torch.Generator().manual_seed(12)
    layer = UGMMLayer(45, 9, dropout=dropout, tie_means=tie_means, kernel="fused", generator=g)
    with torch.no_grad():
        layer.logits.normal_(generator=g)
        layer.raw_scale.normal_(generator=g)
        layer.raw_scale[0, :3] = torch.tensor([25.0, -30.0, 19.9])  # softplus's linear and exponential ends
        layer.logits[1, 0] = 30.0
    twin = UGMMLayer(45, 9, dropout=dropout, tie_means=tie_means, kernel="reference", dtype=torch.float64)
    twin.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    x = torch.randn(70, 45, generator=g)
    weight = torch.randn(70, 9, generator=g, dtype=torch.float64)
    results = []
    for module, inputs in ((layer, x), (twin, x.double())):
        module.generator = torch.Generator().manual_seed(3)  # the same dropout mask
        inputs = inputs.clone().requires_grad_()
        out = module(inputs)
        grads = torch.autograd.grad(out, (inputs, *module.parameters()), weight.to(out.dtype))
        results.append((out, grads))
    assert calls == [1]
    (out, grads), (ref_out, ref_grads) = results
    assert float(((out.detach().double() - ref_out.detach()).abs() / ref_out.detach().abs().clamp(min=1.0)).max()) <= 1e-5
    for ours, ref in zip(grads, ref_grads):
        assert bool(torch.isfinite(ours).all())
        _assert_relative(ours, ref, 1e-5)
    with torch.no_grad():  # inference: no autograd node
        assert not layer(x).requires_grad


def _sparse_inputs(n_batch, n_in, n_out, dtype, seed=0, zero_fraction=0.8):
    x, loc, scale, logits = _inputs(n_batch, n_in, n_out, dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        x.masked_fill_(torch.rand(x.shape, generator=g) < zero_fraction, 0.0)
        x[0] = 0.0  # a row with no nonzero input
        loc.masked_fill_(torch.rand(loc.shape, generator=g) < 0.5, 0.0)  # components at 0 too
    return [x, loc, scale, logits]


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape", [(37, 11, 7), (3, 16, 17), (300, 33, 5), (70, 200, 130)], ids=["odd", "few-rows", "tiles", "wide"]
)
def test_inputs_mostly_zero_take_the_sparse_route(monkeypatch, dtype, shape):
    calls = _count_calls(monkeypatch, f"ugmm_fused_sparse_forward_{_fused._suffix(dtype)}")
    inputs = _sparse_inputs(*shape, dtype)
    _assert_matches_formula(inputs)
    assert calls
    # and the dense route agrees with it
    with torch.no_grad():
        x, loc, scale, logits = inputs
        sparse = _fused_fn(x, loc, scale, torch.log_softmax(logits, 1))
        monkeypatch.setattr(_fused, "SPARSE_MIN_ZERO_FRACTION", 2.0)
        dense = _fused_fn(x, loc, scale, torch.log_softmax(logits, 1))
    torch.testing.assert_close(sparse, dense, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_route_far_from_every_component_and_two_threads(dtype):
    x, loc, scale, logits = _sparse_inputs(300, 40, 30, dtype, seed=13)
    with torch.no_grad():
        # components around 30: the zero inputs, and every input of two rows
        # in three, are far from all of them (the exact-peak path)
        loc += 30.0
        x[1::3] = torch.where(x[1::3] != 0, x[1::3] + 30.0, x[1::3])
        scale.fill_(1.0)
    with two_threads(300 * 40 * 30):
        out, _ = _value_and_grads(_fused_fn, x, loc, scale, logits)
        assert float(out.min()) < -300  # sums of 2**-400 and less of the bound
        _assert_matches_formula([x, loc, scale, logits], rtol=1e-10 if dtype == torch.float64 else 1e-3)


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("far", [False, True], ids=["near", "far"])
@pytest.mark.parametrize("shape", [(37, 11, 7), (300, 33, 5), (70, 200, 130)], ids=["odd", "tiles", "wide"])
def test_sparse_route_backward_without_input_gradient(monkeypatch, dtype, far, shape):
    # data inputs (no gradient wanted): the sparse backward, unless some
    # mixture is far from its bound
    calls = _count_calls(monkeypatch, f"ugmm_fused_sparse_backward_{_fused._suffix(dtype)}")
    x, loc, scale, logits = _sparse_inputs(*shape, dtype, seed=14)
    if far:
        with torch.no_grad():
            loc += 30.0
            scale.fill_(1.0)
    x = x.detach()

    def value_and_grads(fn, x, loc, scale, logits):
        out = fn(x, loc, scale, torch.log_softmax(logits, dim=1))
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        return out.detach(), torch.autograd.grad(out, (loc, scale, logits), weight.to(out.dtype))

    out, grads = value_and_grads(_fused_fn, x, loc, scale, logits)
    ref_out, ref_grads = value_and_grads(ugmm_log_density_reference, x.double(), *_as_float64([loc, scale, logits]))
    assert bool(calls) != far
    rtol = 1e-10 if dtype == torch.float64 else (1e-3 if far else 1e-5)
    assert float(((out.double() - ref_out).abs() / ref_out.abs().clamp(min=1.0)).max()) <= rtol
    for ours, ref in zip(grads, ref_grads):
        _assert_relative(ours, ref, rtol)


def _no_grad_output(x, loc, scale, logits):
    with torch.no_grad(), _fused.inference_routes():
        return _fused_fn(x, loc, scale, torch.log_softmax(logits, 1))


def _assert_inference_matches_formula(inputs, rtol=None):
    dtype = inputs[0].dtype
    rtol = rtol if rtol is not None else (1e-10 if dtype == torch.float64 else 1e-5)
    out = _no_grad_output(*inputs)
    x, loc, scale, logits = _as_float64(inputs)
    with torch.no_grad():
        ref = ugmm_log_density_reference(x, loc, scale, torch.log_softmax(logits, 1))
    assert float(((out.double() - ref).abs() / ref.abs().clamp(min=1.0)).max()) <= rtol


def _count_calls(monkeypatch, name, owner=None):
    """A list that grows by one at each call of ``owner.name`` (``owner``: the kernel library when None)."""
    calls = []
    owner = _fused.load() if owner is None else owner
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a: calls.append(1) or real(*a))
    return calls


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape",
    [(37, 11, 7), (1, 1, 1), (5, 16, 3), (300, 33, 5), (70, 10, 64), (65, 36, 130)],
    ids=["odd", "single", "one-vector", "tiles", "magic", "wide"],
)
def test_transposed_route_matches_the_formula(monkeypatch, dtype, shape):
    # forced for every shape; no autograd node, so the route is taken
    calls = _count_calls(monkeypatch, f"ugmm_fused_transposed_forward_{_fused._suffix(dtype)}")
    monkeypatch.setattr(_fused, "TRANSPOSED_ROUTE", True)
    inputs = _inputs(*shape, dtype, seed=21)
    _assert_inference_matches_formula(inputs)
    assert calls
    # and the route vectorised over inputs agrees with it
    monkeypatch.setattr(_fused, "TRANSPOSED_ROUTE", False)
    dense = _no_grad_output(*inputs)
    monkeypatch.setattr(_fused, "TRANSPOSED_ROUTE", True)
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # relative, or absolute below 1 (as the formula tests)
    torch.testing.assert_close(_no_grad_output(*inputs), dense, rtol=tol, atol=tol)


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transposed_route_far_from_every_component_and_two_threads(monkeypatch, dtype):
    calls = _count_calls(monkeypatch, f"ugmm_fused_transposed_forward_{_fused._suffix(dtype)}")
    monkeypatch.setattr(_fused, "TRANSPOSED_ROUTE", True)
    x, loc, scale, logits = _inputs(300, 40, 30, dtype, seed=22)
    with torch.no_grad():
        x[::2] += 60.0  # the exact-peak path for every other row
        scale.fill_(1.0)
    with two_threads(300 * 40 * 30):
        assert float(_no_grad_output(x, loc, scale, logits).min()) < -1500
        _assert_inference_matches_formula([x, loc, scale, logits], rtol=1e-10 if dtype == torch.float64 else 1e-3)
    assert calls


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transposed_route_is_for_narrow_layers_and_inference_only(monkeypatch, dtype):
    width = _fused.load().widths[dtype]
    assert _fused._transposed_pays(10, 64, width) and _fused._transposed_pays(36, 64, width)
    assert not _fused._transposed_pays(128, 64, width) and not _fused._transposed_pays(64, 10, width)
    calls = _count_calls(monkeypatch, f"ugmm_fused_transposed_forward_{_fused._suffix(dtype)}")
    layer = UGMMLayer(10, 64, kernel="fused", dtype=dtype)
    x = torch.randn(50, 10, dtype=dtype)
    trained = layer(x)  # an autograd node: the route of its backward pass
    with torch.no_grad():
        plain = layer(x)  # no gradient, but outside inference_routes (a fit's initialisation)
    assert not calls
    assert torch.equal(plain, trained.detach())
    with torch.no_grad(), _fused.inference_routes():
        inferred = layer(x)
    assert calls
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # relative, or absolute below 1 (as the formula tests)
    torch.testing.assert_close(inferred, trained.detach(), rtol=tol, atol=tol)
    # missing inputs keep the masked kernel
    calls.clear()
    with torch.no_grad(), _fused.inference_routes():
        x[0, 0] = float("nan")
        UGMMNet(10, (), 64, kernel="fused", dtype=dtype)(x)
    assert not calls


@requires_fused
@pytest.mark.parametrize("route", ["inputs", "neurons", "sparse"])
def test_float64_inference_keeps_full_precision(monkeypatch, route):
    # inference keeps no shifts for a backward pass and takes the log2 of the
    # mixture sums eight at a time (AVX-512): a few ulp, far inside 1e-10
    monkeypatch.setattr(_fused, "TRANSPOSED_ROUTE", route == "neurons")
    make = _sparse_inputs if route == "sparse" else _inputs
    inputs = make(200, 24, 40, torch.float64, seed=23)
    calls = _count_calls(monkeypatch, f"ugmm_fused_complement_forward_{_fused._suffix(torch.float64)}")
    _assert_inference_matches_formula(inputs, rtol=1e-13)
    assert bool(calls) == (route == "sparse")


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(37, 11, 7), (300, 33, 5), (70, 200, 130)], ids=["odd", "tiles", "wide"])
def test_sparse_inference_takes_the_complement_route(monkeypatch, dtype, shape):
    # inference: the zero inputs' part is each neuron's total at x = 0 less
    # the nonzero inputs' share, whatever the pattern of zeros
    calls = _count_calls(monkeypatch, f"ugmm_fused_complement_forward_{_fused._suffix(dtype)}")
    x, loc, scale, logits = _sparse_inputs(*shape, dtype, seed=24)
    with torch.no_grad():
        x[:, 1::4] = 0.0  # zero in every row
        x[1:, 2] = 1.5  # zero in one row only
        x[1:, -1] = -0.5
        x[:, 5] = 0.25  # zero in none (row 0 too)
        x[3, 0] = 1e6  # far from every component of its input
    _assert_inference_matches_formula([x, loc, scale, logits])
    assert calls
    # every input 0
    _assert_inference_matches_formula([torch.zeros_like(x), loc, scale, logits])


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_complement_route_with_two_threads(monkeypatch, dtype):
    calls = _count_calls(monkeypatch, f"ugmm_fused_complement_forward_{_fused._suffix(dtype)}")
    inputs = _sparse_inputs(300, 200, 130, dtype, seed=31)
    with two_threads(300 * 200 * 130):
        _assert_inference_matches_formula(inputs)
    assert calls


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_complement_route_sums_the_zero_inputs_where_the_difference_cancels(monkeypatch, dtype):
    # components at 0 that are narrow and heavy on the inputs a row has
    # nonzero: total and the nonzero share agree to far more digits than the
    # dtype holds, so that row's zero part is summed directly
    calls = _count_calls(monkeypatch, f"ugmm_fused_complement_forward_{_fused._suffix(dtype)}")
    n_batch, n_in, n_out = 40, 64, 20
    x, loc, scale, logits = _sparse_inputs(n_batch, n_in, n_out, dtype, seed=29, zero_fraction=0.9)
    with torch.no_grad():
        x[1::2] = 0.0
        x[1::2, :4] = 3.0  # nonzero where the heavy components are
        loc[:, :4] = 0.0
        scale[:, :4] = 0.05
        # the share below: 1e5 (float32) or 1e13 (float64) times the mixture,
        # enough to lose every digit, not so much that the mixture underflows
        logits[:, :4] = 12.0 if dtype == torch.float32 else 30.0
    _no_grad_output(x, loc, scale, logits)  # the complement route runs (counted in calls)
    assert calls
    x64, loc64, scale64, logits64 = _as_float64([x, loc, scale, logits])
    log_w = torch.log_softmax(logits64, 1).detach()
    with torch.no_grad():
        # the nonzero inputs' share at x = 0 against the whole mixture, in the kernel's units
        e0 = (log_w - torch.log(scale64) - 0.5 * (loc64 / scale64) ** 2).exp()
        share = ((x64[1::2] != 0).double() @ e0.t()) / ugmm_log_density_reference(
            x64[1::2], loc64, scale64, log_w
        ).exp()
    low, high = (1e4, 1e7) if dtype == torch.float32 else (1e12, 1e15)
    assert low < float(share.min()) and float(share.max()) < high
    _assert_inference_matches_formula([x, loc, scale, logits])


def _uncached_inference(layer, x):
    """The layer's fused inference output computed from scratch (as before the cache)."""
    with torch.no_grad():
        if x.dtype == torch.float32:
            return _fused.layer_log_density(x, layer.component_loc, layer.raw_scale, layer.min_scale, layer.logits,
                                            _functional._z_limit(x.dtype))
        return _fused.log_density(x, layer.component_loc, layer.scale, layer.log_weights(),
                                  _functional._z_limit(x.dtype))


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tie_means", [False, True])
@pytest.mark.parametrize("shape", [(40, 10, 64), (37, 33, 7), (60, 70, 20)], ids=["neurons", "inputs", "sparse"])
def test_inference_keeps_the_prepared_parameters(monkeypatch, dtype, tie_means, shape):
    n_batch, n_in, n_out = shape
    layer = UGMMLayer(n_in, n_out, kernel="fused", tie_means=tie_means, dtype=dtype).eval()
    g = torch.Generator().manual_seed(27)
    x = torch.randn(n_batch, n_in, generator=g, dtype=dtype)
    if shape[1] == 70:
        x.masked_fill_(torch.rand(x.shape, generator=g) < 0.8, 0.0)
    with torch.no_grad():
        layer.loc.copy_(torch.randn(layer.loc.shape, generator=g, dtype=dtype))
        layer.set_scale(torch.rand(n_out, n_in, generator=g, dtype=dtype) + 0.3)
        layer.logits.normal_(generator=g)
    prepare = _count_calls(monkeypatch, f"ugmm_fused_prepare_params_{_fused._suffix(dtype)}")
    setup = _count_calls(monkeypatch, f"ugmm_fused_sparse_setup_{_fused._suffix(dtype)}")
    with torch.no_grad():
        layer(x)
    assert len(prepare) == 0  # outside inference_routes: no cache
    setup.clear()
    monkeypatch.setattr(_fused, "inference_routes_active", lambda: True)  # as in the estimators' prediction
    with torch.no_grad():
        first = layer(x)
        again = layer(x[: n_batch // 2])
    assert len(prepare) == 1 and len(setup) <= 1  # kept for the second call
    assert torch.equal(first, _uncached_inference(layer, x))  # bit for bit
    assert torch.equal(again, _uncached_inference(layer, x[: n_batch // 2]))
    # an in-place update (an optimiser step) and a replaced tensor both count
    with torch.no_grad():
        layer.loc.add_(0.25)
        moved = layer(x)
    assert len(prepare) == 2 and torch.equal(moved, _uncached_inference(layer, x))
    layer.raw_scale.data = layer.raw_scale.data * 0.5
    with torch.no_grad():
        assert torch.equal(layer(x), _uncached_inference(layer, x))
    assert len(prepare) == 3
    # a gradient wanted, or dropout in training mode: no cache
    assert layer(x).requires_grad
    layer.dropout = 0.5
    layer.train()
    with torch.no_grad():
        layer(x)
    assert len(prepare) == 3


@requires_fused
def test_no_grad_calls_see_the_parameters_after_a_fused_optimiser_step():
    """Adam(fused=True) updates the parameters without bumping their version counters."""
    layer = UGMMLayer(30, 20, kernel="fused").eval()
    x = torch.randn(50, 30)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)
    with torch.no_grad():
        before = layer(x)
    versions = [p._version for p in layer.parameters()]
    layer(x).sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = layer(x)
    assert torch.equal(after, _uncached_inference(layer, x))
    assert not torch.equal(after, before)
    if [p._version for p in layer.parameters()] == versions:  # the reason the cache is opt-in
        with _fused.inference_routes(), torch.no_grad():
            assert torch.equal(layer(x), _uncached_inference(layer, x))  # a fresh cache entry


@requires_fused
def test_prepared_parameters_stay_out_of_copies_and_pickles():
    import copy
    import pickle

    layer = UGMMLayer(30, 20, kernel="fused", dtype=torch.float64).eval()
    x = torch.randn(50, 30, dtype=torch.float64)
    with _fused.inference_routes(), torch.no_grad():
        out = layer(x)
    assert layer in _fused._PREPARED
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert twin not in _fused._PREPARED
        with _fused.inference_routes(), torch.no_grad():
            assert torch.equal(twin(x), out)
    # the entry goes with its layer
    del layer
    import gc

    gc.collect()
    assert len([k for k in _fused._PREPARED.keys() if k.in_features == 30 and k.out_features == 20]) <= 2


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_in", [10, 16, 33])
def test_inference_pads_strided_rows_in_the_kernel_library(dtype, n_in):
    layer = UGMMLayer(n_in, 20, kernel="fused", dtype=dtype).eval()
    wide = torch.randn(50, n_in + 7, dtype=dtype)
    views = {
        "contiguous": wide[:, :n_in].contiguous(),
        "row stride": wide[:, 3 : 3 + n_in],  # padded rows copied by the kernel library
        "column stride": wide.t().contiguous().t()[:, :n_in],  # torch's pad
        "expanded": wide[:1, :n_in].expand(50, n_in),
    }
    with torch.no_grad():
        for name, x in views.items():
            assert torch.equal(layer(x), _uncached_inference(layer, x.contiguous())), name


@requires_fused
def test_only_prediction_takes_the_inference_routes(monkeypatch):
    # a fit's no-grad work (initialisation, validation scores) keeps the
    # routes of its backward pass, so that fits do not change; predict_proba
    # (float64, a narrow first layer) takes the transposed route
    from sklearn.exceptions import ConvergenceWarning

    from sklearn_ugmm import UGMMClassifier

    calls = {dtype: _count_calls(monkeypatch, f"ugmm_fused_transposed_forward_{_fused._suffix(dtype)}")
             for dtype in (torch.float32, torch.float64)}
    g = torch.Generator().manual_seed(28)
    X = torch.randn(600, 10, generator=g, dtype=torch.float64).numpy()
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    clf = UGMMClassifier((64,), kernel="fused", max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    assert not calls[torch.float32] and not calls[torch.float64]
    proba = clf.predict_proba(X)
    assert calls[torch.float64]
    with torch.no_grad():  # the same network outside inference_routes
        module = clf._evaluation()
        scores = module(torch.as_tensor(clf.scaler_.transform(X)))
        log_proba = torch.log_softmax(clf.temperature_ * scores, dim=1)
    assert abs(proba - log_proba.exp().numpy()).max() < 1e-12
