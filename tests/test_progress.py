"""``verbose=1``: the progress display, in a terminal and in logs."""

import io
import re
import sys

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator
from sklearn_ugmm._progress import EpochProgress, format_duration


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _fit_verbose(monkeypatch, stream, make=UGMMClassifier, **params):
    monkeypatch.setattr(sys, "stdout", stream)
    X, y = load_iris(return_X_y=True)
    est = make(hidden_layer_sizes=(4,), random_state=0, verbose=1, **params)
    est.fit(X, y) if make is UGMMClassifier else est.fit(X)
    resolved, _, progress = stream.getvalue().partition("\n")  # verbose first prints the resolved parameters
    assert resolved.startswith(f"{make.__name__}: ")
    return est, progress


def test_log_output_is_plain_lines_with_progress_and_a_summary(monkeypatch):
    clf, out = _fit_verbose(monkeypatch, io.StringIO(), max_iter=200, n_iter_no_change=5, tol=1e-2)
    lines = out.splitlines()
    assert "\x1b" not in out and "\r" not in out  # no escape codes, no carriage returns
    # short fit: the first and the last epoch (at most one line per 10 s in between)
    assert lines[0].startswith("epoch 1/200 ") and lines[-2].startswith(f"epoch {clf.n_iter_}/200 ")
    for line in lines[:-1]:
        assert re.search(r"/epoch  at most .+ left", line)
        assert "valid loss" in line and "(best " in line and "valid accuracy" in line
    assert "valid_log_loss" not in out  # one validation loss, not two identical columns
    # the best epoch is the one early stopping keeps: the lowest validation loss
    valid_loss = clf.net_.history[:, "valid_loss"]
    best = int(np.argmin(valid_loss)) + 1
    assert f"(best {valid_loss[best - 1]:.4f} at epoch {best})" in lines[-2]
    assert lines[-1].startswith(f"trained {clf.n_iter_} epoch(s) in ")
    assert "stopped: valid_loss did not improve" in lines[-1] and f"kept epoch {best}" in lines[-1]


def test_terminal_output_is_one_updating_line(monkeypatch):
    with pytest.warns(ConvergenceWarning, match="raise max_iter"):
        clf, out = _fit_verbose(monkeypatch, Terminal(), max_iter=6, early_stopping=False)
    assert "\x1b" not in out
    progress, summary = out.rstrip("\n").split("\n")
    updates = progress.split("\r")[1:]
    assert [u.split()[1] for u in updates] == [f"{i}/6" for i in range(1, 7)]
    assert "train loss" in updates[-1] and "(best " in updates[-1]  # the monitor without validation
    assert summary.startswith("trained 6 epoch(s)") and summary.endswith("reached max_iter")


def test_density_progress_shows_its_validation_loss_once(monkeypatch):
    _, out = _fit_verbose(monkeypatch, io.StringIO(), make=UGMMDensityEstimator, n_iter_no_change=2)
    assert "valid loss" in out and "valid accuracy" not in out and "valid score" not in out


def test_partial_fit_reports_its_one_epoch(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    X, y = load_iris(return_X_y=True)
    clf = UGMMClassifier(hidden_layer_sizes=(4,), max_iter=50, random_state=0, verbose=1)
    for _ in range(3):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    lines = [line for line in stream.getvalue().splitlines() if not line.startswith("UGMMClassifier: ")]
    assert [line.split()[:2] for line in lines[::2]] == [["epoch", "1/1"]] * 3
    assert all(line.startswith("trained 1 epoch(s) in ") and "max_iter" not in line for line in lines[1::2])


def test_quiet_by_default(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    X, y = load_iris(return_X_y=True)
    UGMMClassifier(hidden_layer_sizes=(4,), max_iter=5, n_iter_no_change=1, tol=10.0, random_state=0).fit(X, y)
    assert stream.getvalue() == ""


def test_interval_zero_prints_every_epoch_to_its_own_stream():
    stream = io.StringIO()
    X, y = load_iris(return_X_y=True)
    progress = EpochProgress(stream=stream, interval=0)
    clf = UGMMClassifier(hidden_layer_sizes=(4,), max_iter=4, early_stopping=False, random_state=0, callbacks=[progress])
    with pytest.warns(ConvergenceWarning, match="training loss has not improved by tol=0.0001 for n_iter_no_change=10"):
        clf.fit(X, y)
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["1/4", "2/4", "3/4", "4/4"]


@pytest.mark.parametrize(
    "seconds, text", [(0.0042, "0.0042 s"), (3.14159, "3.1 s"), (59.4, "59 s"), (61, "1 min 01 s"), (7200, "2 h 00 min")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
