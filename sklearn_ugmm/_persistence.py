"""Safe persistence: hyperparameters as JSON, weights as tensors, no pickled code.

``pickle`` (and ``joblib``) run arbitrary code when loading, so a model file
from an untrusted source must never be unpickled. :func:`save_model` writes a
single file in torch's zip format; :func:`load_model` reads it back without
running code and without trusting it:

* the file must be a regular file (a FIFO or a device is refused, never
  opened for a blocking read);
* the pickled index of the archive is read by a restricted reader that only
  records which tensors the file declares (names, dtypes, shapes), without
  allocating them;
* the hyperparameters are validated and the tensors the model needs are
  derived from them (:func:`expected_tensors`); the declared tensors must
  match exactly, and every tensor must be stored uncompressed with exactly
  the bytes its shape implies, before anything is allocated;
* tensors are then read in chunks straight into their final buffers, and a
  SHA-256 digest over the content, computed without copies, detects files
  that were modified or corrupted after saving.

So loading allocates about the size of the model the file describes, and
every malformed file raises ``ValueError`` (``OSError`` for I/O errors).
:func:`save_model` writes beside the target, syncs and renames over it, so a
failed save (a full disk, say) leaves any previous file untouched.
"""

import hashlib
import json
import math
import os
import pickle
import secrets
import stat
import zipfile
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ._base import parse_device, training_tensor_layout
from ._preprocessing import CategoricalEncoder, FeatureScaler

__all__ = ["save_model", "load_model"]

FORMAT = "sklearn-ugmm/2"
_FITTED_SCALARS = ("n_features_in_", "n_iter_", "best_loss_", "best_validation_score_")
_FITTED_LISTS = ("loss_curve_", "validation_scores_")
#: Largest pickled index (hyperparameters, training curves, class labels and
#: feature names, one line per tensor) that load_model reads.
MAX_INDEX_BYTES = 256 * 2**20
#: Bytes read at a time when a tensor is streamed from the file.
_CHUNK_BYTES = 2**20
#: Storage classes a saved model may declare, by their pickled name.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "BoolStorage": torch.bool,
    "ByteStorage": torch.uint8,
}


def _registry():
    from ._classifier import UGMMClassifier
    from ._density import UGMMDensityEstimator

    return {cls.__name__: cls for cls in (UGMMClassifier, UGMMDensityEstimator)}


# ---------------------------------------------------------------------- what a model holds
def preprocessing_arrays(estimator):
    """Names and shapes of the fitted preprocessing arrays (all float64), as saved.

    Parameters
    ----------
    estimator : UGMMClassifier or UGMMDensityEstimator
        An estimator whose ``n_features_in_`` and ``resolved_params_`` are set.

    Returns
    -------
    arrays : dict of str to tuple
        Tensor name (``scaler.<name>`` of :meth:`FeatureScaler.to_arrays`) to shape: one
        value per network input (per numeric feature and per category).
    """
    names = FeatureScaler.array_names(estimator.resolved_params_["standardize"])
    return {f"scaler.{name}": (estimator._n_network_inputs(),) for name in names}


def expected_tensors(estimator, net):
    """Every tensor a saved model may hold: ``{key: (shape, dtype)}``.

    Derived from the hyperparameters and fitted metadata alone: the
    preprocessing arrays (``scaler.<name>``), the network's state
    (``module.<name>``) and the training state (``training.<name>``), whose
    shapes come from ``net``, a freshly built net
    (``estimator._fresh_net``). Call :func:`_network_size_floor` first on
    untrusted input: building the network allocates it.

    Parameters
    ----------
    estimator : UGMMClassifier or UGMMDensityEstimator
        An estimator with its parameters, ``n_features_in_``,
        ``resolved_params_`` and, for the classifier, ``classes_`` set.
    net : skorch.NeuralNet
        The estimator's fresh net.

    Returns
    -------
    tensors : dict of str to (tuple, torch.dtype)
    """
    expected = {key: (shape, torch.float64) for key, shape in preprocessing_arrays(estimator).items()}
    expected.update({f"module.{k}": (tuple(v.shape), v.dtype) for k, v in net.module_.state_dict().items()})
    expected.update({f"training.{k}": v for k, v in training_tensor_layout(net).items()})
    return expected


