"""save_model / load_model: JSON hyperparameters, weights-only tensors, tamper detection."""

import errno
import io
import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_iris

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator, load_model, save_model

_ROOT = Path(__file__).resolve().parents[1]


def _child_env():
    """The environment of a child Python that imports this checkout's package."""
    path = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_classifier_round_trip_predicts_identically(iris, tmp_path, objective):
    X, y = iris
    labels = np.array(["a", "b", "c"], dtype=object)[y]
    df = pd.DataFrame(X, columns=list("pqrs"))
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=5, n_iter_no_change=np.inf, objective=objective, random_state=0).fit(df, labels)
    save_model(clf, tmp_path / "clf.ugmm")
    loaded = load_model(tmp_path / "clf.ugmm")
    assert type(loaded) is UGMMClassifier
    assert loaded.get_params() == clf.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(df), clf.predict_proba(df))
    np.testing.assert_array_equal(loaded.predict(df), clf.predict(df))
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    np.testing.assert_array_equal(loaded.feature_names_in_, clf.feature_names_in_)
    assert loaded.loss_curve_ == clf.loss_curve_ and loaded.n_iter_ == clf.n_iter_


def test_density_round_trip(tmp_path):
    X = np.random.RandomState(0).normal(size=(120, 3)) * [1.0, 5.0, 0.1] + [0.0, 10.0, -3.0]
    est = UGMMDensityEstimator(hidden_layer_sizes=(6,), max_iter=5, n_iter_no_change=np.inf, random_state=0).fit(X)
    save_model(est, tmp_path / "d.ugmm")
    loaded = load_model(tmp_path / "d.ugmm")
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))
    np.testing.assert_array_equal(loaded.sample(5, random_state=1), est.sample(5, random_state=1))


def test_loaded_model_can_continue_training(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=5, n_iter_no_change=np.inf, warm_start=True, random_state=0).fit(X, y)
    save_model(clf, tmp_path / "clf.ugmm")
    loaded = load_model(tmp_path / "clf.ugmm").fit(X, y)
    assert loaded.n_iter_ > clf.n_iter_


def test_tampered_file_is_refused(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=3, n_iter_no_change=np.inf, random_state=0).fit(X, y)
    path = tmp_path / "clf.ugmm"
    save_model(clf, path)
    content = torch.load(path, weights_only=True)
    content["tensors"]["module.layers.0.loc"] += 1.0
    torch.save(content, tmp_path / "weights.ugmm")
    with pytest.raises(ValueError, match="modified or corrupted"):
        load_model(tmp_path / "weights.ugmm")
    content = torch.load(path, weights_only=True)
    content["meta"] = content["meta"].replace('"max_iter": 3', '"max_iter": 4')
    torch.save(content, tmp_path / "meta.ugmm")
    with pytest.raises(ValueError, match="modified or corrupted"):
        load_model(tmp_path / "meta.ugmm")
    # the same naive edit, made on the bytes of the file
    raw = path.read_bytes()
    assert raw.count(b'"max_iter": 3') == 1
    (tmp_path / "bytes.ugmm").write_bytes(raw.replace(b'"max_iter": 3', b'"max_iter": 4'))
    with pytest.raises(ValueError, match="modified or corrupted"):
        load_model(tmp_path / "bytes.ugmm")


