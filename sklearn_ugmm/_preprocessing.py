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
    "CategoricalEncoder",
    "FeatureScaler",
    "categorical_mask",
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
    encoder : CategoricalEncoder, default=None
        A fitted encoder of the categorical columns, applied first: the
        scaling is then fitted on (and applies to) its output, one column per
        numeric feature and per category.

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

    def __init__(self, method=True, encoder=None):
        self.method = method
        self.encoder = encoder

    def fit(self, X, sample_weight=None):
        """Fit the scaling to the rows of ``X`` of positive weight.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
            Training data: finite, or NaN for a missing value (each
            feature is then fitted on its observed values).
        sample_weight : ndarray of shape (n_samples,), default=None
            Non-negative weights with a positive sum; equal weights when None.

        Returns
        -------
        self : FeatureScaler
            The fitted scaler.
        """
        X = self._encoded(X)
        if sample_weight is None:
            sample_weight = np.ones(len(X))
        if np.isnan(X).any():
            return self._fit_ignoring_nan(X, sample_weight)
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

    def _fit_ignoring_nan(self, X, sample_weight):
        """Fit each feature on its observed (non-NaN) rows of positive weight; NaN means missing."""
        observed = ~np.isnan(X) & (sample_weight > 0)[:, None]
        empty = np.flatnonzero(~observed.any(axis=0))
        if len(empty):
            raise ValueError(
                f"Feature(s) {empty.tolist()} have no observed (non-NaN) value of positive weight; "
                "the scaling cannot be fitted."
            )
        columns = [FeatureScaler(self.method).fit(X[rows, j : j + 1], sample_weight[rows])
                   for j, rows in enumerate(observed.T)]
        self.mean_ = np.concatenate([column.mean_ for column in columns])
        self.scale_ = np.concatenate([column.scale_ for column in columns])
        self.power_params_ = None
        if self.method == "yeo-johnson":
            self.power_params_ = {
                key: np.concatenate([column.power_params_[key] for column in columns]) for key in _POWER_KEYS
            }
        return self

    def transform(self, X):
        """Scale ``X`` as the network sees it (power transform first, when fitted so).

        NaN (a missing value) stays NaN.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data to scale.

        Returns
        -------
        X_scaled : ndarray of shape (n_samples, n_features)
            The scaled data, float64.
        """
        X = self._encoded(X)
        if self.power_params_ is not None:
            X = transform_yeo_johnson(X, self.power_params_)
        return (X - self.mean_) / self.scale_

    def _encoded(self, X):
        """``X`` as float64, its categorical columns encoded when there is an encoder."""
        return np.asarray(X, dtype=np.float64) if self.encoder is None else self.encoder.transform(X)

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
    def from_arrays(cls, arrays, method=True, encoder=None):
        """A fitted scaler from the output of :meth:`to_arrays`.

        Parameters
        ----------
        arrays : dict of str to array-like of shape (n_features,)
            As returned by :meth:`to_arrays`.
        method : bool or "yeo-johnson", default=True
            The ``method`` the scaler was fitted with.
        encoder : CategoricalEncoder, default=None
            The fitted encoder the scaler was fitted with.

        Returns
        -------
        scaler : FeatureScaler
            A fitted scaler that transforms as the saved one did.

        Raises
        ------
        ValueError
            If arrays are missing, unexpected or of different lengths, or
            hold values no fit gives (non-finite, a scale that is not
            positive, a power outside the fitted range).
        """
        expected = set(cls.array_names(method))
        if set(arrays) != expected:
            raise ValueError(f"FeatureScaler arrays must be {sorted(expected)}, got {sorted(arrays)}.")
        values = {name: np.asarray(value, dtype=np.float64) for name, value in arrays.items()}
        shapes = {value.shape for value in values.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"FeatureScaler arrays must be 1-d and of one length, got shapes {sorted(shapes)}.")
        if not all(np.isfinite(value).all() for value in values.values()):
            raise ValueError("FeatureScaler arrays must be finite.")
        for name in ("scale", "power_scale"):
            if name in values and not (values[name] > 0).all():
                raise ValueError(f"FeatureScaler {name} must be positive.")
        if method == "yeo-johnson":
            lambdas = values["power_lambdas"]
            if not ((LAMBDA_BOUNDS[0] <= lambdas) & (lambdas <= LAMBDA_BOUNDS[1])).all():
                raise ValueError(f"FeatureScaler power_lambdas must lie in {LAMBDA_BOUNDS}.")
            if not (values["power_low"] <= values["power_high"]).all():
                raise ValueError("FeatureScaler power_low must not exceed power_high.")
        scaler = cls(method, encoder)
        scaler.mean_, scaler.scale_ = values["mean"], values["scale"]
        scaler.power_params_ = None
        if method == "yeo-johnson":
            scaler.power_params_ = {key: values[f"power_{key}"] for key in _POWER_KEYS}
        return scaler

    def __repr__(self):
        encoder = "" if self.encoder is None else f", encoder={self.encoder!r}"
        return f"FeatureScaler(method={self.method!r}{encoder})"


