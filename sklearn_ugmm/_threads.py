"""The ``n_threads`` parameter: how many CPU threads torch may use in fit and predict.

Torch parallelises every operation over all cores by default. For the small
batches of a typical tabular fit the threads cost more than they save, and on
a busy machine they make every step wait for the slowest core (see
doc/benchmarks.rst, "Threads"). The estimators therefore cap torch's OpenMP
threads while they train or predict, through :mod:`threadpoolctl`, and the
thread-local count of the MKL that torch links statically (which
``torch.set_num_threads`` sets explicitly and threadpoolctl cannot see): the
cap applies to the calling thread only and the previous setting is restored
on exit, so ``torch.get_num_threads()`` and torch's process-wide settings are
never changed. A fit's data-dependent initialisation also caps numpy's BLAS and
scikit-learn's OpenMP pools (:func:`initialisation_limit`).
"""

import ctypes
import os
import threading
from contextlib import contextmanager

import torch
from threadpoolctl import ThreadpoolController

__all__ = ["SMALL_WORK", "resolve_n_threads", "thread_limit", "initialisation_limit"]

#: Work per batch (rows times the network's parameters) below which
#: ``n_threads=None`` uses one thread; measured with
#: examples/benchmarks/bench_threads.py.
SMALL_WORK = 20_000_000

_CONTROLLER = None
_MKL_LOCAL = None  # MKL_Set_Num_Threads_Local of torch's library; False where there is none
#: The process-wide BLAS cap of concurrent initialisations: set by the first in, restored by the last out.
_BLAS_LOCK = threading.Lock()
_BLAS_CAP = {"users": 0, "limiter": None}


def resolve_n_threads(n_threads, work):
    """The thread cap for ``work`` (rows per batch times parameters), or None for no cap.

    Examples
    --------
    >>> from sklearn_ugmm._threads import resolve_n_threads
    >>> resolve_n_threads(None, work=200 * 2_000)
    1
    >>> resolve_n_threads(None, work=10**9) is None
    True
    >>> resolve_n_threads(3, work=10**9)
    3
    """
    if n_threads is None:
        return 1 if work < SMALL_WORK else None
    if n_threads == -1:
        return None
    return int(n_threads)


def _controller():
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _pools(user_api):
    """The thread pools of one kind only: a limiter restores every pool of its controller, and the
    process-wide BLAS count must not be restored by a per-thread OpenMP cap that began while another
    fit held it (threads left numpy at one BLAS thread)."""
    return _controller().select(user_api=user_api)


def _mkl_set_local():
    """MKL's C ``MKL_Set_Num_Threads_Local`` in torch's library, or None (no MKL, another platform)."""
    global _MKL_LOCAL
    if _MKL_LOCAL is None:
        _MKL_LOCAL = False
        directory = os.path.join(os.path.dirname(torch.__file__), "lib")
        for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
            try:
                setter = ctypes.CDLL(os.path.join(directory, name)).MKL_Set_Num_Threads_Local
            except (OSError, AttributeError):
                continue
            setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
            _MKL_LOCAL = setter
            break
    return _MKL_LOCAL or None


@contextmanager
def _this_thread_limit(limit):
    """Cap torch's OpenMP threads and its MKL's thread-local count in the calling thread."""
    torch.get_num_threads()  # torch sets a thread's count up on first use: before the cap, not over it
    setter = _mkl_set_local()
    previous = None if setter is None else setter(limit)  # 0: the thread followed the global count
    try:
        with _pools("openmp").limit(limits=limit):
            yield
    finally:
        if setter is not None:
            setter(previous)


@contextmanager
def thread_limit(n_threads, module, rows):
    """Cap torch's CPU threads in this thread while ``module`` runs batches of ``rows`` rows."""
    n_parameters = sum(p.numel() for p in module.parameters())
    limit = resolve_n_threads(n_threads, rows * n_parameters)
    if limit is None or limit >= torch.get_num_threads():
        yield
        return
    with _this_thread_limit(limit):
        yield


@contextmanager
def _blas_limit(limit):
    """Cap the process-wide BLAS pools; concurrent holders share the first one's cap, the last restores."""
    with _BLAS_LOCK:
        if _BLAS_CAP["users"] == 0:
            _BLAS_CAP["limiter"] = _pools("blas").limit(limits=limit)
        _BLAS_CAP["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_CAP["users"] -= 1
            if _BLAS_CAP["users"] == 0:
                _BLAS_CAP["limiter"].restore_original_limits()
                _BLAS_CAP["limiter"] = None


@contextmanager
def initialisation_limit(n_threads):
    """Cap every thread pool (torch's, BLAS, scikit-learn's OpenMP) for a fit's initialisation.

    The data-dependent initialisation mixes torch, numpy and scikit-learn
    work on small arrays (the density estimator's GaussianMixture of at most
    4096 rows was 30 times slower with both threads on a busy 2-core
    machine). BLAS thread counts are process-wide, so this cap holds for the
    whole process while the block runs; it is restored afterwards, when the
    last of several concurrent initialisations (fits in threads) ends.
    """
    limit = 1 if n_threads is None else resolve_n_threads(n_threads, 0)
    if limit is None:
        yield
        return
    with _blas_limit(limit), _this_thread_limit(limit):
        yield
