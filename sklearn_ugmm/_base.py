"""What the uGMM estimators share: parameters, devices, the fit skeleton, batched inference.

Every fit -- ``fit``, ``fit`` with ``warm_start`` and ``partial_fit`` -- runs
:meth:`BaseUGMM._fit`: validate -> resolve the "auto" parameters -> fit the
preprocessing -> split -> initialise -> train -> commit (the validation rows
are drawn before the parameters are resolved, since the "auto" values depend
on the number of training rows). It is a transaction:
everything new is built in local variables and assigned to the estimator
together at the end, so a fit that fails (or is interrupted before its first
completed epoch) leaves the estimator exactly as it was. What differs between
the estimators comes from their objective objects (``_objectives``) and a few
hooks (:meth:`BaseUGMM._objective`, :meth:`BaseUGMM._targets`,
:meth:`BaseUGMM._split`).
"""

import copy
import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import _check_sample_weight, validate_data

from ._engine import _named, _state_copy, build_net, pack_target
from ._preprocessing import CategoricalEncoder, FeatureScaler, categorical_columns_from_dtype, check_no_time_columns
from ._threads import initialisation_limit, thread_limit
from .nn import _fused
from .nn._net import INIT_MAX_SAMPLES, evenly_spaced_rows

__all__ = ["BaseUGMM", "resolve_device"]

#: Rows per inference batch: predictions never hold more than this many rows
#: of intermediate activations at once.
INFERENCE_BATCH_ROWS = 4096
#: Training rows (evenly spaced) on which fit compares its loss at the start and the end.
PROGRESS_CHECK_ROWS = INIT_MAX_SAMPLES


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
    resolved = parse_device(device)
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
    return resolved