def _network_size_floor(estimator):
    """Lower bounds on the network's state from the hyperparameters alone: ``(values, tensors)``.

    The network holds at least ``values`` numbers (and at most a small
    multiple of that), in at least ``tensors`` tensors (see the objectives'
    ``size_floor``). Comparing these with what a file holds refuses
    hyperparameters that describe a huge or very deep network before that
    network is built.
    """
    return estimator._fitted_objective().size_floor()


# ---------------------------------------------------------------------- encoding
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
    if isinstance(value, dict):
        # JSON object keys are strings only: a dict (class_weight) is stored as its (key, value) pairs
        pairs = [[_json_value(k, name), _json_value(v, name)] for k, v in value.items()]
        if all(k is None or isinstance(k, (bool, int, float, str)) for k, _ in pairs):
            return {"__dict__": pairs}
    raise ValueError(
        f"{name}={value!r} cannot be stored safely as JSON; "
        "use plain numbers, strings or lists (callbacks and RandomState objects cannot be saved)."
    )


def _decode_tuples(obj):
    if set(obj) == {"__tuple__"}:
        if not isinstance(obj["__tuple__"], list):
            raise ValueError("a stored tuple must be a list")
        return tuple(obj["__tuple__"])
    if set(obj) == {"__dict__"}:
        pairs = obj["__dict__"]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError("a stored dict must be a list of (key, value) pairs")
        if not all(k is None or isinstance(k, (bool, int, float, str)) for k, _ in pairs):
            raise ValueError("the keys of a stored dict must be plain values")
        if len({(type(k), k) for k, _ in pairs}) != len(pairs):
            raise ValueError("a stored dict has repeated keys")
        return dict((k, v) for k, v in pairs)
    return obj


def _digest(meta_json, tensors):
    """SHA-256 over the metadata and every tensor's name, dtype, shape and bytes.

    The bytes are hashed in place (a memoryview of each tensor), never copied.
    """
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode("utf-8"))
        h.update(str(t.dtype).encode("utf-8"))
        h.update(str(tuple(t.shape)).encode("utf-8"))
        if t.numel():
            h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


# ---------------------------------------------------------------------- saving
def save_model(estimator, path):
    """Save a fitted estimator without pickle, atomically.

    The file is written beside ``path`` under a temporary name, flushed to
    disk and then renamed over ``path``: on any failure (a full disk, a
    missing or read-only directory) an existing file at ``path`` is left
    untouched and no partial file remains.

    Parameters
    ----------
    estimator : UGMMClassifier or UGMMDensityEstimator
        A fitted estimator whose parameters are plain values (``callbacks``
        must be None and ``random_state`` an int or None).
    path : str or path-like
        Destination file.

    Raises
    ------
    ValueError
        If a parameter that shapes the network (for example
        ``hidden_layer_sizes`` or ``tie_means``) was changed by
        ``set_params`` after fitting: the file could not rebuild the network.
    OSError
        If the file cannot be written; the message names ``path``.

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
    difference, _ = estimator._structure_difference()
    if difference is not None:
        raise ValueError(
            f"save_model rebuilds the network from the estimator's parameters, but they no longer give the fitted "
            f"network: {difference}. A parameter that shapes the network was changed after fitting; set it back, "
            "or fit again, before saving."
        )
    params = {k: _json_value(v, k) for k, v in estimator.get_params(deep=False).items()}
    fitted = {k: _json_value(getattr(estimator, k), k) for k in _FITTED_SCALARS}
    fitted.update({k: _json_value(getattr(estimator, k), k) for k in _FITTED_LISTS})
    fitted["resolved_params_"] = {k: _json_value(v, k) for k, v in estimator.resolved_params_.items()}
    training_meta, training_tensors = estimator._training_state()
    # the optimiser's settings; its state and the training generator's go with the tensors
    fitted["training_state"] = [{k: _json_value(v, k) for k, v in group.items()} for group in training_meta["param_groups"]]
    if hasattr(estimator, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(v) for v in estimator.feature_names_in_]
    if estimator.scaler_.encoder is not None:
        fitted["categorical"] = estimator.scaler_.encoder.to_metadata()
    if hasattr(estimator, "classes_"):
        fitted["classes_"] = _json_value(estimator.classes_, "classes_")
        fitted["classes_dtype"] = estimator.classes_.dtype.str
        fitted["temperature_"] = _json_value(getattr(estimator, "temperature_", 1.0), "temperature_")
    meta = {"format": FORMAT, "estimator": name, "params": params, "fitted": fitted}
    meta_json = json.dumps(meta, sort_keys=True)
    tensors = {f"scaler.{k}": torch.as_tensor(v).contiguous() for k, v in estimator.scaler_.to_arrays().items()}
    tensors.update(
        {f"module.{k}": v.detach().cpu().contiguous() for k, v in estimator.module_.state_dict().items()}
    )
    tensors.update({f"training.{k}": v.contiguous() for k, v in training_tensors.items()})
    content = {"meta": meta_json, "tensors": tensors, "sha256": _digest(meta_json, tensors)}
    _write_atomically(path, lambda file: torch.save(content, file))


def _write_atomically(path, write):
    """``write(file)`` into a temporary file beside ``path``, fsync it, rename it over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    temporary = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
    try:
        # O_EXCL: never follow or reuse an existing name; the umask applies as for open()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise _save_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        _keep_mode(path, temporary)
        os.replace(temporary, path)
    except BaseException as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(exc, Exception):
            raise _save_error(path, exc) from exc
        raise
    _sync_directory(directory)


