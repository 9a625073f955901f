"""The uGMM-NN in plain PyTorch: usable without the scikit-learn estimators."""

from ._functional import DEFAULT_BLOCK_ELEMENTS, ugmm_log_density, ugmm_log_density_reference, ugmm_observed_parts
from ._autoregressive import AutoregressiveUGMM, MaskedUGMMLayer
from ._layer import UGMMLayer
from ._net import UGMMNet
from ._product import UGMMProductLayer, product_log_density

__all__ = [
    "AutoregressiveUGMM",
    "DEFAULT_BLOCK_ELEMENTS",
    "MaskedUGMMLayer",
    "UGMMLayer",
    "UGMMNet",
    "UGMMProductLayer",
    "product_log_density",
    "ugmm_log_density",
    "ugmm_log_density_reference",
    "ugmm_observed_parts",
]