def parse_device(device):
    """``torch.device(device)`` for the devices the estimators support, whether or not this machine has them.

    Raises
    ------
    ValueError
        If ``device`` is not a device string, or names a device type other
        than "cpu", "cuda" and "mps".
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid device; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'."
        ) from exc
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'.")
    return parsed


def _mps_available():
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


#: What ``validate_data(reset=True)`` sets on an estimator.
_FEATURE_ATTRIBUTES = ("n_features_in_", "feature_names_in_")


class BaseUGMM(BaseEstimator):
    """Shared machinery of the uGMM estimators (not an estimator itself)."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "adaptive", "cosine"})],
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

    #: parameters whose "auto" value the objective decides (listed in ``resolved_params_``)
    _auto_parameters = ("learning_rate_init", "batch_size", "standardize")
    #: whether ``fit`` needs a target
    _requires_y = False
    #: whether ``fit`` accepts NaN in X (missing values)
    _fit_allows_nan = False

    def _store_params(self, params):
        """``__init__``'s whole job: store each parameter under its own name (``locals()`` of ``__init__``)."""
        for name, value in params.items():
            if name != "self":
                setattr(self, name, value)

    # ------------------------------------------------------------------ what each estimator supplies
    def _objective(self, n_features, classes, fitted=False, continuing=False):
        """The objective object for ``n_features`` inputs (and ``classes``).

        ``fitted``: of the fitted network (its "auto" architecture as
        ``resolved_params_`` recorded it), not of a new fit. ``continuing``:
        of the current parameters, their "auto" architecture the fitted one
        (what a continued fit must find).
        """
        raise NotImplementedError

    def _targets(self, y, classes, *, continuing, incremental):
        """``(y_index, classes)``: targets as indices, and the classes (None for a density)."""
        return None, None

    def _split(self, n_samples, y_index, rng):
        """``(train_idx, valid_idx)`` for early stopping, or None to train on every row."""
        raise NotImplementedError

    def _validation_split(self, sample_weight, y_index, rng):
        """:meth:`_split` of the rows of positive weight; the rows of weight 0 go to training.

        A row of weight 0 counts in no loss: in the validation split it is
        wasted, and a split holding nothing else measures nothing (a loss of
        0 every epoch, so the best epoch is the first). With every weight
        positive this is :meth:`_split` of all the rows.
        """
        weighted = np.flatnonzero(sample_weight > 0)
        split = self._split(len(weighted), None if y_index is None else y_index[weighted], rng)
        if split is None:
            return None
        train, valid = weighted[split[0]], weighted[split[1]]
        return np.concatenate([train, np.flatnonzero(sample_weight <= 0)]), valid

    # ------------------------------------------------------------------ the fit skeleton
    def _fit(self, X, y=None, sample_weight=None, *, incremental=False, classes=None):
        """Fit (``incremental``: one ``partial_fit`` epoch) as a transaction; return self."""
        continuing = self.__sklearn_is_fitted__() and (incremental or self.warm_start)
        # validate
        _named(self.callbacks)  # (checks them before any work)
        X, y, features, encoder = self._validated(X, y, reset=not continuing)
        current_network = self._checked_structure(incremental) if continuing else None
        y_index, classes = self._targets(y, classes, continuing=continuing, incremental=incremental)
        sample_weight = self._check_weights(sample_weight, X, y, classes, incremental=incremental)
        objective = self._objective(X.shape[1] if encoder is None else encoder.n_outputs_, classes, fitted=continuing)
        if continuing and incremental:
            rng, generator, device = None, _copy_generator(self.net_), self.device_
        else:
            rng = local_random_state(self.random_state)
            generator = _torch_generator(rng)
            device = resolve_device(self.device)
        split = self._validation_split(sample_weight, y_index, rng) if self.early_stopping and not incremental else None
        train_idx = np.arange(len(X)) if split is None else split[0]
        # resolve the "auto" parameters
        if continuing and incremental:
            # the first call's values, but batches fit this call's rows (a small first chunk would
            # otherwise cap every later call's batches at its length)
            resolved = dict(self.resolved_params_, batch_size=self._call_batch_size(objective, len(train_idx)))
        else:
            resolved = self._resolve_params(objective, len(train_idx), X[train_idx], validating=split is not None)
            if continuing:
                resolved["standardize"] = self.resolved_params_["standardize"]
        if self.verbose and not incremental:
            print(f"{type(self).__name__}: " + ", ".join(f"{k}={v!r}" for k, v in resolved.items()), flush=True)
        # preprocess
        scaler = self.scaler_ if continuing else FeatureScaler(resolved["standardize"], encoder).fit(X, sample_weight)
        inputs = objective.network_inputs(_network_features(scaler, X), y_index)
        targets = pack_target(y_index, sample_weight)
        X_train, y_train = inputs[train_idx], targets[train_idx]
        validation = None if split is None else (inputs[split[1]], targets[split[1]])
        # initialise
        if continuing:
            module = _continued_copy(self.module_, current_network)
        else:
            module = objective.new_module(generator)
            seen = sample_weight[train_idx] > 0
            y_seen = None if y_index is None else y_index[train_idx][seen]
            with initialisation_limit(self.n_threads):
                objective.initialise(module, torch.as_tensor(_missing_as_zero(X_train[seen])), y_seen, generator, rng)
        module.set_generator(generator)
        self._configure_module(module, objective, resolved)
        # train
        net = self._make_net(objective, module, resolved, generator, device, validation, adaptive=not incremental)
        n_before = self._train(
            net, X_train, y_train, continuing=continuing, incremental=incremental,
            loss=objective.training_loss(resolved), learning_rate_init=resolved["learning_rate_init"],
            validation=validation,
        )
        history = self._history_attributes(net, n_before, append=continuing, warn=not incremental)
        # commit
        fitted = {"scaler_": scaler, "resolved_params_": resolved, "net_": net, "device_": device, **history}
        if classes is not None:
            fitted["classes_"] = classes
        evaluation = _evaluation_copy(net.module_)
        fitted.update(self._calibration(objective, evaluation, resolved, validation, continuing, incremental))
        if not continuing:
            self.__dict__.pop("_checked_network", None)
            for name in _FEATURE_ATTRIBUTES:
                self.__dict__.pop(name, None)
        self.__dict__.update(features)
        self.__dict__.update(fitted)
        self._evaluation_module = evaluation
        return self

    def _structure_difference(self):
        """Why the parameters no longer give the fitted network (set_params after fit), or None.

        The parameters that shape the network (its sizes, output neurons,
        objective, tied means, free components, order) are compared through
        the network they would build now: the same layers, the same tensor
        shapes, the same masks and orders. ``"auto"`` sizes keep the fitted
        ones, even where the formula has changed since the model was saved.
        """
        current = self._objective(
            self._n_network_inputs(), getattr(self, "classes_", None), continuing=True
        ).new_module(torch.Generator())
        return _module_difference(self.module_, current), current

    def _checked_structure(self, incremental):
        """The network the parameters give now (untrained), to continue training the fitted one
        (``warm_start``, ``partial_fit``); an error if the two differ in structure. Its dropout and
        kernel options are the ones the continued fit takes.

        Built once per fit and set of parameters (a stream of ``partial_fit``
        calls of a few rows would otherwise spend a tenth of its time on it):
        continued fits keep the structure, a new fit forgets it.
        """
        key = repr(sorted(self.get_params(deep=False).items()))
        cached = self.__dict__.get("_checked_network")
        if cached is not None and cached[0] == key:
            return cached[1]
        difference, current = self._structure_difference()
        if difference is not None:
            how = "partial_fit" if incremental else "fit with warm_start=True"
            raise ValueError(
                f"{type(self).__name__}.{how} continues the fitted network, but the parameters no longer give "
                f"it: {difference}. A parameter that shapes the network was changed after fitting; set it back, "
                "or fit a new network (warm_start=False)."
            )
        self._checked_network = (key, current)
        return current

    def _call_batch_size(self, objective, n_rows):
        """The batch size of a ``partial_fit`` call on ``n_rows`` rows: the parameter ("auto": for
        ``n_rows``) and at most ``n_rows``, as ``MLPClassifier`` clips it on every call."""
        size = objective.auto_values(n_rows)["batch_size"] if self.batch_size == "auto" else self.batch_size
        return int(min(size, n_rows))

    def _train(self, net, X_train, y_train, *, continuing, incremental, loss, learning_rate_init, validation=None):
        """Run ``fit`` (or one ``partial_fit`` epoch, continuing the committed optimiser and history).

        ``loss``: the objective's ``(forward, per_sample_loss)`` (see
        ``training_loss`` of the objectives). After a ``learning_rate="cosine"``
        fit a continued ``partial_fit`` trains at ``learning_rate_init``, not
        at the rate the committed optimiser ended with (near zero).

        Returns the number of completed epochs the history held before. Raises
        ``KeyboardInterrupt`` when interrupted before completing an epoch.

        A ``fit`` that ends with a training loss higher than it started with
        (by more than ``tol`` and 1%: :func:`divergence`; with early stopping,
        only if its validation loss rose too), or with the same output for every (distinct)
        training row, diverged: the network gets back the weights it had when
        the fit started, with a ConvergenceWarning. It is still a completed
        fit, committed as such.
        """
        with thread_limit(self.n_threads, net.module, net.batch_size):
            n_before = 0
            if not incremental:
                checked = _evenly_spaced((X_train, y_train))
                start_state = _state_copy(net.module)
                start_loss, _ = training_loss(net.module, loss, *checked)
                if validation is not None:
                    held_out = _evenly_spaced(validation)
                    start_valid, _ = training_loss(net.module, loss, *held_out)
            if incremental:
                net.initialize()
                if continuing:
                    net.optimizer_.load_state_dict(copy.deepcopy(self.net_.optimizer_.state_dict()))
                    if self.learning_rate == "cosine":
                        for group in net.optimizer_.param_groups:
                            group["lr"] = learning_rate_init
                    # a new list of the same rows: training appends rows and writes only to its own
                    net.history_ = type(self.net_.history_)(self.net_.history_)
                    n_before = len(_completed_epochs(net))
                net.partial_fit(X_train, y_train, epochs=1)
            else:
                net.fit(X_train, y_train)
            guard = dict(net.callbacks_)["interrupt_guard"]
            if guard.interrupted_ and guard.completed_epochs_ == 0:
                raise KeyboardInterrupt  # nothing to keep: the estimator stays as it was
            if not incremental:
                end_loss, outputs = training_loss(net.module_, loss, *checked)
                problem = divergence(start_loss, end_loss, outputs, checked[0], tol=self.tol)
                if (
                    validation is not None
                    and loss_rose(start_loss, end_loss, self.tol)  # (not a collapse to a constant)
                    and not loss_rose(start_valid, training_loss(net.module_, loss, *held_out)[0], self.tol)
                ):
                    # early stopping chose this epoch by the validation loss, which is no worse than
                    # the start's: a training loss above the start's is the start's overfitting
                    problem = ""
                if problem:
                    net.module_.load_state_dict(start_state)
                    warnings.warn(
                        f"Training diverged: {problem}. The model keeps the weights it had when this fit "
                        f"started. Lower learning_rate_init (it was {learning_rate_init}).",
                        ConvergenceWarning,
                    )
            net.set_params(train_split=None)  # the fitted model keeps no validation rows
            return n_before

    def _validated(self, X, y, reset):
        """``validate_data`` that leaves the estimator untouched.

        Returns ``(X, y, feature attributes to commit, encoder)``: the
        :class:`CategoricalEncoder` of the categorical columns (fitted on this
        ``X`` when ``reset``, the fitted one otherwise), or None without
        categorical columns, in which case ``X`` is float64; with them, ``X``
        keeps its raw values (objects) for the encoder.
        """
        check_no_time_columns(X)
        saved = {name: self.__dict__[name] for name in _FEATURE_ATTRIBUTES if name in self.__dict__}
        if reset:
            mask = self._categorical_mask(X)
        else:
            encoder = _encoder_of(self)
            mask = None if encoder is None else encoder.is_categorical
        kwargs = self._validation_options(categorical=mask is not None, dtype=np.float64)
        try:
            if self._requires_y:
                X, y = validate_data(self, X, y, reset=reset, **kwargs)
            else:
                X = validate_data(self, X, reset=reset, **kwargs)
            features = {name: self.__dict__[name] for name in _FEATURE_ATTRIBUTES if name in self.__dict__}
        finally:
            for name in _FEATURE_ATTRIBUTES:
                self.__dict__.pop(name, None)
            self.__dict__.update(saved)
        if mask is None:
            encoder = None
        elif reset:
            encoder = CategoricalEncoder(mask, features.get("feature_names_in_")).fit(X)
        return X, y, features, encoder

    def _categorical_mask(self, X):
        """The categorical columns of the training ``X`` (a mask, or None); the base supports none."""
        columns = categorical_columns_from_dtype(X)
        if columns:
            names = [str(X.columns[j]) for j in columns]
            raise ValueError(
                f"{type(self).__name__} does not support categorical columns; got {names} (pandas category, "
                "object or string dtype). Encode them first (e.g. with sklearn.preprocessing.OneHotEncoder "
                "in a ColumnTransformer) or drop them."
            )
        return None

    def _validated_input(self, X):
        """``validate_data(reset=False)`` for inference: float, or raw values for the categorical encoder."""
        check_no_time_columns(X)
        options = self._validation_options(categorical=_encoder_of(self) is not None, dtype=(np.float64, np.float32))
        return validate_data(self, X, reset=False, **options)

    def _validation_options(self, *, categorical, dtype):
        """``validate_data`` options: floats (NaN where the estimator allows it), or raw values
        that the categorical encoder converts and checks itself."""
        if categorical:
            return {"dtype": None, "ensure_all_finite": False}
        return {"dtype": dtype, "ensure_all_finite": "allow-nan" if self._fit_allows_nan else True}

    def _n_network_inputs(self):
        """Inputs of the network: the features, with one per category for the categorical ones."""
        encoder = _encoder_of(self)
        return int(self.n_features_in_) if encoder is None else encoder.n_outputs_

    def _hidden_sizes(self, n_inputs=None, n_outputs=None):
        """The hidden layer sizes as a tuple; "auto" (where allowed) for ``n_inputs`` and ``n_outputs``.

        Without the shapes, "auto" stays "auto" (checking the parameters of
        a saved model).
        """
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, str) and sizes == "auto":
            return sizes if n_inputs is None else self._auto_hidden_sizes(n_inputs, n_outputs)
        sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if any(not isinstance(s, Integral) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes}.")
        return tuple(int(s) for s in sizes)

    def _label_weights(self, y, classes, *, incremental):
        """Per-row weights that come from the labels (``class_weight``), multiplied with ``sample_weight``."""
        return 1.0

    def _check_weights(self, sample_weight, X, y=None, classes=None, *, incremental=False):
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        sample_weight = sample_weight * self._label_weights(y, classes, incremental=incremental)
        if not np.any(sample_weight > 0):
            raise ValueError("sample_weight must have at least one positive entry; all weights are zero.")
        return normalised_weights(sample_weight)

    def _resolve_params(self, objective, n_train, X_train=None, validating=False):
        """Every "auto" parameter's value for this fit, with ``n_train`` (the rows trained on).

        ``X_train``: the validated training rows, for values that depend on the data;
        ``validating``: early stopping holds out a validation split.
        """
        auto = {**objective.auto_values(n_train, validating), **self._data_auto_values(X_train)}
        resolved = {}
        for name in self._auto_parameters:
            value = getattr(self, name)
            resolved[name] = auto[name] if isinstance(value, str) and value == "auto" else value
        if resolved["batch_size"] > n_train:
            warnings.warn(
                f"Got batch_size={resolved['batch_size']} larger than the number of training "
                f"samples {n_train}; using {n_train}.",
                UserWarning,
            )
        resolved["batch_size"] = int(min(resolved["batch_size"], n_train))
        if "hidden_layer_sizes" in resolved:
            resolved["hidden_layer_sizes"] = tuple(objective.hidden_sizes)
        resolved["n_train"] = int(n_train)
        return resolved

    def _data_auto_values(self, X_train):
        """"auto" values that depend on the training rows (none in the base)."""
        return {}

    def _configure_module(self, module, objective, resolved):
        """Set the resolved training options that live on the module (none in the base)."""

    def _calibration(self, objective, evaluation, resolved, validation, continuing, incremental):
        """Fitted attributes that calibrate the trained ``evaluation`` module (none in the base)."""
        return {}

    def _lr_patience(self):
        """Epochs without progress before ``learning_rate="adaptive"`` cuts the rate."""
        if self.learning_rate != "adaptive" or not np.isfinite(self.n_iter_no_change):
            return None
        return max(3, int(self.n_iter_no_change) // 4 + 1)

    def _make_net(self, objective, module, resolved, generator, device, validation=None, adaptive=False):
        """A skorch net around ``module`` configured by this estimator's (resolved) parameters.

        ``adaptive``: the stopping rule, the learning-rate schedule and the
        weight averaging of ``fit`` (not for ``partial_fit``, whose calls are
        single epochs).
        """
        batch_size, n_train = resolved["batch_size"], resolved["n_train"]
        output_fn, per_sample_loss = objective.training_loss(resolved)
        return build_net(
            module,
            per_sample_loss,
            output_fn=output_fn,
            learning_rate_init=resolved["learning_rate_init"],
            alpha=self.alpha,
            batch_size=batch_size,
            max_iter=self.max_iter,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change if adaptive else np.inf,
            generator=generator,
            device=device,
            verbose=self.verbose,
            validation_data=validation,
            validation_score=objective.validation_score,
            validation_monitor=objective.validation_monitor,
            extra_callbacks=self.callbacks,
            lr_patience=self._lr_patience() if adaptive else None,
            cosine_epochs=self.max_iter if adaptive and self.learning_rate == "cosine" else None,
            penalty=objective.penalty(resolved.get("precision_penalty"), n_train),
            averaging_epochs=resolved.get("averaging_epochs") if adaptive else None,
            steps_per_epoch=math.ceil(n_train / batch_size),
            progress_epochs=None if adaptive else 1,
        )

    def _history_attributes(self, net, n_before, append, warn):
        """``n_iter_``, ``loss_curve_`` and the validation scores after training ``net``."""
        epochs = _completed_epochs(net)[n_before:]
        losses = [float(row["train_loss"]) for row in epochs]
        scores = [float(row.get("valid_score", np.nan)) for row in epochs] if self.early_stopping else None
        if append:
            losses = self.loss_curve_ + losses
            if scores is not None:
                scores = (self.validation_scores_ or []) + scores
        finite = [v for v in scores if np.isfinite(v)] if scores is not None else []
        callbacks = dict(net.callbacks_)
        stopping = callbacks.get("stopping")
        stopped_early = stopping is not None and stopping.misses_ >= stopping.patience
        interrupted = callbacks["interrupt_guard"].interrupted_
        # without a stopping rule (n_iter_no_change=inf), max_iter epochs is what was asked for
        stopping_rule = np.isfinite(self.n_iter_no_change)
        if warn and stopping_rule and len(epochs) >= self.max_iter and not stopped_early and not interrupted:
            warnings.warn(
                f"Stochastic optimizer: maximum iterations ({self.max_iter}) reached "
                "and the optimization hasn't converged yet. Training stops earlier once the "
                f"{'validation' if self.early_stopping else 'training'} loss has not improved by "
                f"tol={self.tol:g} for n_iter_no_change={self.n_iter_no_change} epochs; raise "
                "max_iter to train longer, or raise tol to stop sooner.",
                ConvergenceWarning,
            )
        return {
            "loss_curve_": losses,
            "n_iter_": len(losses),
            "best_loss_": float(np.min(losses)) if losses else np.inf,
            "validation_scores_": scores,
            "best_validation_score_": (float(max(finite)) if finite else np.nan) if scores is not None else None,
        }

    # ------------------------------------------------------------------ persistence
    def _training_state(self):
        """What ``partial_fit`` continues from besides the weights: ``(json-able dict, tensors)``.

        The optimiser's state and the training generator's, so that a
        restored model trains exactly as the saved one would have.
        """
        optimizer = self.net_.optimizer_.state_dict()
        tensors = {"generator": self.net_.iterator_train__generator.get_state()}
        for index, state in optimizer["state"].items():
            for key, value in state.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu()
        return {"param_groups": optimizer["param_groups"]}, tensors

    def _restore(self, module_state, training_meta=None, training_tensors=None):
        """Rebuild the fitted network from saved weights and training state (see ``load_model``).

        Expects the other fitted attributes (``n_features_in_``,
        ``resolved_params_``, ``classes_``) to be set.
        """
        try:
            device = resolve_device(self.device)
        except ValueError as exc:
            warnings.warn(f"{exc} Loading the model on the CPU instead.", UserWarning)
            device = torch.device("cpu")
        net = self._fresh_net(device)
        net.module_.load_state_dict(module_state, strict=True)
        if training_tensors is not None:
            net.iterator_train__generator.set_state(training_tensors["generator"])
        if training_meta is not None:
            state = {}
            for key, value in training_tensors.items():
                if key.startswith("optimizer."):
                    _, index, name = key.split(".", 2)
                    state.setdefault(int(index), {})[name] = value
            net.optimizer_.load_state_dict({"state": state, "param_groups": training_meta["param_groups"]})
        self.net_, self.device_ = net, device
        self._evaluation_module = _evaluation_copy(net.module_)

    def _fresh_net(self, device):
        """An initialised net of the fitted shape and resolved parameters, with throwaway weights.

        What :meth:`_restore` loads the saved state into, and what
        ``load_model`` compares a file's tensors with
        (:func:`training_tensor_layout`) before reading them. Expects
        ``n_features_in_``, ``resolved_params_`` (and ``classes_``) to be set.
        """
        objective = self._fitted_objective()
        # local generators for the throwaway initial values: the global one stays untouched
        generator = torch.Generator()
        module = objective.new_module(torch.Generator())
        module.set_generator(generator)
        self._configure_module(module, objective, self.resolved_params_)
        net = self._make_net(objective, module, self.resolved_params_, generator, device)
        return net.initialize()

    # ------------------------------------------------------------------ inference
    def __sklearn_is_fitted__(self):
        return hasattr(self, "net_")

    @property
    def module_(self):
        """The trained torch module (``net_.module_``)."""
        return self.net_.module_

    @property
    def scaling_mean_(self):
        """``scaler_.mean_``: the standardisation's centre (kept for compatibility)."""
        return self.scaler_.mean_

    @property
    def scaling_scale_(self):
        """``scaler_.scale_``: the standardisation's scale (kept for compatibility)."""
        return self.scaler_.scale_

    def _fitted_objective(self):
        return self._objective(self._n_network_inputs(), getattr(self, "classes_", None), fitted=True)

    def __getstate__(self):
        # a copy: the state may be this estimator's own __dict__
        state = dict(super().__getstate__())
        # rebuilt on unpickling, where the model may land on another device
        state.pop("_evaluation_module", None)
        state.pop("_checked_network", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.__sklearn_is_fitted__():
            self._evaluation_module = _evaluation_copy(self.module_)

    def _evaluation(self):
        """The float64 copy of the trained network, in eval mode, on the network's device.

        Inference is done in float64: in float32 a sample's outputs would
        depend, in their last bits, on which other rows share its batch
        (matrix products and reductions round differently by shape), so
        results would not be invariant to subsetting or reordering the rows.
        The copy is made once per fitted state (when the fit is committed);
        only a network moved to another device since then is copied again.
        """
        module = self._evaluation_module
        if _device_of(module) != _device_of(self.module_):
            module = _evaluation_copy(self.module_)
        return module

    def _batched(self, fn, X, *, prepare, n_rows=INFERENCE_BATCH_ROWS):
        """``fn(module, rows)`` over row batches of ``X``, with the evaluation copy of the network.

        ``prepare`` turns one batch of validated rows into the (float64,
        scaled) model input, so that no full-size copy of ``X`` is ever made:
        besides ``X`` itself, memory holds one batch and the outputs.
        """
        module = self._evaluation()
        device, dtype = _device_of(module), next(module.parameters()).dtype
        outputs = []
        limit = thread_limit(self.n_threads, module, min(n_rows, X.shape[0]))
        # the kernel's inference-only routes: prediction is no part of a fit
        with torch.no_grad(), _fused.inference_routes(), limit:
            for start in range(0, X.shape[0], n_rows):
                block = torch.as_tensor(prepare(X[start : start + n_rows]), device=device, dtype=dtype)
                outputs.append(np.asarray(fn(module, block).cpu().numpy(), dtype=np.float64))
        return np.concatenate(outputs, axis=0)


def training_tensor_layout(net):
    """``{name: (shape, dtype)}`` of the tensors :meth:`BaseUGMM._training_state` may return for ``net``.

    The training generator's state, and Adam's ``step``, ``exp_avg`` and
    ``exp_avg_sq`` of each parameter, numbered as the optimiser numbers them
    (a parameter that never had a gradient has no state).
    """
    layout = {"generator": (tuple(net.iterator_train__generator.get_state().shape), torch.uint8)}
    parameters = [p for group in net.optimizer_.param_groups for p in group["params"]]
    for index, parameter in enumerate(parameters):
        layout[f"optimizer.{index}.step"] = ((), torch.float32)
        for name in ("exp_avg", "exp_avg_sq"):
            layout[f"optimizer.{index}.{name}"] = (tuple(parameter.shape), parameter.dtype)
    return layout


def _encoder_of(estimator):
    """The fitted categorical encoder of ``estimator``'s preprocessing, or None."""
    return getattr(getattr(estimator, "scaler_", None), "encoder", None)


def _network_features(scaler, X, dtype=np.float32):
    """X as the network sees it: scaled; NaN stays.

    float32 (training): refused where a value overflows it. float64
    (inference): values astronomically far out are clipped at 1e30 standard
    deviations, as the density's are, so such a row still gets its
    (saturated) prediction.
    """
    Xs = scaler.transform(X)
    _check_every_row_observed(Xs)
    if np.dtype(dtype) == np.float64:
        return np.clip(Xs, -1e30, 1e30)
    X32 = Xs.astype(np.float32)
    if np.isinf(X32).any():  # NaN stays NaN in float32: only an overflow (or an inf) gives inf
        raise ValueError(
            "Input contains values too large for float32 after scaling; "
            "the model computes in float32."
        )
    return X32


def _missing_as_zero(X):
    """Scaled inputs with missing values (NaN) at 0, the scaled mean: what the data-dependent start sees."""
    return np.where(np.isnan(X), np.zeros((), dtype=X.dtype), X)


def _completed_epochs(net):
    # an interrupted epoch leaves a history row without a training loss
    return [row for row in net.history if "train_loss" in row]


def _device_of(module):
    return next(module.parameters()).device


#: Options that the layers hold but that shape nothing: a continued fit takes the current ones.
_LAYER_TRAINING_OPTIONS = ("dropout", "kernel")


def _continued_copy(fitted, current):
    """A copy of the fitted network to train on, with the training options of ``current`` (same structure)."""
    module = copy.deepcopy(fitted)
    parts = dict(current.named_modules())
    for name, part in module.named_modules():
        for option in _LAYER_TRAINING_OPTIONS:
            if hasattr(part, option):
                setattr(part, option, getattr(parts[name], option))
    return module


def _module_difference(fitted, current):
    """The first structural difference between two networks, in words, or None.

    Module types and names, parameter and buffer shapes, and the values of
    integer and boolean buffers (orders, degrees, masks) must agree; the
    values of float buffers and parameters are fitted, not structure.
    """
    fitted_parts, current_parts = list(fitted.named_modules()), list(current.named_modules())
    for (name, part), (name_now, part_now) in zip(fitted_parts, current_parts):
        if name != name_now or type(part) is not type(part_now):
            where = f"module {name!r}" if name else "the network"
            return f"{where} is a {type(part).__name__}, the parameters give a {type(part_now).__name__}"
    if len(fitted_parts) != len(current_parts):
        return f"the network has {len(fitted_parts)} modules, the parameters give {len(current_parts)}"
    state, state_now = fitted.state_dict(), current.state_dict()
    if list(state) != list(state_now):
        extra = sorted(set(state).symmetric_difference(state_now)) or sorted(state)
        return f"the tensors differ ({', '.join(extra[:3])})"
    for name, tensor in state.items():
        now = state_now[name]
        if tensor.shape != now.shape:
            return f"{name} has shape {tuple(tensor.shape)}, the parameters give {tuple(now.shape)}"
        if not (tensor.is_floating_point() or tensor.is_complex()) and not torch.equal(tensor.cpu(), now.cpu()):
            return f"{name} is {tensor.cpu().tolist()}, the parameters give {now.cpu().tolist()}"
    return None


def _evaluation_copy(module):
    """A float64 (float32 on MPS, which has no float64) eval-mode copy of ``module``; no random draws."""
    device = _device_of(module)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    evaluation = copy.deepcopy(module).set_generator(None)
    return evaluation.to(dtype=dtype).eval()


def _torch_generator(random_state):
    """A local torch generator seeded from ``random_state`` (never the global RNG)."""
    seed = int(random_state.randint(np.iinfo(np.int32).max))
    return torch.Generator().manual_seed(seed)


def _copy_generator(net):
    """A new generator in the state of the one that trained ``net``."""
    generator = torch.Generator()
    generator.set_state(net.iterator_train__generator.get_state())
    return generator


@torch.no_grad()
def training_loss(module, loss, X, packed):
    """Weighted mean loss (without penalties) of ``module`` in eval mode on rows ``X``, and its outputs.

    ``loss``: ``(forward, per_sample_loss)`` of the objective (``forward``
    None: the output is ``module(X)``). ``packed`` holds the targets with the
    sample weights as last column (see ``pack_target``).
    """
    forward, per_sample_loss = loss
    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        X = torch.as_tensor(X, device=device)
        outputs = module(X) if forward is None else forward(module, X)
        target = torch.as_tensor(packed, device=device)
        losses = per_sample_loss(outputs, target[:, :-1]).double()
        weight = target[:, -1].double()
        loss = float((weight * losses).sum() / weight.sum().clamp(min=torch.finfo(torch.float64).tiny))
    finally:
        module.train(was_training)
    return loss, outputs.double().cpu().numpy()


#: Relative rise of the training loss (at least this much absolutely) beyond which a fit diverged.
DIVERGENCE_MARGIN = 0.01


def _evenly_spaced(data):
    """At most ``PROGRESS_CHECK_ROWS`` evenly spaced rows of ``(X, packed targets)``."""
    X, packed = data
    rows = evenly_spaced_rows(len(X), PROGRESS_CHECK_ROWS)
    return X[rows], packed[rows]


def loss_rose(start_loss, end_loss, tol=0.0):
    """Whether ``end_loss`` is above ``start_loss`` by more than ``tol`` and :data:`DIVERGENCE_MARGIN`
    (relative to the start, at least that much absolutely), or not finite."""
    margin = max(tol, DIVERGENCE_MARGIN * max(1.0, abs(start_loss)))
    return not end_loss <= start_loss + margin


def divergence(start_loss, end_loss, outputs, X, tol=0.0):
    """Why a fit diverged (a sentence), or an empty string if it did not.

    It did if it ended with a training loss higher than it started with by
    more than ``tol`` and more than :data:`DIVERGENCE_MARGIN` (relative to
    the start, at least that much in absolute terms), or not finite, or if
    its outputs are the same for every row although the rows differ (a
    network collapsed to a constant). The margin keeps the last-epoch noise
    of a short fit from a good data-driven start (a rise of 0.2-0.4%) from
    counting as divergence.
    """
    if loss_rose(start_loss, end_loss, tol):
        return f"the training loss ended at {end_loss:.6g}, higher than it started ({start_loss:.6g})"
    outputs = outputs.reshape(len(outputs), -1)
    spread = np.ptp(outputs, axis=0)
    constant = np.all(spread <= 1e-6 * (1.0 + np.abs(outputs).max(axis=0)))
    if len(X) > 1 and constant and np.any(np.ptp(_missing_as_zero(X), axis=0) > 0):
        return "the network's outputs are the same for every training sample"
    return ""


def normalised_weights(sample_weight):
    """Non-negative float64 weights divided by their largest value.

    Done in float64 before the weights travel to the network in float32:
    any positive common factor (1e-300 or 1e300) then gives the same
    weights, which can neither underflow nor overflow in float32.
    """
    sample_weight = np.asarray(sample_weight, dtype=np.float64)
    return sample_weight / np.max(sample_weight)


def local_random_state(random_state):
    """``check_random_state`` that never draws from numpy's global RandomState."""
    if random_state is None:
        return np.random.RandomState()
    return check_random_state(random_state)


def _check_every_row_observed(X):
    """Raise a ValueError if a sample has no observed (non-NaN) feature."""
    empty = np.flatnonzero(np.isnan(X).all(axis=1)) if X.shape[1] else np.array([], dtype=int)
    if len(empty):
        raise ValueError(
            f"Sample(s) {empty[:10].tolist()} have only missing values (NaN); "
            "every sample needs at least one observed feature."
        )
