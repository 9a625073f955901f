"""The estimators' input scaling: a weighted Yeo-Johnson power transform and standardisation.

:class:`FeatureScaler` is the fitted object the estimators hold (``scaler_``);
the functions below are its parts.

The Yeo-Johnson transform makes skewed, heavy-tailed features look Gaussian.

Each uGMM component models one input with a Gaussian; a feature whose
values pile up near zero with a long tail (counts, areas, amounts) wastes
components on the tail and squeezes the bulk. The transform below is
scikit-learn's ``PowerTransformer(method="yeo-johnson")`` with four
changes: it accepts sample weights; it is shift- and scale-invariant
(features are first centred on their weighted median and divided by
their standard deviation); beyond the range of the training data it
continues linearly, so that an outlier at prediction time cannot overflow;
and on large data the powers are fitted on an evenly spaced sample of
``MAX_LAMBDA_ROWS`` rows.
"""

import numpy as np
from scipy.optimize import minimize_scalar

from .nn._net import evenly_spaced_rows

__all__ = [
    "FeatureScaler",
    "fit_yeo_johnson",
    "transform_yeo_johnson",
    "unit_columns",
    "weighted_mean_and_scale",
    "yeo_johnson",
]

#: Search interval of the power parameter (scipy's yeojohnson_normmax
#: searches an unbounded interval and then guards against overflow).
LAMBDA_BOUNDS = (-3.0, 3.0)
#: Rows used to estimate the powers: an evenly spaced (systematic) sample of
#: the rows of positive weight beyond this many; the centring, spread and
#: range always use every row.
MAX_LAMBDA_ROWS = 10_000


def yeo_johnson(z, lambdas):
    """The Yeo-Johnson transform of each column of ``z`` with its ``lambdas`` entry.

    ``((z + 1) ** lam - 1) / lam`` for ``z >= 0`` (``log1p(z)`` when
    ``lam == 0``) and ``-((1 - z) ** (2 - lam) - 1) / (2 - lam)`` for
    ``z < 0`` (``-log1p(-z)`` when ``lam == 2``); ``lam == 1`` is the identity.
    """
    z = np.asarray(z, dtype=np.float64)
    lambdas = np.asarray(lambdas, dtype=np.float64)
    # both branches are sign(z) * g(log1p(|z|)) with power lam (z >= 0) or 2 - lam (z < 0)
    positive = z >= 0
    power = np.where(positive, lambdas, 2.0 - lambdas)
    log_magnitude = np.log1p(np.abs(z))
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.where(power == 0, log_magnitude, np.expm1(power * log_magnitude) / power)
    return np.where(positive, magnitude, -magnitude)


def _slope(z, lambdas):
    """Derivative of :func:`yeo_johnson` with respect to ``z``."""
    z = np.asarray(z, dtype=np.float64)
    return np.where(z >= 0, (1.0 + np.abs(z)) ** (lambdas - 1.0), (1.0 + np.abs(z)) ** (1.0 - lambdas))


def _neg_log_likelihood(lam, z, w, log_term):
    """Weighted negative Gaussian log-likelihood of the transformed ``z``, per unit weight."""
    psi = yeo_johnson(z, lam)
    mean = w @ psi
    var = w @ (psi - mean) ** 2
    if not np.isfinite(var) or var <= 0:
        return np.inf
    return 0.5 * np.log(var) - (lam - 1.0) * log_term


def unit_columns(X):
    """``X`` divided by each column's largest magnitude (1 for all-zero columns), and the divisors.

    Moments of the result cannot overflow, even for values near 1e308.
    """
    magnitude = np.max(np.abs(X), axis=0)
    magnitude[magnitude == 0] = 1.0
    return X / magnitude, magnitude


def weighted_mean_and_scale(X, w):
    """Weighted mean and standard deviation of each column; a scale of 1 for constant columns.

    ``w`` sums to one. The moments are computed on :func:`unit_columns`, so
    they cannot overflow. A column counts as constant when its standard
    deviation is within the rounding error of summing its values -- ``n``
    times the float64 epsilon of its largest magnitude, with ``n = 1 /
    sum(w ** 2)`` the effective number of samples, so that rows of
    negligible weight make no spread -- a test relative to the column's
    own magnitude, like StandardScaler's: the result is equivariant to
    units, however small or large.
    """
    unit, magnitude = unit_columns(X)
    mean = w @ unit
    std = np.sqrt(w @ (unit - mean) ** 2)
    constant = std <= np.finfo(np.float64).eps / np.sum(w**2)
    return mean * magnitude, np.where(constant, 1.0, std * magnitude)