# ---------------------------------------------------------------------- categorical columns
#: Most categories a column may have to be encoded natively (one network input each).
MAX_CATEGORIES = 255


def categorical_columns_from_dtype(X):
    """Indices of the columns of a pandas DataFrame with category, object or string dtype.

    Parameters
    ----------
    X : object
        The input data; anything but a pandas DataFrame has none.

    Returns
    -------
    columns : list of int
    """
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency of the tests only
        return []
    if not isinstance(X, pd.DataFrame):
        return []
    return [
        j
        for j, dtype in enumerate(X.dtypes)
        if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    ]


def check_no_time_columns(X):
    """Refuse the datetime, timedelta and period columns of a pandas DataFrame with a clear error.

    numpy cannot make them floats (its own message names no column), and
    their order is not a category either.
    """
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency of the tests only
        return
    if not isinstance(X, pd.DataFrame):
        return
    time = [
        f"{X.columns[j]!r} ({dtype})"
        for j, dtype in enumerate(X.dtypes)
        if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype)
        or isinstance(dtype, pd.PeriodDtype)
    ]
    if time:
        raise ValueError(
            f"Column(s) {', '.join(time)} hold dates or durations, which are neither numbers nor categories. "
            "Convert them to numbers first (for example the timestamp in seconds, the day of the week, "
            "the duration in hours) or drop them."
        )


def categorical_mask(X, categorical_features):
    """The boolean mask of the categorical columns of the training ``X``, or None if there are none.

    Parameters
    ----------
    X : array-like or pandas DataFrame of shape (n_samples, n_features)
        The training data, before validation.
    categorical_features : "from_dtype", array-like of bool, int or str, or None
        As ``HistGradientBoostingClassifier``'s parameter, except that
        "from_dtype" takes pandas ``category``, ``object`` and ``string``
        columns.

    Returns
    -------
    mask : ndarray of bool of shape (n_features,) or None
    """
    from sklearn.utils.validation import _check_categorical_features

    if isinstance(categorical_features, str) and categorical_features == "from_dtype":
        columns = categorical_columns_from_dtype(X)
        if not columns:
            return _check_categorical_features(X, categorical_features)  # polars and other frames
        mask = np.zeros(X.shape[1], dtype=bool)
        mask[columns] = True
        return mask
    if categorical_features is not None and not hasattr(X, "shape"):
        X = np.asarray(X, dtype=object)
    return _check_categorical_features(X, categorical_features)


