"""sklearn-ugmm: scikit-learn estimators over the uGMM-NN (arXiv 2509.07569)."""

__version__ = "0.1.0"

from ._classifier import UGMMClassifier  # noqa: E402
from ._density import UGMMDensityEstimator  # noqa: E402
from ._persistence import load_model, save_model  # noqa: E402

__all__ = ["UGMMClassifier", "UGMMDensityEstimator", "load_model", "save_model", "__version__"]
