"""sklearn-ugmm: scikit-learn estimators over the uGMM-NN (arXiv 2509.07569)."""

__version__ = "0.1.0"

from ._classifier import UGMMClassifier  # noqa: E402

__all__ = ["UGMMClassifier", "__version__"]