def _storable_category(value):
    """Whether a category can be saved (plain JSON): a string or a number, not a bool."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _column_name(feature_names, j):
    return f"{feature_names[j]!r}" if feature_names is not None else f"{j}"


def missing_entries(values):
    """Where raw values (any shape, objects included) are missing: None, NaN, ``pd.NA`` or ``NaT``."""
    import pandas as pd

    return np.asarray(pd.isna(values), dtype=bool)


class CategoricalEncoder:
    """One input per category for the categorical columns; numeric columns pass through as float64.

    Each categorical column is replaced, in place, by one 0/1 column per
    category seen in training (sorted). A missing category (None, NaN,
    ``pd.NA``) or one not seen in training makes all of its column's 0/1
    inputs missing (NaN), which the classifier treats natively as missing
    inputs; a missing numeric value stays NaN. Columns of more than
    :data:`MAX_CATEGORIES` categories are refused with a ``ValueError``.

    Parameters
    ----------
    is_categorical : array-like of bool of shape (n_features,)
        Which columns are categorical.
    feature_names : array-like of str, default=None
        Column names for the error messages.

    Attributes
    ----------
    categories_ : list of ndarray
        The sorted categories of each categorical column, in column order.
    n_outputs_ : int
        Number of columns of the encoded data.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ugmm._preprocessing import CategoricalEncoder
    >>> X = np.array([[1.5, "b"], [2.0, "a"]], dtype=object)
    >>> encoder = CategoricalEncoder([False, True]).fit(X)
    >>> encoder.transform(X)
    array([[1.5, 0. , 1. ],
           [2. , 1. , 0. ]])
    """

    def __init__(self, is_categorical, feature_names=None):
        self.is_categorical = np.asarray(is_categorical, dtype=bool)
        self.feature_names = None if feature_names is None else list(feature_names)

    def fit(self, X):
        """Find the categories of each categorical column of ``X`` (n_samples, n_features).

        Returns
        -------
        self : CategoricalEncoder
        """
        import pandas as pd

        X = np.asarray(X, dtype=object) if np.asarray(X).dtype.kind not in "fiub" else np.asarray(X)
        self.categories_ = []
        for j in np.flatnonzero(self.is_categorical):
            values, missing = self._values_and_missing(X[:, j])
            values = values[~missing]
            if not len(values):
                raise ValueError(
                    f"Categorical column {_column_name(self.feature_names, j)} has no observed category."
                )
            try:
                categories = pd.Index(pd.unique(values)).sort_values()
            except TypeError as exc:
                raise ValueError(
                    f"Categorical column {_column_name(self.feature_names, j)} mixes values of different "
                    "types (strings and numbers, say); use one type per column."
                ) from exc
            if len(categories) > MAX_CATEGORIES:
                raise ValueError(
                    f"Categorical column {_column_name(self.feature_names, j)} has {len(categories)} "
                    f"categories; at most {MAX_CATEGORIES} are encoded natively (one network input each). "
                    "Encode it before fitting (e.g. sklearn.preprocessing.TargetEncoder) and leave it "
                    "out of categorical_features."
                )
            self.categories_.append(np.asarray(categories, dtype=object))
        return self

    @staticmethod
    def _values_and_missing(values):
        """The column's values as objects, and where they are missing (None, NaN, ``pd.NA``)."""
        return np.asarray(values, dtype=object), missing_entries(values)

    @property
    def n_outputs_(self):
        return int(np.sum(~self.is_categorical) + sum(len(c) for c in self.categories_))

    def transform(self, X):
        """Encode ``X`` (n_samples, n_features): numeric columns as float64, categories as 0/1 columns.

        Returns
        -------
        X_encoded : ndarray of shape (n_samples, n_outputs_)

        Missing and unseen categories make their column's 0/1 inputs NaN.

        Raises
        ------
        ValueError
            For numeric columns that hold infinities or values that are not
            numbers.
        """
        import pandas as pd

        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.is_categorical):
            raise ValueError(f"X has {X.shape[-1]} features, but the encoder expects {len(self.is_categorical)}.")
        blocks, categories = [], iter(self.categories_)
        for j, categorical in enumerate(self.is_categorical):
            if not categorical:
                blocks.append(self._numeric(X[:, j], j)[:, None])
                continue
            known = next(categories)
            values, missing = self._values_and_missing(X[:, j])
            codes = np.full(len(X), -1)
            codes[~missing] = pd.Index(known).get_indexer(values[~missing])
            one_hot = np.zeros((len(X), len(known)))
            observed = codes >= 0
            one_hot[np.flatnonzero(observed), codes[observed]] = 1.0
            one_hot[~observed] = np.nan
            blocks.append(one_hot)
        return np.hstack(blocks) if blocks else np.zeros((len(X), 0))

    def _numeric(self, values, j):
        missing = missing_entries(values)
        if missing.any():  # None, pd.NA (nullable Int64, Float64, boolean columns) and NaT: NaN
            values = np.where(missing, np.nan, np.asarray(values, dtype=object))
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"Column {_column_name(self.feature_names, j)} is not categorical but holds values that "
                f"are not numbers ({exc}); add it to categorical_features."
            ) from exc
        if np.any(np.isinf(values)):
            raise ValueError("Input X contains infinity.")
        return values

    def to_metadata(self):
        """The fitted state as plain JSON values: ``{"is_categorical": [...], "categories": [[...], ...]}``.

        Raises
        ------
        ValueError
            If a category is not a string or a number (a pandas ``Interval``
            from ``pd.cut``, a timestamp, bytes, a bool): the file format
            stores only those.
        """
        categories = []
        for j, values in zip(np.flatnonzero(self.is_categorical), self.categories_):
            values = [v.item() if isinstance(v, np.generic) else v for v in values]
            odd = next((v for v in values if not _storable_category(v)), None)
            if odd is not None:
                raise ValueError(
                    f"Column {_column_name(self.feature_names, j)} has a category of type {type(odd).__name__} "
                    f"({odd!r}); a saved model stores only string and number categories. Convert the column "
                    "before fitting (for example X[column] = X[column].astype(str))."
                )
            categories.append(values)
        return {"is_categorical": [bool(v) for v in self.is_categorical], "categories": categories}

    @classmethod
    def from_metadata(cls, metadata, n_features, feature_names=None):
        """A fitted encoder from :meth:`to_metadata`'s output, checked against ``n_features``.

        Raises
        ------
        ValueError
            If the metadata is malformed or does not describe ``n_features`` columns.
        """
        if not isinstance(metadata, dict) or set(metadata) != {"is_categorical", "categories"}:
            raise ValueError("malformed categorical metadata")
        mask, categories = metadata["is_categorical"], metadata["categories"]
        if not isinstance(mask, list) or len(mask) != n_features or not all(isinstance(v, bool) for v in mask):
            raise ValueError("the categorical mask does not match n_features_in_")
        if not isinstance(categories, list) or len(categories) != sum(mask) or not any(mask):
            raise ValueError("the category lists do not match the categorical mask")
        for values in categories:
            if not isinstance(values, list) or not 1 <= len(values) <= MAX_CATEGORIES:
                raise ValueError(f"each categorical column needs 1 to {MAX_CATEGORIES} categories")
            if not all(_storable_category(v) for v in values):
                raise ValueError("categories must be strings or numbers")
            if len({(type(v), v) for v in values}) != len(values):
                raise ValueError("categories must be distinct")
        encoder = cls(mask, feature_names)
        encoder.categories_ = [np.asarray(values, dtype=object) for values in categories]
        return encoder

    def __repr__(self):
        return f"CategoricalEncoder(is_categorical={self.is_categorical.tolist()!r})"