def _weighted_median(X, w):
    """Per-column weighted (lower) median: the smallest value whose cumulative weight reaches half."""
    order = np.argsort(X, axis=0, kind="stable")
    cumulative = np.cumsum(w[order], axis=0)
    columns = np.arange(X.shape[1])
    return X[order[np.argmax(cumulative >= 0.5 * cumulative[-1], axis=0), columns], columns]


def _center_and_spread(X, w):
    """Weighted median and standard deviation of each column (1 for constant columns)."""
    median = _weighted_median(X, w)
    std = np.sqrt(w @ (X - w @ X) ** 2)
    return median, np.where(std > 1e-12 * np.maximum(1.0, np.abs(median)), std, 1.0)


def fit_yeo_johnson(X, sample_weight):
    """Fit the weighted, shift- and scale-invariant Yeo-Johnson transform.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Finite training data.
    sample_weight : ndarray of shape (n_samples,)
        Non-negative weights with a positive sum; rows of weight zero are
        ignored.

    Returns
    -------
    params : dict of ndarray of shape (n_features,)
        ``shift`` and ``scale`` (the weighted median and standard deviation
        that standardise each feature before the transform), ``lambdas`` (the
        maximum-likelihood power of each feature, 1 for constant features)
        and ``low`` and ``high`` (the range of the standardised training
        data, beyond which the transform continues linearly).
    """
    seen = sample_weight > 0
    X = np.asarray(X, dtype=np.float64)[seen]
    w = sample_weight[seen] / sample_weight[seen].sum()
    unit, magnitude = unit_columns(X)
    shift, scale = _center_and_spread(unit, w)
    Z = (unit - shift) / scale
    rows = evenly_spaced_rows(len(Z), MAX_LAMBDA_ROWS)
    w_rows = w[rows] / w[rows].sum()
    lambdas = np.ones(X.shape[1])
    for j, z in enumerate(Z[rows].T):
        if np.ptp(z) == 0:
            continue
        log_term = w_rows @ (np.sign(z) * np.log1p(np.abs(z)))
        result = minimize_scalar(
            _neg_log_likelihood, bounds=LAMBDA_BOUNDS, args=(z, w_rows, log_term), method="bounded",
            options={"xatol": 1e-5},
        )
        lambdas[j] = result.x
    return {
        "shift": shift * magnitude,
        "scale": scale * magnitude,
        "lambdas": lambdas,
        "low": Z.min(axis=0),
        "high": Z.max(axis=0),
    }


def transform_yeo_johnson(X, params):
    """Apply a transform fitted by :func:`fit_yeo_johnson` (linear beyond the training range).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Data to transform.
    params : dict
        Output of :func:`fit_yeo_johnson`.

    Returns
    -------
    X_new : ndarray of shape (n_samples, n_features)
        Transformed data, float64.
    """
    lambdas, low, high = params["lambdas"], params["low"], params["high"]
    Z = (np.asarray(X, dtype=np.float64) - params["shift"]) / params["scale"]
    inside = np.clip(Z, low, high)
    out = yeo_johnson(inside, lambdas)
    below, above = Z < low, Z > high
    if below.any() or above.any():
        out = out + np.where(below, (Z - low) * _slope(low, lambdas), 0.0)
        out = out + np.where(above, (Z - high) * _slope(high, lambdas), 0.0)
    return out


#: Keys of :func:`fit_yeo_johnson`'s output, as :meth:`FeatureScaler.to_arrays` names them.
_POWER_KEYS = ("shift", "scale", "lambdas", "low", "high")


