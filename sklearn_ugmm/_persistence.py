"""Safe persistence: hyperparameters as JSON, weights as tensors, no pickled code.

``pickle`` (and ``joblib``) run arbitrary code when loading, so a model file
from an untrusted source must never be unpickled. :func:`save_model` writes a
single file that :func:`load_model` reads back with
``torch.load(weights_only=True)``: only tensors, strings and numbers can come
out of it. A SHA-256 digest over the content detects files that were
modified or corrupted after saving.
"""

import hashlib
import json

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ._preprocessing import FeatureScaler

__all__ = ["save_model", "load_model"]

FORMAT = "sklearn-ugmm/2"
_FITTED_SCALARS = ("n_features_in_", "n_iter_", "best_loss_", "best_validation_score_")
_FITTED_LISTS = ("loss_curve_", "validation_scores_")


def _registry():
    from ._classifier import UGMMClassifier
    from ._density import UGMMDensityEstimator

    return {cls.__name__: cls for cls in (UGMMClassifier, UGMMDensityEstimator)}


def _json_value(value, name):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_json_value(v, name) for v in value]}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        return [_json_value(v, name) for v in value]
    raise ValueError(
        f"{name}={value!r} cannot be stored safely as JSON; "
        "use plain numbers, strings or lists (callbacks and RandomState objects cannot be saved)."
    )


def _decode_tuples(obj):
    if set(obj) == {"__tuple__"}:
        return tuple(obj["__tuple__"])
    return obj


def _digest(meta_json, tensors):
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode("utf-8"))
        h.update(str(t.dtype).encode("utf-8"))
        h.update(str(tuple(t.shape)).encode("utf-8"))
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_model(estimator, path):
    """Save a fitted estimator without pickle.

    Parameters
    ----------
    estimator : UGMMClassifier or UGMMDensityEstimator
        A fitted estimator whose parameters are plain values (``callbacks``
        must be None and ``random_state`` an int or None).
    path : str or path-like
        Destination file.

    Examples
    --------
    >>> import tempfile, os, numpy as np
    >>> from sklearn_ugmm import UGMMDensityEstimator, save_model, load_model
    >>> X = np.random.RandomState(0).normal(size=(50, 2))
    >>> est = UGMMDensityEstimator(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.ugmm")
    >>> save_model(est, path)
    >>> bool(np.allclose(load_model(path).score_samples(X), est.score_samples(X)))
    True
    """
    check_is_fitted(estimator)
    name = type(estimator).__name__
    if name not in _registry():
        raise TypeError(f"save_model supports UGMMClassifier and UGMMDensityEstimator, got {name}.")
    params = {k: _json_value(v, k) for k, v in estimator.get_params(deep=False).items()}
    fitted = {k: _json_value(getattr(estimator, k), k) for k in _FITTED_SCALARS}
    fitted.update({k: _json_value(getattr(estimator, k), k) for k in _FITTED_LISTS})
    fitted["resolved_params_"] = {k: _json_value(v, k) for k, v in estimator.resolved_params_.items()}
    training_meta, training_tensors = estimator._training_state()
    # the optimiser's settings; its state and the training generator's go with the tensors
    fitted["training_state"] = [{k: _json_value(v, k) for k, v in group.items()} for group in training_meta["param_groups"]]
    if hasattr(estimator, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(v) for v in estimator.feature_names_in_]
    if hasattr(estimator, "classes_"):
        fitted["classes_"] = _json_value(estimator.classes_, "classes_")
        fitted["classes_dtype"] = estimator.classes_.dtype.str
    meta = {"format": FORMAT, "estimator": name, "params": params, "fitted": fitted}
    meta_json = json.dumps(meta, sort_keys=True)
    tensors = {f"scaler.{k}": torch.as_tensor(v) for k, v in estimator.scaler_.to_arrays().items()}
    tensors.update({f"module.{k}": v.detach().cpu() for k, v in estimator.module_.state_dict().items()})
    tensors.update({f"training.{k}": v for k, v in training_tensors.items()})
    torch.save({"meta": meta_json, "tensors": tensors, "sha256": _digest(meta_json, tensors)}, path)


def load_model(path, *, device=None):
    """Load an estimator written by :func:`save_model`, without running code.

    Parameters
    ----------
    path : str or path-like
        File written by :func:`save_model`.
    device : str, optional
        Where to put the model ("cpu", "cuda", ...); the saved ``device``
        parameter when None, or the CPU when that device is not available.

    Returns
    -------
    estimator : UGMMClassifier or UGMMDensityEstimator
        The fitted estimator, with the saved hyperparameters, fitted
        attributes and network weights.

    Raises
    ------
    ValueError
        If the file is not a sklearn-ugmm model, was modified after saving,
        or does not match the estimator it describes.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_ugmm import UGMMClassifier, save_model, load_model
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = UGMMClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, y)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.ugmm")
    ...     save_model(clf, path)
    ...     loaded = load_model(path)
    >>> loaded
    UGMMClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0)
    >>> bool(np.array_equal(loaded.predict(X), clf.predict(X)))
    True
    """
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"{path} is not a readable sklearn-ugmm model file: {exc}") from exc
    if not isinstance(content, dict) or set(content) != {"meta", "tensors", "sha256"}:
        raise ValueError(f"{path} is not a sklearn-ugmm model file.")
    meta_json, tensors = content["meta"], content["tensors"]
    if not isinstance(meta_json, str) or not isinstance(tensors, dict):
        raise ValueError(f"{path} is not a sklearn-ugmm model file.")
    if _digest(meta_json, tensors) != content["sha256"]:
        raise ValueError(f"{path} was modified or corrupted after it was saved (checksum mismatch); refusing to load it.")
    meta = json.loads(meta_json, object_hook=_decode_tuples)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}; this version reads {FORMAT!r}.")
    registry = _registry()
    if meta.get("estimator") not in registry:
        raise ValueError(f"{path} holds an unknown estimator {meta.get('estimator')!r}.")
    estimator = registry[meta["estimator"]](**meta["params"])
    if device is not None:
        estimator.set_params(device=device)
    fitted = dict(meta["fitted"])
    if "classes_" in fitted:
        estimator.classes_ = np.asarray(fitted.pop("classes_"), dtype=np.dtype(fitted.pop("classes_dtype")))
    if "feature_names_in_" in fitted:
        estimator.feature_names_in_ = np.asarray(fitted.pop("feature_names_in_"), dtype=object)
    param_groups = fitted.pop("training_state", None)
    for key, value in fitted.items():
        setattr(estimator, key, value)
    state, scaler_arrays, training = {}, {}, {}
    try:
        if param_groups is None:
            raise KeyError("training_state")
        for key, value in tensors.items():
            group, name = key.split(".", 1)
            {"module": state, "scaler": scaler_arrays, "training": training}[group][name] = value
        estimator.scaler_ = FeatureScaler.from_arrays(
            {k: v.numpy() for k, v in scaler_arrays.items()}, method=estimator.resolved_params_["standardize"]
        )
        estimator._restore(state, {"param_groups": param_groups}, training)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: the saved weights do not match the saved hyperparameters: {exc}") from exc
    return estimator