def _keep_mode(path, temporary):
    """Give the new file the permissions of the file it replaces."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    os.chmod(temporary, mode)


def _sync_directory(directory):
    """Make the rename durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_error(path, exc):
    """An OSError naming ``path``, of the same kind (and errno) as the one behind ``exc``."""
    cause = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    detail = cause.strerror if cause is not None and cause.strerror else str(exc)
    errno = cause.errno if cause is not None else None
    kind = type(cause) if cause is not None else OSError
    return kind(errno, f"could not save the model to {path!r}: {detail}", path)


# ---------------------------------------------------------------------- reading the index
class _Storage:
    """A storage the index refers to: its entry in the archive, dtype and size (nothing allocated)."""

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRecord:
    """A tensor the index declares."""

    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    @property
    def dtype(self):
        return self.storage.dtype


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _rebuild_tensor_record(storage, storage_offset, size, stride, requires_grad, backward_hooks):
    """What ``torch._utils._rebuild_tensor_v2`` receives, checked and recorded."""
    if not isinstance(storage, _Storage):
        raise ValueError("a tensor without a storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        raise ValueError("malformed tensor shape")
    if not all(_is_int(n) and n >= 0 for n in size) or not all(_is_int(s) for s in stride):
        raise ValueError("malformed tensor shape")
    contiguous, step = [], 1
    for n in reversed(size):
        contiguous.insert(0, step)
        step *= n
    if storage_offset != 0 or (math.prod(size) > 1 and list(stride) != contiguous):
        raise ValueError("tensors must be contiguous views of their whole storage")
    if math.prod(size) != storage.numel:
        raise ValueError("a tensor does not fill its storage")
    if requires_grad is not False or backward_hooks != {}:
        raise ValueError("saved tensors never require gradients or carry hooks")
    return _TensorRecord(storage, tuple(size))


def _empty_hooks():
    return {}


def _plain_keys(keys):
    """Refuse dictionary keys other than strings and integers.

    A tuple key built from shared references (``t = (t, t)`` nested D
    deep, a few bytes per level) costs 2**D operations to hash: a small
    file would hang the loader. Torch's index keys are strings.
    """
    if not all(type(key) in (str, int) for key in keys):
        raise pickle.UnpicklingError("the keys of a model file's index are strings or integers")


class _IndexReader(pickle._Unpickler):
    """Reads the pickled index of a torch archive: plain containers and tensor records only.

    Only the two callables torch's format uses are resolved, to recorders
    that allocate nothing; every other global is refused. Dictionary keys
    must be strings or integers, and sets (which hash their items) are
    refused: hashing is where a hostile index could spend exponential
    time. The pure-Python unpickler, so that these opcodes can be checked;
    an index is a few kilobytes.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_setitem(self):
        _plain_keys([self.stack[-2]])
        pickle._Unpickler.load_setitem(self)

    def _load_setitems(self):
        _plain_keys(self.stack[0::2])  # the items since the mark
        pickle._Unpickler.load_setitems(self)

    def _load_dict(self):
        _plain_keys(self.stack[0::2])
        pickle._Unpickler.load_dict(self)

    def _refuse_set(self):
        raise pickle.UnpicklingError("a model file's index holds no sets")

    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.DICT[0]] = _load_dict
    for _opcode in (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET):
        dispatch[_opcode[0]] = _refuse_set
    del _opcode

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_record
        if (module, name) == ("collections", "OrderedDict"):
            return _empty_hooks
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a model file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("malformed storage reference")
        _, dtype, key, _location, numel = pid
        if dtype not in _STORAGE_DTYPES.values() or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError("malformed storage reference")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, dtype, numel)
        elif (storage.dtype, storage.numel) != (dtype, numel):
            raise pickle.UnpicklingError("a storage declared twice")
        return storage


def _open_regular(path):
    """Open ``path`` for reading, refusing anything but a regular file without blocking on it."""
    path = os.fspath(path)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is not a regular file, so not a sklearn-ugmm model file.")
    # O_NONBLOCK: a FIFO swapped in after the check cannot hang the open
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file, so not a sklearn-ugmm model file.")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_index(archive, path, file_size):
    """The archive's prefix and its unpickled index (tensors as :class:`_TensorRecord`).

    Every entry must be stored uncompressed, and together they may not claim
    more bytes than the file has: what an entry claims is then what reading
    it can produce.
    """
    names = archive.namelist()
    index_names = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(index_names) != 1:
        raise ValueError(f"{path} is not a sklearn-ugmm model file (no torch archive index).")
    prefix = index_names[0][: -len("data.pkl")]
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ValueError(f"{path} holds a compressed entry ({info.filename}); model files are never compressed.")
    claimed = sum(info.file_size for info in archive.infolist())
    if claimed > file_size:
        raise ValueError(f"{path}: its entries claim {claimed} bytes, more than the file's {file_size}.")
    byteorder = f"{prefix}byteorder"
    if byteorder in names and (archive.getinfo(byteorder).file_size > 16 or archive.read(byteorder) != b"little"):
        raise ValueError(f"{path} was not written in little-endian byte order.")
    info = archive.getinfo(index_names[0])
    if info.file_size > MAX_INDEX_BYTES:
        raise ValueError(f"{path}: its index is {info.file_size} bytes, more than a model file holds.")
    with archive.open(info) as index:
        reader = _IndexReader(index)
        reader.storages = {}
        return prefix, reader.load()


def _check_entries(archive, prefix, tensors, path):
    """Every declared tensor has its own entry holding exactly the bytes its shape implies.

    Entries are stored uncompressed and claim no more than the file holds
    (checked by :func:`_read_index`), so the declared tensors together are
    no larger than the file.
    """
    for key, record in tensors.items():
        try:
            info = archive.getinfo(f"{prefix}data/{record.storage.key}")
        except KeyError:
            raise ValueError(f"{path}: the data of {key} is missing.") from None
        if info.file_size != record.storage.numel * record.dtype.itemsize:
            raise ValueError(f"{path}: the data of {key} has {info.file_size} bytes, not the size of its shape.")


# ---------------------------------------------------------------------- validating the content
def _check_content(content, path):
    """The index's metadata string, tensor records and digest, with their types checked."""
    if not isinstance(content, dict) or set(content) != {"meta", "tensors", "sha256"}:
        raise ValueError(f"{path} is not a sklearn-ugmm model file.")
    meta_json, tensors, digest = content["meta"], content["tensors"], content["sha256"]
    if not isinstance(meta_json, str) or not isinstance(digest, str) or not isinstance(tensors, dict):
        raise ValueError(f"{path} is not a sklearn-ugmm model file.")
    if not all(isinstance(k, str) and isinstance(v, _TensorRecord) for k, v in tensors.items()):
        raise ValueError(f"{path} is not a sklearn-ugmm model file (malformed tensor table).")
    keys = [v.storage.key for v in tensors.values()]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: two tensors share a storage.")
    return meta_json, tensors, digest


def _check_number(value, name, *, integer=False, minimum=None, optional=False):
    if value is None and optional:
        return
    kind = Integral if integer else Real
    if isinstance(value, bool) or not isinstance(value, kind) or (minimum is not None and value < minimum):
        raise ValueError(f"fitted attribute {name}={value!r} is not valid")


def _estimator_from_meta(meta_json, path):
    """The estimator the metadata describes, with parameters and fitted scalars set and checked."""
    try:
        meta = json.loads(meta_json, object_hook=_decode_tuples)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: its metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or set(meta) != {"format", "estimator", "params", "fitted"}:
        raise ValueError(f"{path} is not a sklearn-ugmm model file (malformed metadata).")
    if meta["format"] != FORMAT:
        raise ValueError(f"{path} has format {meta['format']!r}; this version reads {FORMAT!r}.")
    registry = _registry()
    if not isinstance(meta["estimator"], str) or meta["estimator"] not in registry:
        raise ValueError(f"{path} holds an unknown estimator {meta['estimator']!r}.")
    cls = registry[meta["estimator"]]
    params, fitted = meta["params"], meta["fitted"]
    names = set(cls().get_params(deep=False))
    if isinstance(params, dict):
        params = _with_options_saved_before(params, names, _PARAMS_SAVED_BEFORE)
    if not isinstance(params, dict) or set(params) != names:
        raise ValueError(f"{path}: the saved parameters are not those of {cls.__name__}.")
    if not isinstance(fitted, dict):
        raise ValueError(f"{path} is not a sklearn-ugmm model file (malformed metadata).")
    try:
        estimator = cls(**params)
        estimator._validate_params()
        if estimator.callbacks is not None:
            raise ValueError("callbacks cannot be stored")
        estimator._hidden_sizes()
        param_groups = _set_fitted_metadata(estimator, dict(fitted))
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{path}: invalid saved model description: {exc}") from exc
    return estimator, param_groups


def _set_fitted_metadata(estimator, fitted):
    """Set the fitted attributes the metadata holds (checked); return the optimiser's param groups."""
    is_classifier = "classes_" in fitted
    required = {*_FITTED_SCALARS, *_FITTED_LISTS, "resolved_params_", "training_state"}
    required |= {"classes_", "classes_dtype"} if is_classifier else set()
    if is_classifier:
        # files saved before the temperature existed predict without one
        fitted.setdefault("temperature_", 1.0)
        required.add("temperature_")
    if not required <= set(fitted) <= required | {"feature_names_in_", "categorical"}:
        missing = sorted(required - set(fitted))
        raise ValueError(f"unexpected fitted attributes {sorted(fitted)}" + (f" (missing {missing})" if missing else ""))
    if is_classifier != hasattr(type(estimator), "predict_proba"):
        raise ValueError("class labels do not belong to this estimator")
    _check_number(fitted["n_features_in_"], "n_features_in_", integer=True, minimum=1)
    _check_number(fitted["n_iter_"], "n_iter_", integer=True, minimum=0)
    _check_number(fitted["best_loss_"], "best_loss_")
    _check_number(fitted["best_validation_score_"], "best_validation_score_", optional=True)
    if is_classifier:
        _check_number(fitted["temperature_"], "temperature_")
        if not 0 < fitted["temperature_"] < math.inf:
            raise ValueError("fitted attribute temperature_ must be positive and finite")
    for name in _FITTED_LISTS:
        values = fitted[name]
        if values is None and name == "validation_scores_":
            continue
        if not isinstance(values, list):
            raise ValueError(f"fitted attribute {name} is not a list")
        for v in values:
            _check_number(v, name)
    if "feature_names_in_" in fitted:
        names = fitted.pop("feature_names_in_")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("feature_names_in_ must be a list of strings")
        if len(names) != fitted["n_features_in_"]:
            raise ValueError("feature_names_in_ does not match n_features_in_")
        estimator.feature_names_in_ = np.asarray(names, dtype=object)
    if is_classifier:
        estimator.classes_ = _classes(fitted.pop("classes_"), fitted.pop("classes_dtype"))
    estimator.resolved_params_ = _resolved_params(fitted.pop("resolved_params_"), estimator)
    # the preprocessing's encoder now; its scaling arrays come with the tensors
    encoder = None
    if "categorical" in fitted:
        if not hasattr(type(estimator), "predict_proba"):
            raise ValueError("categorical columns do not belong to this estimator")
        encoder = CategoricalEncoder.from_metadata(
            fitted.pop("categorical"), fitted["n_features_in_"], getattr(estimator, "feature_names_in_", None)
        )
    estimator.scaler_ = FeatureScaler(estimator.resolved_params_["standardize"], encoder)
    param_groups = fitted.pop("training_state")
    if not isinstance(param_groups, list) or not all(isinstance(g, dict) for g in param_groups):
        raise ValueError("malformed training state")
    for key, value in fitted.items():
        setattr(estimator, key, value)
    return param_groups


#: What a model saved before each option existed was trained with: the paper's
#: mixture output neurons, the pure joint generative loss, no label smoothing
#: (parameters and resolved values), no input dropout (resolved values only: files without
#: the input_dropout parameter are refused, as before).
_PARAMS_SAVED_BEFORE = {"output_layer": "mixture", "conditional_weight": 0.0, "label_smoothing": 0.0}
_RESOLVED_SAVED_BEFORE = {**_PARAMS_SAVED_BEFORE, "input_dropout": 0.0}


def _with_options_saved_before(values, names, defaults):
    """``values`` with the options among ``names`` that it lacks set from ``defaults``."""
    return {**values, **{k: v for k, v in defaults.items() if k in names and k not in values}}


def _resolved_params(resolved, estimator):
    """The saved ``resolved_params_``: the estimator's "auto" parameters and ``n_train``, each valid."""
    expected = {*estimator._auto_parameters, "n_train"}
    if isinstance(resolved, dict) and "hidden_layer_sizes" in expected and "hidden_layer_sizes" not in resolved:
        # a file from before hidden_layer_sizes="auto": its sizes are the parameter's
        sizes = estimator._hidden_sizes()
        if isinstance(sizes, tuple):
            resolved = {**resolved, "hidden_layer_sizes": sizes}
    if isinstance(resolved, dict):
        resolved = _with_options_saved_before(resolved, expected, _RESOLVED_SAVED_BEFORE)
    if not isinstance(resolved, dict) or set(resolved) != expected:
        raise ValueError(f"resolved_params_ must hold {sorted(expected)}")
    for name in ("batch_size", "n_train"):
        _check_number(resolved[name], name, integer=True, minimum=1)
    _check_number(resolved["learning_rate_init"], "learning_rate_init", minimum=0)
    if not 0 < resolved["learning_rate_init"] < math.inf:
        raise ValueError("resolved learning_rate_init must be positive and finite")
    if not (isinstance(resolved["standardize"], bool) or resolved["standardize"] == "yeo-johnson"):
        raise ValueError(f"resolved standardize={resolved['standardize']!r} is not valid")
    if "hidden_layer_sizes" in resolved:
        sizes = resolved["hidden_layer_sizes"]
        if not isinstance(sizes, (tuple, list)):
            raise ValueError("resolved hidden_layer_sizes must be a list of layer sizes")
        for size in sizes:
            _check_number(size, "hidden_layer_sizes", integer=True, minimum=1)
        resolved["hidden_layer_sizes"] = tuple(sizes)
    if "output_layer" in resolved and resolved["output_layer"] not in ("mixture", "product"):
        raise ValueError(f"resolved output_layer={resolved['output_layer']!r} is not valid")
    if "precision_penalty" in resolved:
        _check_number(resolved["precision_penalty"], "precision_penalty", minimum=0)
    if "input_dropout" in resolved:
        _check_number(resolved["input_dropout"], "input_dropout", minimum=0)
        if not resolved["input_dropout"] < 1:
            raise ValueError("resolved input_dropout must be below 1")
    if "conditional_weight" in resolved:
        _check_number(resolved["conditional_weight"], "conditional_weight", minimum=0)
        if not resolved["conditional_weight"] < math.inf:
            raise ValueError("resolved conditional_weight must be finite")
    if "averaging_epochs" in resolved:
        _check_number(resolved["averaging_epochs"], "averaging_epochs", minimum=0, optional=True)
    if "label_smoothing" in resolved:
        _check_number(resolved["label_smoothing"], "label_smoothing", minimum=0)
        if not resolved["label_smoothing"] < 1:
            raise ValueError("resolved label_smoothing must be below 1")
    return resolved


def _classes(values, dtype):
    if not isinstance(values, list) or not isinstance(dtype, str):
        raise ValueError("malformed class labels")
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufUO" or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"class labels of dtype {dtype} are not supported")
    if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
        raise ValueError("class labels must be plain values")
    classes = np.asarray(values, dtype=dtype)
    if classes.ndim != 1 or len(classes) < 2:
        raise ValueError("a classifier needs at least two class labels")
    if not np.array_equal(np.unique(classes), classes):
        raise ValueError("class labels must be sorted and distinct")
    return classes


def _check_tensor_table(estimator, tensors, param_groups, path):
    """Compare the declared tensors and the optimiser's settings with what the hyperparameters imply.

    Nothing the file declares is allocated before this passes. Every
    preprocessing and network tensor must be present; of the optimiser's
    state, those of parameters that had a gradient.
    """
    module = [record for key, record in tensors.items() if key.startswith("module.")]
    declared = sum(record.storage.numel for record in module)
    least_values, least_tensors = _network_size_floor(estimator)
    if least_values > declared or least_tensors > len(module):
        raise ValueError(
            f"{path}: the saved weights do not match the saved hyperparameters "
            f"(they describe a network of at least {least_values} values in {least_tensors} tensors; "
            f"the file holds {declared} in {len(module)})."
        )
    net = estimator._fresh_net(torch.device("cpu"))
    expected = expected_tensors(estimator, net)
    optional = {key for key in expected if key.startswith("training.optimizer.")}
    missing, extra = sorted(set(expected) - optional - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{path}: the saved weights do not match the saved hyperparameters "
            f"(missing {missing}, unexpected {extra})."
        )
    for key, record in tensors.items():
        shape, dtype = expected[key]
        if record.shape != shape or record.dtype != dtype:
            raise ValueError(
                f"{path}: the saved weights do not match the saved hyperparameters: {key} is "
                f"{record.dtype} {record.shape}, expected {dtype} {shape}."
            )
    _check_param_groups(param_groups, net.optimizer_.state_dict()["param_groups"], path)


#: The optimiser settings that torch's learning-rate schedulers add to a trained optimiser's groups
_SCHEDULER_GROUP_KEYS = {"initial_lr"}


def _check_param_groups(saved, fresh, path):
    """The saved optimiser settings have the fresh optimiser's groups, keys and kinds of values.

    A scheduled fit (``learning_rate="cosine"``) also saves the number ``initial_lr``.
    """

    def kind(value):
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return repr(value) if value is None else type(value).__name__
        if isinstance(value, Real):
            return "number"
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, tuple(kind(v) for v in value))
        return type(value).__name__

    problem = len(saved) != len(fresh)
    for group, reference in zip(saved, fresh):
        if set(group) - _SCHEDULER_GROUP_KEYS != set(reference) or group["params"] != reference["params"]:
            problem = True
            break
        for key, value in group.items():
            if key in _SCHEDULER_GROUP_KEYS:
                problem |= kind(value) != "number"
            elif kind(value) != kind(reference[key]) and not (value is None or reference[key] is None):
                problem = True
        if not all(math.isfinite(v) for v in group.values() if kind(v) == "number"):
            problem = True
    if problem:
        raise ValueError(f"{path}: the saved optimiser settings do not match the saved hyperparameters.")