class FeatureScaler:
    """Weighted feature scaling fitted once per fit: optional Yeo-Johnson, then standardisation.

    Parameters
    ----------
    method : bool or "yeo-johnson", default=True
        True: standardise each feature by its weighted mean and standard
        deviation (constant features are only centred). "yeo-johnson": first
        the weighted power transform of :func:`fit_yeo_johnson`, then
        standardise. False: the identity.

    Attributes
    ----------
    mean_, scale_ : ndarray of shape (n_features,)
        The standardisation (of the power-transformed features when the
        transform is used); zeros and ones for ``method=False``.
    power_params_ : dict of ndarray or None
        The fitted power transform (:func:`fit_yeo_johnson`'s output), or
        None without it.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ugmm._preprocessing import FeatureScaler
    >>> X = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0]])
    >>> scaler = FeatureScaler().fit(X)
    >>> scaler.transform(X).mean(axis=0).round(12)
    array([0., 0.])
    >>> sorted(scaler.to_arrays())
    ['mean', 'scale']
    """

    def __init__(self, method=True):
        self.method = method

    def fit(self, X, sample_weight=None):
        """Fit the scaling to the rows of ``X`` of positive weight.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
            Finite training data.
        sample_weight : ndarray of shape (n_samples,), default=None
            Non-negative weights with a positive sum; equal weights when None.

        Returns
        -------
        self : FeatureScaler
            The fitted scaler.
        """
        X = np.asarray(X, dtype=np.float64)
        if sample_weight is None:
            sample_weight = np.ones(len(X))
        self.power_params_ = None
        if self.method == "yeo-johnson":
            self.power_params_ = fit_yeo_johnson(X, sample_weight)
            X = transform_yeo_johnson(X, self.power_params_)
        if not self.method:
            self.mean_ = np.zeros(X.shape[1])
            self.scale_ = np.ones(X.shape[1])
            return self
        # constant features are only centred, as StandardScaler does
        self.mean_, self.scale_ = weighted_mean_and_scale(X, sample_weight / sample_weight.sum())
        return self

    def transform(self, X):
        """Scale ``X`` as the network sees it (power transform first, when fitted so).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data to scale.

        Returns
        -------
        X_scaled : ndarray of shape (n_samples, n_features)
            The scaled data, float64.
        """
        X = np.asarray(X, dtype=np.float64)
        if self.power_params_ is not None:
            X = transform_yeo_johnson(X, self.power_params_)
        return (X - self.mean_) / self.scale_

    def to_arrays(self):
        """The fitted state as named float64 arrays (for persistence).

        Returns
        -------
        arrays : dict of str to ndarray of shape (n_features,)
            "mean" and "scale", and with the power transform also
            "power_shift", "power_scale", "power_lambdas", "power_low" and
            "power_high". :meth:`from_arrays` restores the scaler from them.
        """
        arrays = {"mean": self.mean_, "scale": self.scale_}
        if self.power_params_ is not None:
            arrays.update({f"power_{key}": self.power_params_[key] for key in _POWER_KEYS})
        return {name: np.asarray(value, dtype=np.float64) for name, value in arrays.items()}

    @staticmethod
    def array_names(method=True):
        """The names :meth:`to_arrays` gives a scaler fitted with ``method``.

        Parameters
        ----------
        method : bool or "yeo-johnson", default=True
            The scaler's ``method``.

        Returns
        -------
        names : list of str
            Each array has one float64 value per feature.
        """
        power = [f"power_{key}" for key in _POWER_KEYS] if method == "yeo-johnson" else []
        return ["mean", "scale", *power]

    @classmethod
    def from_arrays(cls, arrays, method=True):
        """A fitted scaler from the output of :meth:`to_arrays`.

        Parameters
        ----------
        arrays : dict of str to array-like of shape (n_features,)
            As returned by :meth:`to_arrays`.
        method : bool or "yeo-johnson", default=True
            The ``method`` the scaler was fitted with.

        Returns
        -------
        scaler : FeatureScaler
            A fitted scaler that transforms as the saved one did.

        Raises
        ------
        ValueError
            If arrays are missing, unexpected or of different lengths.
        """
        expected = set(cls.array_names(method))
        if set(arrays) != expected:
            raise ValueError(f"FeatureScaler arrays must be {sorted(expected)}, got {sorted(arrays)}.")
        values = {name: np.asarray(value, dtype=np.float64) for name, value in arrays.items()}
        shapes = {value.shape for value in values.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"FeatureScaler arrays must be 1-d and of one length, got shapes {sorted(shapes)}.")
        scaler = cls(method)
        scaler.mean_, scaler.scale_ = values["mean"], values["scale"]
        scaler.power_params_ = None
        if method == "yeo-johnson":
            scaler.power_params_ = {key: values[f"power_{key}"] for key in _POWER_KEYS}
        return scaler

    def __repr__(self):
        return f"FeatureScaler(method={self.method!r})"
