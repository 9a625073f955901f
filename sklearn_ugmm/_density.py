"""UGMMDensityEstimator: a true, normalised density built from uGMM neurons."""

import math
from numbers import Integral

import numpy as np
import torch
from sklearn.base import DensityMixin, _fit_context
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import BaseUGMM, _torch_generator, local_random_state
from ._objectives import DensityObjective
from ._preprocessing import check_no_time_columns
from .nn._autoregressive import unsupported_missing
from ._threads import thread_limit

__all__ = ["UGMMDensityEstimator"]


class UGMMDensityEstimator(DensityMixin, BaseUGMM):
    """Density estimator made of uGMM neurons, normalised by construction.

    The paper's generative root score is not a density (its integral over
    R^D diverges for D > 1). This estimator factorises
    ``p(x) = prod_d p(x_d | x_<d)``: hidden layers are uGMM layers masked
    MADE-style (a disallowed input gets mixing logit -inf), and every
    conditional is a univariate Gaussian mixture over the actual variable
    ``x_d`` -- a genuine uGMM neuron -- whose components are tied to the
    hidden neurons allowed to see ``x_<d``, plus ``n_free_components`` free
    components and a masked linear term in the means (so a full-covariance
    Gaussian is a special case). The free components' weights are gated by
    the likelihood of ``x_<d`` under their own chains, so they form a mixture
    of full-covariance Gaussians; training starts them at a full-covariance
    :class:`~sklearn.mixture.GaussianMixture` of the training split (1 to
    ``n_free_components`` components, chosen by BIC) and lets the hidden
    uGMM neurons refine it. Hence ``exp(score_samples)`` integrates to
    one and :meth:`sample` draws exactly from the model.

    Parameters
    ----------
    hidden_layer_sizes : array-like of int or int, default=(64,)
        Neurons in each masked hidden uGMM layer (may be empty).
    n_free_components : int, default=8
        Components of each conditional that do not depend on hidden neurons
        (the first variable's marginal has only these).
    order : array-like of int or None, default=None
        Variable order of the factorisation (a permutation of the feature
        indices); the feature order when None.
    alpha : float, default=1e-4
        L2 penalty on the mixing logits.
    batch_size : int or "auto", default="auto"
        Minibatch size; "auto" is ``n_samples // 64`` clipped to [32, 256]
        (and at most ``n_samples``).
    learning_rate : {"constant", "adaptive", "cosine"}, default="adaptive"
        Learning-rate schedule, MLPClassifier's name. "constant" keeps
        ``learning_rate_init``. "adaptive" multiplies the rate by 0.3 each
        time the monitored loss (the one ``n_iter_no_change`` watches) has
        gone ``n_iter_no_change // 4 + 1`` epochs (at least 3) without
        improving by ``tol``; training still stops after ``n_iter_no_change`` epochs without
        progress. "cosine" gives epoch ``e`` (1, 2, ...) the rate
        ``learning_rate_init * (1 + cos(pi * (e - 1) / max_iter)) / 2``.
        Unlike MLPClassifier's (SGD only) they apply to Adam, and only in
        ``fit`` (``partial_fit`` keeps the rate; after a "cosine" ``fit`` it trains at
        ``learning_rate_init``).
    learning_rate_init : float or "auto", default="auto"
        Adam learning rate; "auto" is 3e-3 below 300 training samples (after
        the validation split), where larger steps overfit, and 1e-2 from there.
    max_iter : int, default=500
        Maximum number of epochs.
    tol : float, default=1e-3
        Minimum improvement of the monitored loss (negative log-likelihood
        per sample, standardised space) that counts as progress; 1e-3 is
        GaussianMixture's convergence threshold in the same units.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the data, stop when its negative
        log-likelihood stops improving and restore the best epoch. On by
        default: without it the model overfits small data sets.
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping, drawn among
        the rows of positive ``sample_weight``: rows of weight 0 always train.
    n_iter_no_change : int or np.inf, default=10
        Epochs without progress (an improvement of at least ``tol`` of the
        monitored loss) before training stops; ``np.inf`` turns the stopping
        rule off, so training runs exactly ``max_iter`` epochs (without a
        ConvergenceWarning).
    dropout : float, default=0.0
        Dropout of the hidden layers' mixture components during training.
    standardize : bool, default=True
        Standardise features internally; :meth:`score_samples` adds the
        log-Jacobian so densities are in the original feature space. No
        component is narrower than 1e-3 in the network's units: with extreme
        outliers, which inflate the standard deviation, use False on
        features in sensible units (see the user guide's limitations).
    device : str, default="cpu"
        "cpu", "cuda", "cuda:N", "mps" or "auto".
    n_threads : int or None, default=None
        At most this many CPU threads for torch during fit and prediction,
        set for the calling thread only and restored afterwards (torch's
        process-wide settings are never changed). None: one thread for small
        batches (rows times network parameters below 20 million), where more
        threads are slower, and torch's own setting otherwise; -1: torch's
        own setting. The data-dependent initialisation in ``fit`` runs on one
        thread for None, with numpy's and scikit-learn's thread pools capped
        too.
    callbacks : list of skorch callbacks, default=None
        Extra callbacks for the skorch training loop (an LR scheduler, a
        checkpoint, ...), as callbacks or (name, callback) pairs.
    random_state : int, RandomState instance or None, default=None
        Seeds local torch generators for initialisation, the validation
        split, dropout and shuffling, and the default generator of
        :meth:`sample` (the global RNGs are never touched).
    verbose : int, default=0
        When > 0, show training progress: epochs done of ``max_iter``, time
        per epoch, time left and the best validation loss, on one updating
        line in a terminal and as plain lines in logs and notebooks.
    warm_start : bool, default=False
        Continue training the previous model on the next call to fit.

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of features seen during fit. Defined only when X has feature
        names that are all strings.
    n_iter_ : int
        Epochs run.
    loss_curve_ : list of float
        Training negative log-likelihood per sample (standardised space).
    best_loss_ : float
        Smallest training loss in ``loss_curve_``.
    validation_scores_ : list of float or None
        Validation mean log-likelihood per epoch (standardised space;
        ``early_stopping=True`` only), one entry per entry of ``loss_curve_``:
        NaN for epochs trained without a validation split (``partial_fit``).
    best_validation_score_ : float or None
        Best validation mean log-likelihood (``early_stopping=True`` only).
    net_ : skorch.NeuralNet
        The skorch net that trained the model (its history and optimiser
        state; it keeps no validation rows).
    module_ : sklearn_ugmm.nn.AutoregressiveUGMM
        The trained torch network.
    device_ : torch.device
        Device the network is on.
    scaler_ : FeatureScaler
        The internal standardisation, fitted once per fit
        (``scaler_.mean_`` and ``scaler_.scale_``: weighted mean and standard
        deviation of the training data; zeros and ones when
        ``standardize=False``).
    scaling_mean_, scaling_scale_ : ndarray of shape (n_features,)
        ``scaler_.mean_`` and ``scaler_.scale_``.
    resolved_params_ : dict
        The values this fit used for the parameters that can be "auto"
        (``learning_rate_init``, ``batch_size``), ``standardize``, and
        ``n_train``, the rows trained on (after the validation split).
        ``partial_fit`` keeps those of its first call, except
        ``batch_size``, resolved again for each call's rows (and at most
        their number).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ugmm import UGMMDensityEstimator
    >>> X = np.random.RandomState(0).normal(size=(200, 2))
    >>> est = UGMMDensityEstimator(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(X)
    >>> est.score_samples(X[:3]).shape
    (3,)
    >>> est.sample(4, random_state=0).shape
    (4, 2)
    """

    _parameter_constraints: dict = {
        **BaseUGMM._parameter_constraints,
        "learning_rate_init": [StrOptions({"auto"}), *BaseUGMM._parameter_constraints["learning_rate_init"]],
        "n_free_components": [Interval(Integral, 1, None, closed="left")],
        "order": ["array-like", None],
    }

    def __init__(
        self,
        hidden_layer_sizes=(64,),
        *,
        n_free_components=8,
        order=None,
        alpha=1e-4,
        batch_size="auto",
        learning_rate="adaptive",
        learning_rate_init="auto",
        max_iter=500,
        tol=1e-3,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=10,
        dropout=0.0,
        standardize=True,
        device="cpu",
        n_threads=None,
        callbacks=None,
        random_state=None,
        verbose=0,
        warm_start=False,
    ):
        self._store_params(locals())

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Fit the density to X by maximum likelihood.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The training samples.
        y : Ignored
            Not used, present for API consistency by convention.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; the loss is ``sum(w * nll) / sum(w)``.
            If None, all samples have the same weight.

        Returns
        -------
        self : UGMMDensityEstimator
            The fitted estimator.
        """
        return self._fit(X, None, sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, sample_weight=None):
        """One epoch of maximum-likelihood training on X (streaming, out of core).

        The first call builds the model: it fits the internal standardisation
        and the data-dependent initialisation on its batch. Later calls take
        further maximum-likelihood steps; no validation split or stopping
        rule applies.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A batch of training data.
        y : Ignored
            Not used, present for API consistency by convention.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the batch's samples.

        Returns
        -------
        self : UGMMDensityEstimator
            The estimator, one epoch further.
        """
        return self._fit(X, None, sample_weight, incremental=True)

    def _objective(self, n_features, classes=None, fitted=False, continuing=False):
        return DensityObjective(
            n_features,
            self._hidden_sizes(),
            n_free_components=self.n_free_components,
            order=self._check_order(n_features),
            dropout=self.dropout,
        )

    def _split(self, n_samples, y_index, rng):
        if n_samples - math.ceil(self.validation_fraction * n_samples) < 2:
            return None  # the mixture start needs two training rows: train on every row
        seed = rng.randint(np.iinfo(np.int32).max)
        return train_test_split(np.arange(n_samples), test_size=self.validation_fraction, random_state=seed)

    def _check_order(self, n_features):
        if self.order is None:
            return None
        order = np.asarray(self.order)
        if order.ndim != 1 or order.shape[0] != n_features or not np.array_equal(np.sort(order), np.arange(n_features)):
            raise ValueError(f"order must be a permutation of range({n_features}), got {self.order!r}.")
        return order

    def _clipped_scaled(self, X):
        """Standardised float64 rows; far-out values are clipped, not rejected.

        Clipping at 1e30 keeps a point that is astronomically far out finite,
        where its log-density is still hugely negative.
        """
        return np.clip(self.scaler_.transform(X), -1e30, 1e30)

    def score_samples(self, X):
        """Log-density of each sample, in the original feature space.

        Missing entries (NaN) are integrated out exactly where the
        autoregressive factorisation allows it: when a sample's missing
        features all come after its observed ones in the variable order
        (``order``; the feature order by default), its score is the exact
        marginal log-density of its observed features,
        ``log p(x_order[:m]) = sum_{i < m} log p(x_order[i] | x_order[:i])``.
        Any other pattern of missing entries raises a ValueError; there is
        no silent approximation. (``fit`` needs complete data.)

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples; NaN marks a missing entry.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            ``log p(x)`` (of the observed features of a sample with missing
            entries; 0 for a sample with none observed), including the
            log-Jacobian of the internal standardisation of those features.

        Raises
        ------
        ValueError
            If a sample misses a feature that comes before one of its
            observed features in the variable order.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_ugmm import UGMMDensityEstimator
        >>> X = np.random.RandomState(0).normal(size=(200, 2))
        >>> est = UGMMDensityEstimator(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(X)
        >>> est.score_samples([[0.5, np.nan]]).shape  # log p(x_0), x_1 integrated out
        (1,)
        """
        check_is_fitted(self)
        check_no_time_columns(X)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32), ensure_all_finite="allow-nan")
        missing = np.isnan(X)
        log_jacobian = np.log(self.scaler_.scale_)
        if not missing.any():
            log_density = self._batched(lambda module, rows: module.log_prob(rows), X, prepare=self._clipped_scaled)
            return log_density - np.sum(log_jacobian)
        self._check_missing_pattern(missing)
        log_density = self._batched(
            lambda module, rows: module.marginal_log_prob(rows), X, prepare=self._clipped_scaled
        )
        incomplete = missing.any(axis=1)
        return log_density - np.where(incomplete, (~missing).astype(np.float64) @ log_jacobian, np.sum(log_jacobian))

    def _check_missing_pattern(self, missing):
        """Raise a ValueError unless every row's missing features come after its observed ones in the order."""
        order = self.module_.order.cpu().numpy()
        observed_in_order = torch.as_tensor(~missing[:, order])
        bad = np.flatnonzero(unsupported_missing(observed_in_order).numpy())
        if len(bad):
            row = bad[0]
            raise ValueError(
                "UGMMDensityEstimator.score_samples supports missing values (NaN) only when each "
                "sample's missing features all come after its observed ones in the variable order "
                f"(order={order.tolist()}): the observed features must be order[:m] for some m, where "
                f"the marginal density is exact. Sample {row} has the pattern "
                f"{['observed' if not m else 'NaN' for m in missing[row]]}; {len(bad)} sample(s) have "
                "unsupported patterns. Reorder the features with the order parameter, or impute."
            )

    def score(self, X, y=None):
        """Mean log-likelihood per sample (GaussianMixture's convention).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        log_likelihood : float
            Mean of :meth:`score_samples` over the samples of X, in the
            original feature space.
        """
        check_is_fitted(self)
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None):
        """Draw exact samples from the fitted density (ancestral sampling).

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples to draw.
        random_state : int, RandomState instance or None, default=None
            Seeds a local generator; the estimator's ``random_state`` when None.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            The drawn samples, in the original feature space.
        """
        check_is_fitted(self)
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples!r}; it must be a positive integer.")
        rng = local_random_state(self.random_state if random_state is None else random_state)
        generator = _torch_generator(rng)
        with thread_limit(self.n_threads, self.module_, int(n_samples)):
            z = self.module_.sample(int(n_samples), generator=generator).cpu().double().numpy()
        return z * self.scaler_.scale_ + self.scaler_.mean_

    def _n_parameters(self):
        return int(self.module_.n_parameters())

    def bic(self, X):
        """Bayesian information criterion on X (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples.

        Returns
        -------
        bic : float
            ``-2 * log_likelihood + n_parameters * log(n_samples)``, with
            the total log-likelihood of X and the number of free parameters
            of the network (``module_.n_parameters()``).
        """
        check_is_fitted(self)
        scores = self.score_samples(X)
        return -2 * scores.sum() + self._n_parameters() * np.log(len(scores))

    def aic(self, X):
        """Akaike information criterion on X (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples.

        Returns
        -------
        aic : float
            ``-2 * log_likelihood + 2 * n_parameters``, with the total
            log-likelihood of X and the number of free parameters of the
            network (``module_.n_parameters()``).
        """
        check_is_fitted(self)
        return -2 * self.score_samples(X).sum() + 2 * self._n_parameters()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags
