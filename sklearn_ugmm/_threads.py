"""The ``n_threads`` parameter: how many CPU threads torch may use in fit and predict.

Torch parallelises every operation over all cores by default. For the small
batches of a typical tabular fit the threads cost more than they save, and on
a busy machine they make every step wait for the slowest core (see
doc/benchmarks.rst, "Threads"). The estimators therefore cap torch's OpenMP
threads while they train or predict, through :mod:`threadpoolctl`: the cap
applies to the calling thread only and the previous setting is restored on
exit, so ``torch.get_num_threads()`` and torch's process-wide settings are
never changed. A fit's data-dependent initialisation also caps numpy's BLAS and
scikit-learn's OpenMP pools (:func:`initialisation_limit`).
"""

from contextlib import contextmanager, nullcontext

import torch
from threadpoolctl import ThreadpoolController

__all__ = ["SMALL_WORK", "resolve_n_threads", "thread_limit", "initialisation_limit"]

#: Work per batch (rows times the network's parameters) below which
#: ``n_threads=None`` uses one thread; measured with
#: examples/benchmarks/bench_threads.py.
SMALL_WORK = 20_000_000

_CONTROLLER = None


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


@contextmanager
def thread_limit(n_threads, module, rows):
    """Cap torch's CPU threads in this thread while ``module`` runs batches of ``rows`` rows."""
    n_parameters = sum(p.numel() for p in module.parameters())
    limit = resolve_n_threads(n_threads, rows * n_parameters)
    if limit is None or limit >= torch.get_num_threads():
        context = nullcontext()
    else:
        context = _controller().limit(limits=limit, user_api="openmp")
    with context:
        yield


@contextmanager
def initialisation_limit(n_threads):
    """Cap every thread pool (torch's, BLAS, scikit-learn's OpenMP) for a fit's initialisation.

    The data-dependent initialisation mixes torch, numpy and scikit-learn
    work on small arrays (the density estimator's GaussianMixture of at most
    4096 rows was 30 times slower with both threads on a busy 2-core
    machine). BLAS thread counts are process-wide, so this cap holds for the
    whole process while the block runs; it is restored afterwards.
    """
    limit = 1 if n_threads is None else resolve_n_threads(n_threads, 0)
    if limit is None:
        context = nullcontext()
    else:
        context = _controller().limit(limits=limit)
    with context:
        yield