def _read_tensors(archive, prefix, tensors, path):
    """Stream each declared tensor from its entry (checked by :func:`_check_entries`) into a new buffer."""
    loaded = {}
    for key, record in tensors.items():
        info = archive.getinfo(f"{prefix}data/{record.storage.key}")
        tensor = torch.empty(record.shape, dtype=record.dtype)
        if tensor.numel():
            target = memoryview(tensor.numpy()).cast("B")
            with archive.open(info) as entry:
                position = 0
                while position < len(target):
                    n = entry.readinto(target[position : position + _CHUNK_BYTES])
                    if not n:
                        raise ValueError(f"{path}: the data of {key} is truncated.")
                    position += n
                if entry.read(1):
                    raise ValueError(f"{path}: the data of {key} is longer than its shape.")
        loaded[key] = tensor
    return loaded


def _tampered(path, reason):
    return f"{path} was modified or corrupted after it was saved ({reason}); refusing to load it."


def load_model(path, *, device=None):
    """Load an estimator written by :func:`save_model`, without running code.

    The file is checked before anything large is allocated: the tensors it
    declares must be exactly those its hyperparameters imply, so loading
    uses about as much memory as the model it describes, whatever the file
    holds.

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
        If ``device`` is not a device string the estimators support, or the
        file is not a regular file, not a sklearn-ugmm model, was
        modified or corrupted after saving, or does not match the estimator
        it describes.
    OSError
        If the file cannot be read (missing, no permission, I/O error).

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
    if device is not None and device != "auto":
        parse_device(device)  # a typo is an error; a device this machine lacks falls back to the CPU
    with _open_regular(path) as file:
        try:
            archive = zipfile.ZipFile(file)
        except Exception as exc:  # BadZipFile, NotImplementedError, OSError on a bad offset...
            raise ValueError(f"{path} is not a readable sklearn-ugmm model file: {exc!r}") from exc
        with archive:
            try:
                prefix, content = _read_index(archive, path, os.fstat(file.fileno()).st_size)
                meta_json, records, digest = _check_content(content, path)
                _check_entries(archive, prefix, records, path)
                estimator, param_groups = _estimator_from_meta(meta_json, path)
                _check_tensor_table(estimator, records, param_groups, path)
                tensors = _read_tensors(archive, prefix, records, path)
            except zipfile.BadZipFile as exc:
                raise ValueError(_tampered(path, exc)) from exc
            except UnicodeError as exc:
                raise ValueError(f"{path} is not a readable sklearn-ugmm model file: {exc}") from exc
            except ValueError:
                raise
            except Exception as exc:  # zipfile and pickle raise many kinds on a damaged file
                raise ValueError(f"{path} is not a readable sklearn-ugmm model file: {exc!r}") from exc
    if _digest(meta_json, tensors) != digest:
        raise ValueError(_tampered(path, "checksum mismatch"))
    if device is not None:
        estimator.set_params(device=device)
    state, scaler_arrays, training = {}, {}, {}
    for key, value in tensors.items():
        group, name = key.split(".", 1)
        {"module": state, "scaler": scaler_arrays, "training": training}[group][name] = value
    try:
        estimator.scaler_ = FeatureScaler.from_arrays(
            {k: v.numpy() for k, v in scaler_arrays.items()},
            method=estimator.resolved_params_["standardize"],
            encoder=estimator.scaler_.encoder,
        )
        estimator._restore(state, {"param_groups": param_groups}, training)
    except Exception as exc:  # checked above: only a file crafted with a matching checksum gets here
        raise ValueError(f"{path}: the saved weights do not match the saved hyperparameters: {exc}") from exc
    return estimator
