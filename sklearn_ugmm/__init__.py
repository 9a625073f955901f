"""sklearn-ugmm: scikit-learn estimators over the uGMM-NN (arXiv 2509.07569)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