def test_pickle_payload_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    path = tmp_path / "evil.ugmm"
    path.write_bytes(pickle.dumps({"meta": "{}", "tensors": {}, "sha256": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="not a readable"):
        load_model(path)


def test_mismatched_file_is_refused(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=3, n_iter_no_change=np.inf, random_state=0).fit(X, y)
    path = tmp_path / "clf.ugmm"
    save_model(clf, path)
    content = torch.load(path, weights_only=True)
    # hyperparameters that disagree with the weights, with a recomputed checksum
    from sklearn_ugmm._persistence import _digest

    content["meta"] = content["meta"].replace('"hidden_layer_sizes": {"__tuple__": [6]}', '"hidden_layer_sizes": {"__tuple__": [7]}')
    content["sha256"] = _digest(content["meta"], content["tensors"])
    torch.save(content, tmp_path / "mismatch.ugmm")
    with pytest.raises(ValueError, match="do not match"):
        load_model(tmp_path / "mismatch.ugmm")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sklearn-ugmm model"):
        load_model(tmp_path / "other.pt")


def test_unsaveable_parameters_and_unfitted(iris, tmp_path):
    X, y = iris
    from sklearn.exceptions import NotFittedError
    from skorch.callbacks import Callback

    with pytest.raises(NotFittedError):
        save_model(UGMMClassifier(), tmp_path / "x.ugmm")
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=2, n_iter_no_change=np.inf, callbacks=[Callback()], random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="cannot be stored safely"):
        save_model(clf, tmp_path / "x.ugmm")


# ---------------------------------------------------------------------- hardening (issue 17)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny saved classifier (about 5 KB): its path, some inputs and its predictions."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(30, 2))
    y = (X[:, 0] > 0).astype(int)
    clf = UGMMClassifier(hidden_layer_sizes=(2,), max_iter=2, n_iter_no_change=np.inf, standardize=True, early_stopping=False, random_state=0)
    clf.fit(X, y)
    path = tmp_path_factory.mktemp("tiny") / "tiny.ugmm"
    save_model(clf, path)
    return path, X, clf.predict_proba(X)


def _resaved(source, target, edit, *, recompute_checksum=True):
    """Load the raw content of ``source``, apply ``edit``, recompute the checksum, save to ``target``."""
    from sklearn_ugmm._persistence import _digest

    content = torch.load(source, weights_only=True)
    edit(content)
    if recompute_checksum:
        content["sha256"] = _digest(content["meta"], content["tensors"])
    torch.save(content, target)
    return target


def _leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


_FULL_DISK_CHILD = """
import resource, signal, sys, warnings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write then fails with EFBIG
from sklearn_ugmm import load_model, save_model
model = load_model(sys.argv[1])
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
for target in sys.argv[3:]:
    try:
        save_model(model, target)
    except OSError as exc:
        print("OSError", int(target in str(exc)), exc.errno)
    except BaseException as exc:
        print("other", type(exc).__name__, exc)
    else:
        print("saved")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_save_on_a_full_disk_keeps_the_old_file(tiny, tmp_path):
    """A save that runs out of space raises OSError naming the path and leaves nothing behind.

    The full disk is simulated in a child process with a file-size limit
    (RLIMIT_FSIZE) smaller than the model file.
    """
    source, _, _ = tiny
    existing = tmp_path / "existing.ugmm"
    X, y = load_iris(return_X_y=True)
    save_model(UGMMClassifier(hidden_layer_sizes=(3,), max_iter=2, n_iter_no_change=np.inf, random_state=1).fit(X, y), existing)
    before = existing.read_bytes()
    new = tmp_path / "new.ugmm"
    limit = source.stat().st_size // 2
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(source), str(limit), str(existing), str(new)],
        capture_output=True, text=True, timeout=300, cwd=_ROOT, env=_child_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [f"OSError 1 {errno.EFBIG}"] * 2, result.stdout + result.stderr
    assert existing.read_bytes() == before
    assert load_model(existing).n_features_in_ == 4
    assert not new.exists()
    assert _leftovers(tmp_path, {"existing.ugmm"}) == []


def test_save_errors_are_oserrors_naming_the_path(tiny, tmp_path, monkeypatch):
    source, X, proba = tiny
    model = load_model(source)
    missing = tmp_path / "no-such-dir" / "m.ugmm"
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        save_model(model, missing)
    folder = tmp_path / "a-folder.ugmm"
    folder.mkdir()
    with pytest.raises(OSError, match="a-folder.ugmm"):
        save_model(model, folder)
    assert folder.is_dir() and not any(folder.iterdir())
    # any failure while writing (here torch itself) leaves the previous file intact
    target = tmp_path / "m.ugmm"
    save_model(model, target)
    before = target.read_bytes()

    def failing_save(obj, file):
        file.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    monkeypatch.setattr("sklearn_ugmm._persistence.torch.save", failing_save)
    with pytest.raises(OSError, match="m.ugmm"):
        save_model(model, target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    np.testing.assert_array_equal(load_model(target).predict_proba(X), proba)
    assert _leftovers(tmp_path, {"m.ugmm", "a-folder.ugmm"}) == []


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions (root ignores them)")
def test_save_into_a_read_only_directory(tiny, tmp_path):
    source, _, _ = tiny
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="locked"):
            save_model(load_model(source), locked / "m.ugmm")
    finally:
        locked.chmod(0o700)


def test_saved_file_keeps_the_permissions_it_replaces(tiny, tmp_path):
    source, _, _ = tiny
    target = tmp_path / "m.ugmm"
    target.write_bytes(b"old")
    target.chmod(0o640)
    save_model(load_model(source), target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


_MEMORY_CHILD = """
import resource, sys, warnings
warnings.simplefilter("ignore")
from sklearn_ugmm import load_model
load_model(sys.argv[1])  # warm up every lazy import and allocator pool
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[2:]:
    try:
        load_model(path)
    except ValueError as exc:
        print("ValueError", str(exc)[:200])
    else:
        print("loaded")
grow = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(grow * (1 if sys.platform == "darwin" else 1024))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage is POSIX")
def test_hostile_files_are_refused_within_bounded_memory(tiny, tmp_path):
    """Files that describe or unpack to huge tensors are refused before anything large is allocated.

    Peak RSS of a child process, measured after a warm-up load, may not grow
    by more than 32 MiB while it refuses: a 2e7-neuron network declared by
    6 KB of hyperparameters (with a recomputed checksum), a network of 1e5
    one-neuron layers declared by 300 KB, a 64 MiB zero tensor deflated to
    about 70 KB, and a consistent index for a 128 MB network in a small file
    whose zip directory claims the missing bytes.
    """
    source, _, _ = tiny

    def huge_network(content):
        content["meta"] = content["meta"].replace(
            '"hidden_layer_sizes": {"__tuple__": [2]}', '"hidden_layer_sizes": [20000000]'
        )

    wide = _resaved(source, tmp_path / "wide.ugmm", huge_network)
    assert b"20000000" in wide.read_bytes()

    def deep_network(content):
        content["meta"] = content["meta"].replace(
            '"hidden_layer_sizes": {"__tuple__": [2]}', f'"hidden_layer_sizes": {[1] * 100_000}'
        )

    deep = _resaved(source, tmp_path / "deep.ugmm", deep_network)

    # a consistent index for a 128 MB network, whose zip directory claims the bytes the file lacks
    def big_network(content):
        huge_network(content)
        content["meta"] = content["meta"].replace("20000000", "2000000")
        for key, tensor in content["tensors"].items():
            if key.startswith("module."):
                shape = [2_000_000 if n == 2 and key.startswith(f"module.layers.{i}.") else n
                         for i, n in zip((0, 1), tensor.shape)]
                content["tensors"][key] = torch.zeros(shape)

    with zipfile.ZipFile(_resaved(source, tmp_path / "big.ugmm", big_network)) as big:
        entries = [(info, big.read(info) if info.file_size < 2**20 else b"") for info in big.infolist()]
    lying = tmp_path / "lying.ugmm"
    with zipfile.ZipFile(lying, "w") as out:
        for info, data in entries:
            out.writestr(info.filename, data)
        for claimed, (info, _) in zip(out.infolist(), entries):
            claimed.file_size = claimed.compress_size = info.file_size
    (tmp_path / "big.ugmm").unlink()
    assert lying.stat().st_size < 2**20

    def huge_tensor(content):
        content["tensors"]["scaler.mean"] = torch.zeros(2**23, dtype=torch.float64)

    stored = _resaved(source, tmp_path / "stored.ugmm", huge_tensor)
    deflated = tmp_path / "deflated.ugmm"
    with zipfile.ZipFile(stored) as src, zipfile.ZipFile(deflated, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    stored.unlink()
    assert deflated.stat().st_size < 2**20

    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(source), str(wide), str(deep), str(deflated), str(lying)],
        capture_output=True, text=True, timeout=300, cwd=_ROOT, env=_child_env(),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().split("\n")
    assert lines[0].startswith("ValueError") and "do not match" in lines[0], lines
    assert lines[1].startswith("ValueError") and "do not match" in lines[1], lines
    assert lines[2].startswith("ValueError") and "compressed" in lines[2], lines
    assert lines[3].startswith("ValueError") and "more than the file" in lines[3], lines
    assert int(lines[4]) < 32 * 2**20, f"peak RSS grew by {int(lines[4]) / 2**20:.0f} MiB"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_non_regular_files_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "model.ugmm"
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        try:
            load_model(fifo)
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # unblock the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_model hung on a FIFO")
    assert isinstance(outcome[0], ValueError) and "not a regular file" in str(outcome[0])
    with pytest.raises(ValueError, match="not a regular file"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.ugmm")


def _edit_meta(**changes):
    def edit(content):
        meta = json.loads(content["meta"])
        for dotted, value in changes.items():
            *parents, leaf = dotted.split(".")
            node = meta
            for key in parents:
                node = node[key]
            node[leaf] = value
        content["meta"] = json.dumps(meta, sort_keys=True)

    return edit


def _set_tensor(key, value):
    return lambda content: content["tensors"].__setitem__(key, value)


def _requires_grad(content):
    content["tensors"]["module.layers.0.loc"].requires_grad_(True)


def _int_keys(content):
    content["tensors"] = {i: t for i, t in enumerate(content["tensors"].values())}


def _drop_fitted(name):
    def edit(content):
        meta = json.loads(content["meta"])
        del meta["fitted"][name]
        content["meta"] = json.dumps(meta, sort_keys=True)

    return edit


def _drop(key):
    return lambda content: content["tensors"].pop(key)


def _set_group_setting(key, value):
    """Set ``key`` of the saved optimiser's first parameter group."""

    def edit(content):
        meta = json.loads(content["meta"])
        meta["fitted"]["training_state"][0][key] = value
        content["meta"] = json.dumps(meta, sort_keys=True)

    return edit


_MALFORMED = {
    "requires_grad": _requires_grad,
    "unknown parameter": _edit_meta(**{"params.colour": "red"}),
    "missing parameter": lambda c: _edit_meta()(c) or c.update(meta=c["meta"].replace('"alpha": 0.0001, ', "")),
    "invalid parameter": _edit_meta(**{"params.max_iter": -3}),
    "fitted is a list": _edit_meta(fitted=[1, 2]),
    "params is a list": _edit_meta(params=[1, 2]),
    "n_features_in_ text": _edit_meta(**{"fitted.n_features_in_": "2"}),
    "classes of a weird dtype": _edit_meta(**{"fitted.classes_dtype": "V8"}),
    "one class": _edit_meta(**{"fitted.classes_": [0]}),
    "loss curve of text": _edit_meta(**{"fitted.loss_curve_": ["a"]}),
    "feature names of the wrong length": _edit_meta(**{"fitted.feature_names_in_": ["a"]}),
    "unknown format": _edit_meta(format="sklearn-ugmm/0"),
    "unknown estimator": _edit_meta(estimator="os.system"),
    "int tensor keys": _int_keys,
    "scaling array of the wrong shape": _set_tensor("scaler.mean", torch.zeros(1, dtype=torch.float64)),
    "scaling array of the wrong dtype": _set_tensor("scaler.scale", torch.ones(2, dtype=torch.float32)),
    "scaling array of another scaler": _set_tensor("scaler.power_lambdas", torch.ones(2, dtype=torch.float64)),
    "scaling by zero": _set_tensor("scaler.scale", torch.tensor([1.0, 0.0], dtype=torch.float64)),
    "scaling centre of NaN": _set_tensor("scaler.mean", torch.tensor([float("nan"), 0.0], dtype=torch.float64)),
    "optimiser state of the wrong shape": _set_tensor("training.optimizer.0.exp_avg", torch.zeros(3, 3)),
    "optimiser state of a parameter that does not exist": _set_tensor("training.optimizer.99.step", torch.zeros(())),
    "generator state of the wrong size": _set_tensor("training.generator", torch.zeros(7, dtype=torch.uint8)),
    "missing generator state": _drop("training.generator"),
    "resolved parameters missing": _drop_fitted("resolved_params_"),
    "optimiser settings missing": _drop_fitted("training_state"),
    "resolved batch size of text": _edit_meta(**{"fitted.resolved_params_.batch_size": "8"}),
    "resolved standardize of a number": _edit_meta(**{"fitted.resolved_params_.standardize": 1}),
    "optimiser settings of text": _edit_meta(**{"fitted.training_state": "adam"}),
    "optimiser settings with another group": _edit_meta(**{"fitted.training_state": [{"params": [0]}]}),
    "scheduler's initial rate of text": _set_group_setting("initial_lr", "0.01"),
    "scheduler's initial rate of infinity": _set_group_setting("initial_lr", float("inf")),
    "unknown optimiser setting": _set_group_setting("momentum", 0.9),
    "weights of the wrong dtype": _set_tensor("module.layers.1.logits", torch.zeros(2, 2, dtype=torch.float64)),
    "extra tensor": _set_tensor("module.extra", torch.zeros(1)),
    "missing tensor": _drop("module.layers.0.logits"),
    "shared storage": lambda c: c["tensors"].__setitem__("module.layers.0.logits", c["tensors"]["module.layers.0.loc"]),
    "strided view": _set_tensor("module.layers.0.loc", torch.zeros(4, 2)[::2]),
    "tensor as metadata": lambda c: c.__setitem__("meta", torch.zeros(1)),
    "tensor table as a list": lambda c: c.__setitem__("tensors", list(c["tensors"].values())),
}


@pytest.mark.parametrize("edit", list(_MALFORMED), ids=list(_MALFORMED))
def test_malformed_files_raise_value_error(tiny, tmp_path, edit):
    """Files with a recomputed checksum that are not what save_model writes: always ValueError."""
    source, _, _ = tiny
    path = tmp_path / "bad.ugmm"
    try:
        _resaved(source, path, _MALFORMED[edit])
    except (AttributeError, TypeError, RuntimeError):  # no checksum over int keys or a list
        _resaved(source, path, _MALFORMED[edit], recompute_checksum=False)
    with pytest.raises(ValueError):
        load_model(path)


def test_foreign_archives_raise_value_error(tmp_path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    torch.save({"meta": "{}", "tensors": {}, "sha256": "0" * 64}, tmp_path / "empty.ugmm")
    (tmp_path / "text.ugmm").write_text("hello")
    (tmp_path / "empty-file.ugmm").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as archive:
        archive.writestr("a/data.pkl", pickle.dumps({"meta": "{}", "tensors": {}, "sha256": ""}))
    for name in ("linear.pt", "empty.ugmm", "text.ugmm", "empty-file.ugmm", "plain.zip"):
        with pytest.raises(ValueError):
            load_model(tmp_path / name)


def _with_index(source, path, index):
    """``source`` with its pickled index (``<prefix>/data.pkl``) replaced by ``index``."""
    with zipfile.ZipFile(source) as archive_in, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive_out:
        for info in archive_in.infolist():
            data = index if info.filename.endswith("/data.pkl") else archive_in.read(info.filename)
            archive_out.writestr(info.filename, data)
    return path


def test_index_that_would_hash_for_ever_is_refused_at_once(tiny, tmp_path):
    # t = (t, t) nested 64 deep through the memo: 2**64 hash operations as a dictionary key,
    # from 600 bytes; a set hashes its items the same way
    source, _, _ = tiny
    nested = b")q\x000" + b"0".join([b"h\x00h\x00\x86q\x00"] * 64)
    indexes = {
        "key": b"\x80\x02}" + nested + b"Ns.",
        "keys": b"\x80\x02}(" + nested + b"Nu.",
        "dict": b"\x80\x02(" + nested + b"Nd.",
        "set": b"\x80\x04\x8f(" + nested + b"\x90.",
        "frozenset": b"\x80\x04(" + nested + b"\x91.",
    }
    for name, index in indexes.items():
        path = _with_index(source, tmp_path / f"{name}.ugmm", index)
        with pytest.raises(ValueError, match="keys of a model file.s index are strings or integers|no sets"):
            load_model(path)


def _zip_regions(raw):
    """Byte offsets in a zip file of each entry's payload (by name) and of the end record."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        payloads = {}
        for info in archive.infolist():
            name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
            start = info.header_offset + 30 + name_length + extra_length
            payloads[info.filename.split("/", 1)[1]] = range(start, start + info.compress_size)
    end_record = range(raw.rindex(b"PK\x05\x06"), len(raw))
    return payloads, end_record


def test_fuzz_every_byte_and_truncation(tiny, tmp_path):
    """Every truncation and single-byte change of a small model: ValueError or identical predictions.

    The file is cut at every length, and every byte the reader interprets --
    the pickled index (hyperparameters, tensor table, checksum), every
    tensor's data and the zip end record -- is inverted in turn, and has its
    lowest bit flipped (False becomes True in a pickle, for instance). Of the rest
    of the zip structure (local headers, alignment padding, central
    directory, torch's small records), most of which the reader does not
    interpret, so that changing it usually loads the same model at the cost
    of a full load, every 7th byte is inverted, to keep the test at a few
    seconds.
    """
    source, X, proba = tiny
    raw = source.read_bytes()
    payloads, end_record = _zip_regions(raw)
    interpreted = set(end_record).union(
        *(r for name, r in payloads.items() if name == "data.pkl" or name.startswith("data/"))
    )
    offsets = sorted(interpreted | set(range(0, len(raw), 7)))
    path = tmp_path / "fuzzed.ugmm"
    path.write_bytes(b"")
    outcomes = {"refused": 0, "identical": 0}
    fd = os.open(path, os.O_WRONLY)

    def check(data, what):
        # rewritten in place and then cut: emptying a file first can cost more than loading it
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        try:
            loaded = load_model(path)
        except ValueError:
            outcomes["refused"] += 1
            return
        np.testing.assert_array_equal(loaded.predict_proba(X), proba, err_msg=what)
        outcomes["identical"] += 1

    try:
        for i in offsets:
            changed = bytearray(raw)
            changed[i] ^= 0xFF
            check(bytes(changed), f"byte {i} inverted")
        for i in sorted(interpreted):
            changed = bytearray(raw)
            changed[i] ^= 0x01
            check(bytes(changed), f"lowest bit of byte {i} flipped")
        for n in range(len(raw)):
            check(raw[:n], f"cut at {n}")
    finally:
        os.close(fd)
    assert outcomes["refused"] > len(raw)  # every truncation, and most changes


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_cosine_fitted_model_round_trips_and_trains_on_at_its_initial_rate(tmp_path):
    """The scheduler's initial_lr in the saved optimiser is accepted; partial_fit restarts the rate."""
    X, y = load_iris(return_X_y=True)
    clf = UGMMClassifier(learning_rate="cosine", early_stopping=False, max_iter=3, random_state=0).fit(X, y)
    assert clf.net_.optimizer_.param_groups[0]["initial_lr"] == 3e-2
    save_model(clf, tmp_path / "model.ugmm")
    loaded = load_model(tmp_path / "model.ugmm")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    before = [p.detach().clone() for p in loaded.module_.parameters()]
    loaded.partial_fit(X, y)
    assert loaded.net_.optimizer_.param_groups[0]["lr"] == 3e-2
    assert any(not torch.equal(a, b) for a, b in zip(before, loaded.module_.parameters()))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("Estimator", [UGMMClassifier, UGMMDensityEstimator])
def test_torch_default_dtype_changes_neither_fits_nor_files(iris, tmp_path, Estimator):
    X, y = iris
    scores = "predict_proba" if Estimator is UGMMClassifier else "score_samples"
    reference = Estimator(max_iter=3, random_state=0).fit(X, y)
    save_model(reference, tmp_path / "float32.ugmm")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        # the estimators train in float32 whatever the default, and read files written under another one
        fitted = Estimator(max_iter=3, random_state=0).fit(X, y)
        assert {p.dtype for p in fitted.module_.parameters()} == {torch.float32}
        np.testing.assert_array_equal(getattr(fitted, scores)(X), getattr(reference, scores)(X))
        loaded = load_model(tmp_path / "float32.ugmm")
        np.testing.assert_array_equal(getattr(loaded, scores)(X), getattr(reference, scores)(X))
        save_model(fitted, tmp_path / "float64-default.ugmm")
    finally:
        torch.set_default_dtype(previous)
    loaded = load_model(tmp_path / "float64-default.ugmm")
    np.testing.assert_array_equal(getattr(loaded, scores)(X), getattr(reference, scores)(X))


def test_load_model_device(tiny):
    source, X, proba = tiny
    np.testing.assert_array_equal(load_model(source, device="cpu").predict_proba(X), proba)
    np.testing.assert_array_equal(load_model(source, device="auto").predict_proba(X), proba)
    for typo, match in (("bogus", "not a valid device"), ("cuda:-1", "not a valid device"), ("meta", "not supported")):
        with pytest.raises(ValueError, match=match):
            load_model(source, device=typo)
    if not torch.cuda.is_available():
        # a device this machine lacks: the CPU, with a warning
        with pytest.warns(UserWarning, match="Loading the model on the CPU instead"):
            loaded = load_model(source, device="cuda")
        np.testing.assert_array_equal(loaded.predict_proba(X), proba)
