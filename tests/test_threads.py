"""``n_threads``: the cap on torch's threads inside fit and predict, and only there."""

import threading

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from sklearn.datasets import load_iris
from threadpoolctl import threadpool_info

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator, load_model, save_model
from sklearn_ugmm import _threads
from sklearn_ugmm._objectives import DensityObjective, DiscriminativeObjective
from sklearn_ugmm._threads import SMALL_WORK, resolve_n_threads
from sklearn_ugmm.nn import AutoregressiveUGMM, UGMMNet


@pytest.fixture(autouse=True)
def two_torch_threads():
    """Torch with two threads, so that a cap to one is visible (the suite may run with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class ThreadRecorder(Callback):
    """Records torch's thread count in the training thread and in another thread, per batch."""

    def initialize(self):
        self.inside, self.elsewhere = [], []
        return self

    def on_batch_begin(self, net, **kwargs):
        self.inside.append(torch.get_num_threads())
        other = threading.Thread(target=lambda: self.elsewhere.append(torch.get_num_threads()))
        other.start()
        other.join()


def _fit(make, n_threads, **params):
    X, y = load_iris(return_X_y=True)
    recorder = ThreadRecorder()
    if make is UGMMDensityEstimator:
        params.setdefault("n_free_components", 1)  # one GaussianMixture to start from: quick with any thread count
    est = make(hidden_layer_sizes=(4,), max_iter=3, n_iter_no_change=2, tol=10.0, random_state=0, n_threads=n_threads,
               callbacks=[recorder], **params)
    est.fit(X, y) if make is UGMMClassifier else est.fit(X)
    return est, recorder


@pytest.mark.parametrize("make", [UGMMClassifier, UGMMDensityEstimator])
@pytest.mark.parametrize("n_threads, expected", [(None, 1), (1, 1), (-1, 2), (5, 2)])
def test_fit_caps_threads_in_its_own_thread_only(make, n_threads, expected):
    _, recorder = _fit(make, n_threads)
    assert set(recorder.inside) == {expected}
    assert set(recorder.elsewhere) == {2}  # other threads keep torch's setting
    assert torch.get_num_threads() == 2  # and so does this one, afterwards


def test_large_batches_keep_torchs_setting(monkeypatch):
    monkeypatch.setattr(_threads, "SMALL_WORK", 1)
    _, recorder = _fit(UGMMClassifier, None)
    assert set(recorder.inside) == {2}


def _recording(monkeypatch, cls, method):
    """Make ``cls.method`` record torch's thread count at each call."""
    seen = []
    original = getattr(cls, method)

    def recorded(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, recorded)
    return seen


def test_prediction_and_partial_fit_cap_threads(monkeypatch):
    X, y = load_iris(return_X_y=True)
    clf, _ = _fit(UGMMClassifier, None)
    seen = _recording(monkeypatch, UGMMNet, "forward")
    clf.predict_proba(X)
    clf.partial_fit(X, y)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_density_scoring_and_sampling_cap_threads(monkeypatch):
    est, _ = _fit(UGMMDensityEstimator, 1)
    X, _ = load_iris(return_X_y=True)
    scoring = _recording(monkeypatch, AutoregressiveUGMM, "log_prob")
    sampling = _recording(monkeypatch, AutoregressiveUGMM, "sample")
    est.score_samples(X)
    assert est.sample(5).shape == (5, 4)
    assert scoring == [1] and sampling == [1]
    assert torch.get_num_threads() == 2


def test_resolve_n_threads_policy():
    assert resolve_n_threads(None, SMALL_WORK - 1) == 1
    assert resolve_n_threads(None, SMALL_WORK) is None
    assert resolve_n_threads(-1, 10) is None
    assert resolve_n_threads(3, 10) == 3


@pytest.mark.parametrize("bad", [0, -2, 1.5, "auto"])
def test_invalid_n_threads(bad):
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match="n_threads"):
        UGMMClassifier(n_threads=bad).fit(X, y)


def test_n_threads_is_saved(tmp_path):
    clf, _ = _fit(UGMMClassifier, 1)
    clf.set_params(callbacks=None)
    save_model(clf, tmp_path / "m.ugmm")
    loaded = load_model(tmp_path / "m.ugmm")
    assert loaded.n_threads == 1
    np.testing.assert_array_equal(loaded.predict_proba(load_iris().data), clf.predict_proba(load_iris().data))


@pytest.mark.parametrize("make, objective", [(UGMMClassifier, DiscriminativeObjective), (UGMMDensityEstimator, DensityObjective)])
def test_initialisation_caps_every_thread_pool(monkeypatch, make, objective):
    pools = []
    original = objective.initialise

    def recorded(self, *args, **kwargs):
        pools.append({(info["internal_api"], info["num_threads"]) for info in threadpool_info()})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(objective, "initialise", recorded)
    _fit(make, None)
    assert len(pools) == 1 and {n for _, n in pools[0]} == {1}  # torch's OpenMP, BLAS, scikit-learn's OpenMP
    assert torch.get_num_threads() == 2
    assert {info["num_threads"] for info in threadpool_info() if info["internal_api"] == "openmp"} != {1}


def _mkl_threads():
    """The MKL that torch links statically: its thread count for the calling thread, or None without it."""
    import ctypes
    import os

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        return lib.MKL_Get_Max_Threads()
    except (OSError, AttributeError):
        return None


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fit_caps_the_mkl_threads_that_torch_set_num_threads_made_explicit():
    # torch.set_num_threads(2) (the fixture) sets MKL's thread-local count, which threadpoolctl cannot
    # see: capping OpenMP alone left torch's matrix products and exponentials on two threads
    if _mkl_threads() is None:
        pytest.skip("torch is built without MKL here")
    assert _mkl_threads() == 2
    seen = []

    class MKLRecorder(Callback):
        def on_batch_begin(self, net, **kwargs):
            seen.append(_mkl_threads())

    X, y = load_iris(return_X_y=True)
    UGMMClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0, callbacks=[MKLRecorder()]).fit(X, y)
    assert set(seen) == {1}
    assert _mkl_threads() == 2


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_concurrent_fits_leave_the_process_blas_threads_as_they_were():
    # the initialisation caps the process-wide BLAS pools: a per-thread cap restored every pool it
    # recorded, so a fit that began under another fit's cap left numpy at one BLAS thread
    before = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    if before <= {1}:
        pytest.skip("BLAS runs one thread here: nothing to leave behind")
    X, y = load_iris(return_X_y=True)
    for make in (UGMMClassifier, UGMMDensityEstimator, UGMMClassifier, UGMMDensityEstimator):
        fits = [
            threading.Thread(target=lambda: make(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y))
            for _ in range(3)
        ]
        for fit in fits:
            fit.start()
        for fit in fits:
            fit.join()
        assert {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"} == before
