"""Shared loaders for the benchmark scripts.

The tabular sets and MNIST live in ``../shared/data`` relative to the
repository (read-only copies; see its README). Nothing here is part of the
package: real users pass their own paths.
"""

from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_DATA_DIR", "SKLEARN_SETS", "TABULAR_SETS", "ALL_SETS", "load_dataset", "load_mnist"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"

SKLEARN_SETS = ("iris", "wine", "breast_cancer", "digits")
TABULAR_SETS = ("magic", "phoneme", "spambase", "segment", "satimage", "page-blocks0", "contraceptive")
ALL_SETS = SKLEARN_SETS + TABULAR_SETS


def load_dataset(name, data_dir=None):
    """Return ``(X, y)`` for a scikit-learn toy set or a tabular ``.npz`` set.

    Raises ``FileNotFoundError`` for a tabular set missing from ``data_dir``
    (default ``DEFAULT_DATA_DIR / "tabular"``) and ``ValueError`` for a set
    without labels.
    """
    if name in SKLEARN_SETS:
        from sklearn import datasets

        return getattr(datasets, f"load_{name}")(return_X_y=True)
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR / "tabular"
    path = data_dir / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    with np.load(path, allow_pickle=False) as data:
        if "y" not in data:
            raise ValueError(f"{path} has no labels (y)")
        return np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"])


def load_mnist(path=None):
    """Return ``X_train, y_train, X_test, y_test`` with pixels scaled to [0, 1] (float32)."""
    path = Path(path) if path is not None else DEFAULT_DATA_DIR / "mnist.npz"
    with np.load(path, allow_pickle=False) as data:
        X_train = data["X_train"].reshape(len(data["X_train"]), -1).astype(np.float32) / 255.0
        X_test = data["X_test"].reshape(len(data["X_test"]), -1).astype(np.float32) / 255.0
        return X_train, np.asarray(data["y_train"]), X_test, np.asarray(data["y_test"])
