"""What the uGMM estimators share: parameters, devices, scaling, training, batched inference."""

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import _check_sample_weight

from ._engine import build_net
from ._power import fit_yeo_johnson, transform_yeo_johnson, unit_columns
from ._threads import thread_limit

__all__ = ["BaseUGMM", "resolve_device"]

#: Rows per inference batch: predictions never hold more than this many rows
#: of intermediate activations at once.
INFERENCE_BATCH_ROWS = 4096


def resolve_device(device):
    """Turn a ``device`` parameter into an available ``torch.device``.

    Parameters
    ----------
    device : str
        "cpu", "cuda", "cuda:N", "mps" or "auto" (CUDA if available, then
        MPS, else CPU).

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If the device is not a valid device string or is not available.

    Examples
    --------
    >>> from sklearn_ugmm._base import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid device; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'."
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available in this "
                "torch installation; use device='cpu' or device='auto'."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible."
            )
    elif resolved.type == "mps":
        if not _mps_available():
            raise ValueError(f"device={device!r} was requested but MPS is not available.")
    elif resolved.type != "cpu":
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'.")
    return resolved


def _mps_available():
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


_POWER_KEYS = ("shift", "scale", "lambdas", "low", "high")
#: Fitted attributes of the power transform (only when it is used).
_POWER_ATTRIBUTES = tuple(f"power_{key}_" for key in _POWER_KEYS)


class BaseUGMM(BaseEstimator):
    """Shared machinery of the uGMM estimators (not an estimator itself)."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "standardize": ["boolean"],
        "device": [str],
        "n_threads": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1}), None],
        "callbacks": [list, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    # ------------------------------------------------------------------ fit helpers
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if any(not isinstance(s, Integral) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes}.")
        return tuple(int(s) for s in sizes)

    def _check_weights(self, sample_weight, X):
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if not np.any(sample_weight > 0):
            raise ValueError("sample_weight must have at least one positive entry; all weights are zero.")
        return sample_weight

    def _torch_generator(self, random_state):
        """A local torch generator seeded from ``random_state`` (never the global RNG)."""
        seed = int(random_state.randint(np.iinfo(np.int32).max))
        return torch.Generator().manual_seed(seed)

    def _fit_scaling(self, X, sample_weight):
        """Weighted per-feature mean and standard deviation (identity when off).

        With the "yeo-johnson" method the features first go through a
        weighted Yeo-Johnson power transform (attributes ``power_*_``).
        """
        n_features = X.shape[1]
        for name in _POWER_ATTRIBUTES:
            self.__dict__.pop(name, None)
        method = self._scaling_method()
        if method == "yeo-johnson":
            power = fit_yeo_johnson(X, sample_weight)
            for key, value in power.items():
                setattr(self, f"power_{key}_", value)
            X = transform_yeo_johnson(X, power)
        if not method:
            self.scaling_mean_ = np.zeros(n_features)
            self.scaling_scale_ = np.ones(n_features)
            return
        w = sample_weight / sample_weight.sum()
        unit, magnitude = unit_columns(X)
        mean = w @ unit
        scale = np.sqrt(w @ (unit - mean) ** 2) * magnitude
        mean = mean * magnitude
        # constant features are only centred, as StandardScaler does
        scale[~(scale > 1e-12 * np.maximum(1.0, np.abs(mean)))] = 1.0
        self.scaling_mean_ = mean
        self.scaling_scale_ = scale

    def _scaling_method(self):
        """``standardize`` with any "auto" resolved: True, False or "yeo-johnson"."""
        return self.standardize

    def _power_transformed(self, X):
        X = np.asarray(X, dtype=np.float64)
        if not hasattr(self, "power_lambdas_"):
            return X
        return transform_yeo_johnson(X, {key: getattr(self, f"power_{key}_") for key in _POWER_KEYS})

    def _scaled(self, X, dtype=np.float32):
        """X as the network sees it: power-transformed (if fitted so), then standardised."""
        Xs = (self._power_transformed(X) - self.scaling_mean_) / self.scaling_scale_
        if not np.all(np.isfinite(Xs.astype(np.float32))):
            raise ValueError(
                "Input contains values too large for float32 after scaling; "
                "the model computes in float32."
            )
        return Xs.astype(dtype)

    def _batch_size(self, n_samples):
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn(
                f"Got batch_size={self.batch_size} larger than the number of training "
                f"samples {n_samples}; using {n_samples}.",
                UserWarning,
            )
        return min(self.batch_size, n_samples)

    def _learning_rate(self, n_train):
        return self.learning_rate_init

    def _penalty(self, n_train):
        """``penalty(module)`` added to the training loss, or None."""
        return None

    def _lr_patience(self):
        """Epochs without progress before ``learning_rate="adaptive"`` cuts the rate."""
        if self.learning_rate != "adaptive" or not np.isfinite(self.n_iter_no_change):
            return None
        return max(3, int(self.n_iter_no_change) // 4 + 1)

    def _averaging_epochs(self):
        """Horizon of the weight averaging in ``fit`` (None: the last weights are kept)."""
        return None

    def _make_net(
        self, module, n_train, validation=None, validation_score=None, generator=None, patience=None, adaptive=False
    ):
        """A skorch net around ``module`` configured by this estimator's parameters.

        ``adaptive``: the learning-rate schedule and the weight averaging of
        ``fit`` (not for ``partial_fit``, whose calls are single epochs).
        """
        batch_size = self._batch_size(n_train)
        return build_net(
            module,
            self._per_sample_loss,
            learning_rate_init=self._learning_rate(n_train),
            alpha=self.alpha,
            batch_size=batch_size,
            max_iter=self.max_iter,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change if patience is None else patience,
            generator=generator,
            device=self.device_,
            verbose=self.verbose,
            validation_data=validation,
            validation_score=validation_score,
            validation_monitor=self._validation_monitor,
            extra_callbacks=self.callbacks,
            lr_patience=self._lr_patience() if adaptive else None,
            penalty=self._penalty(n_train),
            averaging_epochs=self._averaging_epochs() if adaptive else None,
            steps_per_epoch=math.ceil(n_train / batch_size),
        )

    def _train(self, module, X_train, y_train, validation=None, validation_score=None, generator=None):
        """Train ``module`` through a fresh skorch net; return the fitted net."""
        net = self._make_net(module, len(X_train), validation, validation_score, generator, adaptive=True)
        with thread_limit(self.n_threads, module, net.batch_size):
            net.fit(X_train, y_train)
        return net

    def _partial_fit_epoch(self, X_train, y_train, new_module):
        """One epoch over ``(X_train, y_train)``, building the model on the first call.

        ``new_module(generator)`` returns the initialised network. The skorch
        net (with its optimiser state, history and generators) persists
        between calls, and no stopping rule applies.
        """
        if not hasattr(self, "net_"):
            generator = self._torch_generator(local_random_state(self.random_state))
            module = new_module(generator)
            module.set_generator(generator)
            net = self._make_net(module, len(X_train), generator=generator, patience=np.inf)
            net.initialize()
        else:
            net = self.net_
        with thread_limit(self.n_threads, net.module_, net.batch_size):
            net.partial_fit(X_train, y_train, epochs=1)
        self.net_ = net
        self._record_history(net, append=False, warn=False)

    def _restore_module(self, state):
        """Rebuild the fitted network from a state dict (see ``load_model``)."""
        try:
            self.device_ = resolve_device(self.device)
        except ValueError as exc:
            warnings.warn(f"{exc} Loading the model on the CPU instead.", UserWarning)
            self.device_ = torch.device("cpu")
        module = self._new_module(generator=None)
        module.load_state_dict(state, strict=True)
        self.net_ = self._make_net(module, n_train=1)
        self.net_.initialize()

    def _record_history(self, net, append, warn=True):
        # an interrupted epoch leaves a history row without a training loss
        history = [row for row in net.history if "train_loss" in row]
        losses = [float(row["train_loss"]) for row in history]
        n_epochs = len(losses)
        if append and hasattr(self, "loss_curve_"):
            self.loss_curve_ = self.loss_curve_ + losses
            self.n_iter_ = self.n_iter_ + n_epochs
        else:
            self.loss_curve_ = losses
            self.n_iter_ = n_epochs
        self.best_loss_ = float(np.min(self.loss_curve_)) if self.loss_curve_ else np.inf
        if self.early_stopping:
            scores = [float(row.get("valid_score", np.nan)) for row in history]
            self.validation_scores_ = scores
            finite = [v for v in scores if np.isfinite(v)]
            self.best_validation_score_ = float(max(finite)) if finite else np.nan
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
        callbacks = dict(net.callbacks_)
        stopping = callbacks.get("stopping")
        stopped_early = stopping is not None and stopping.misses_ >= stopping.patience
        interrupted = callbacks["interrupt_guard"].interrupted_
        # without a stopping rule (n_iter_no_change=inf), max_iter epochs is what was asked for
        stopping_rule = np.isfinite(self.n_iter_no_change)
        if warn and stopping_rule and n_epochs >= self.max_iter and not stopped_early and not interrupted:
            warnings.warn(
                f"Stochastic optimizer: maximum iterations ({self.max_iter}) reached "
                "and the optimization hasn't converged yet. Training stops earlier once the "
                f"{'validation' if self.early_stopping else 'training'} loss has not improved by "
                f"tol={self.tol:g} for n_iter_no_change={self.n_iter_no_change} epochs; raise "
                "max_iter to train longer, or raise tol to stop sooner.",
                ConvergenceWarning,
            )

    #: validation history entry that early stopping watches (lower is better)
    _validation_monitor = "valid_loss"

    # ------------------------------------------------------------------ inference
    def __sklearn_is_fitted__(self):
        return hasattr(self, "net_")

    @property
    def module_(self):
        """The trained torch module (``net_.module_``)."""
        return self.net_.module_

    def _model_device(self):
        return next(self.module_.parameters()).device

    def _evaluation_module(self):
        """A float64 copy of the trained network, in eval mode, on its device.

        Inference is done in float64: in float32 a sample's outputs would
        depend, in their last bits, on which other rows share its batch
        (matrix products and reductions round differently by shape), so
        results would not be invariant to subsetting or reordering the rows.
        A fresh copy per call keeps concurrent calls from threads independent.
        """
        device = self._model_device()
        module = self._new_module(None)
        module.load_state_dict(self.module_.state_dict())
        return module.to(device=device, dtype=self._evaluation_dtype()).eval()

    def _evaluation_dtype(self):
        return torch.float32 if self._model_device().type == "mps" else torch.float64  # MPS has no float64

    def _batched(self, fn, X, *, prepare, n_rows=INFERENCE_BATCH_ROWS):
        """``fn(module, rows)`` over row batches of ``X``, with the evaluation copy of the network.

        ``prepare`` turns one batch of validated rows into the (float64,
        scaled) model input, so that no full-size copy of ``X`` is ever made:
        besides ``X`` itself, memory holds one batch and the outputs.
        """
        module = self._evaluation_module()
        device, dtype = self._model_device(), self._evaluation_dtype()
        outputs = []
        with torch.no_grad(), thread_limit(self.n_threads, module, min(n_rows, X.shape[0])):
            for start in range(0, X.shape[0], n_rows):
                block = torch.as_tensor(prepare(X[start : start + n_rows]), device=device, dtype=dtype)
                outputs.append(fn(module, block).cpu().numpy().astype(np.float64))
        return np.concatenate(outputs, axis=0)


def local_random_state(random_state):
    """``check_random_state`` that never draws from numpy's global RandomState."""
    if random_state is None:
        return np.random.RandomState()
    return check_random_state(random_state)
