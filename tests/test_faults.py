"""Faults: a fit whose process is killed resumes from a skorch checkpoint."""

import subprocess
import sys
import textwrap

import numpy as np
from sklearn.datasets import load_iris
from skorch.callbacks import Checkpoint, LoadInitState

from sklearn_ugmm import UGMMClassifier

PARAMS = dict(hidden_layer_sizes=(8,), max_iter=40, n_iter_no_change=np.inf, early_stopping=False, random_state=0)

CHILD = textwrap.dedent(
    """
    import sys, time
    from numpy import inf
    from sklearn.datasets import load_iris
    from skorch.callbacks import Callback, Checkpoint
    from sklearn_ugmm import UGMMClassifier

    class Slow(Callback):
        def on_epoch_end(self, net, **kwargs):
            print("epoch", len(net.history), flush=True)
            time.sleep(0.3)

    X, y = load_iris(return_X_y=True)
    checkpoint = Checkpoint(monitor=None, dirname=sys.argv[1])
    UGMMClassifier(callbacks=[checkpoint, Slow()], **{params}).fit(X, y)
    print("finished", flush=True)
    """
)


def test_killed_fit_resumes_from_checkpoint(tmp_path):
    X, y = load_iris(return_X_y=True)
    code = CHILD.replace("{params}", repr(PARAMS))
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        for line in child.stdout:
            if line.startswith("epoch") and int(line.split()[1]) >= 5:
                child.kill()  # SIGKILL: no clean-up runs in the child
                break
    finally:
        child.wait(timeout=60)
    assert child.returncode != 0
    assert (tmp_path / "params.pt").exists()

    checkpoint = Checkpoint(monitor=None, dirname=str(tmp_path))
    resumed = UGMMClassifier(callbacks=[checkpoint, LoadInitState(checkpoint)], **PARAMS).fit(X, y)
    reference = UGMMClassifier(**PARAMS).fit(X, y)
    # the resumed history starts with the epochs the killed process completed
    assert resumed.n_iter_ > PARAMS["max_iter"]
    assert resumed.score(X, y) >= reference.score(X, y) - 0.02
    assert np.all(np.isfinite(resumed.predict_proba(X)))
