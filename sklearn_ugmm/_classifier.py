"""UGMMClassifier: a scikit-learn classifier over the uGMM-NN."""

from functools import partial
from numbers import Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin, _fit_context
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import BaseUGMM, local_random_state, resolve_device
from ._engine import pack_target
from ._power import evenly_spaced_rows
from ._threads import initialisation_limit
from .nn import UGMMNet

__all__ = ["UGMMClassifier"]


def _cross_entropy(output, target):
    return torch.nn.functional.cross_entropy(output, target[:, 0].long(), reduction="none")


def _negative_root_score(output, target):
    return -output[:, 0]


def _precision_penalty(module, strength):
    return strength * module.precision_penalty()


class UGMMClassifier(ClassifierMixin, BaseUGMM):
    """Classifier over a uGMM-NN (univariate Gaussian mixture model neural network).

    Every neuron is a univariate Gaussian mixture with one component per
    input and outputs a log-density (arXiv 2509.07569). The network is built
    in PyTorch and trained with Adam through skorch.

    Parameters
    ----------
    hidden_layer_sizes : array-like of int or int, default=(64,)
        Neurons in each hidden uGMM layer.
    objective : {"discriminative", "generative"}, default="discriminative"
        "discriminative": one output neuron per class, trained with
        cross-entropy on their log-densities. "generative": the paper's joint
        model; the label is an extra input, a single root neuron scores
        (x, label), training maximises that score, and prediction evaluates
        every class (MPE inference) with probabilities given by the softmax of
        the scores.
    alpha : float, default=1e-4
        L2 penalty on the mixing logits.
    precision_penalty : float or "auto", default="auto"
        Prior against components that become much narrower than they were
        initialised, worth about this many samples: ``precision_penalty /
        n_train`` times the mean of ``(initial scale / scale) ** 2`` over the
        components of each layer is added to the training loss. Sharp
        components make overconfident predictions, so "auto" is 150 for the
        discriminative objective; it is 0 (off) for the generative one, whose
        log-density objective needs sharp components.
    batch_size : int or "auto", default="auto"
        Minibatch size; "auto" is ``min(200, n_samples)``.
    learning_rate : {"constant", "adaptive"}, default="constant"
        Learning-rate schedule, MLPClassifier's name. "constant" keeps
        ``learning_rate_init``. "adaptive" multiplies the rate by 0.3 each
        time the monitored loss (the one ``n_iter_no_change`` watches) has
        gone ``n_iter_no_change // 4 + 1`` epochs (at least 3) without
        improving by ``tol``; training still stops after ``n_iter_no_change`` epochs without
        progress. Unlike MLPClassifier's (SGD only) it applies to Adam, and
        only in ``fit`` (``partial_fit`` keeps the rate).
    learning_rate_init : float or "auto", default="auto"
        Adam learning rate; "auto" is 3e-2 for the discriminative and 1e-2
        for the generative objective, the best measured for each.
    max_iter : int, default=200
        Maximum number of epochs.
    tol : float, default=1e-4
        Minimum improvement of the monitored loss (training loss, or
        validation loss with ``early_stopping``) that counts as progress.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the training data (stratified),
        stop when its loss stops improving and restore the best epoch; on by
        default because the restored epoch gives better calibrated
        probabilities than training to convergence.
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping.
    n_iter_no_change : int or np.inf, default=20
        Epochs without progress before training stops; ``np.inf`` turns the
        stopping rule off, so training runs exactly ``max_iter`` epochs
        (without a ConvergenceWarning).
    averaging_epochs : float or "auto", default="auto"
        Horizon, in epochs, of a moving average of the weights (Polyak
        averaging): validation, early stopping and the fitted model use the
        average while training continues from the current weights, which
        smooths out the noise of a lively learning rate. 1 turns it off
        (better with a schedule that decays the rate to zero). "auto" is 10
        for the discriminative and 1 for the generative objective, which it
        does not help. Applies in ``fit``, not in ``partial_fit``.
    dropout : float, default=0.0
        Probability of removing each mixture component during training.
    tie_means : bool, default=False
        The paper's parameter tying: component means are the incoming
        activations and each neuron learns where to evaluate its mixture.
    standardize : bool, "yeo-johnson" or "auto", default="auto"
        Internal feature scaling, so that raw-scale data works. True:
        standardise each feature (weighted mean and standard deviation).
        "yeo-johnson": first a weighted Yeo-Johnson power transform per
        feature (unit-free, linear beyond the training range), which brings
        skewed, heavy-tailed features closer to the Gaussian shape of the
        components. False: no scaling. "auto" is "yeo-johnson" for the
        discriminative and True for the generative objective, which the
        transform does not help.
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
        Seeds local torch generators for initialisation, dropout and
        shuffling (the global RNGs are never touched).
    verbose : int, default=0
        When > 0, show training progress: epochs done of ``max_iter``, time
        per epoch, time left and the best validation loss, on one updating
        line in a terminal and as plain lines in logs and notebooks.
    warm_start : bool, default=False
        Continue training the previous model on the next call to fit.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels known to the classifier.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of features seen during fit. Defined only when X has feature
        names that are all strings.
    n_iter_ : int
        Epochs run.
    loss_curve_ : list of float
        Training loss per epoch.
    best_loss_ : float
        Smallest training loss in ``loss_curve_``.
    validation_scores_ : list of float or None
        Validation accuracy per epoch (``early_stopping=True`` only). Early
        stopping itself watches the validation loss of the training
        objective and restores the best epoch.
    best_validation_score_ : float or None
        Best validation accuracy (``early_stopping=True`` only).
    net_ : skorch.NeuralNet
        The skorch net that trained the model.
    module_ : sklearn_ugmm.nn.UGMMNet
        The trained torch network.
    device_ : torch.device
        Device the network is on.
    scaling_mean_, scaling_scale_ : ndarray of shape (n_features,)
        The internal standardisation (of the power-transformed features when
        the power transform is used).
    power_lambdas_ : ndarray of shape (n_features,)
        Yeo-Johnson power of each feature (only when the power transform is
        used; 1 is the identity). ``power_shift_`` and ``power_scale_`` hold
        the centring and spread applied before the transform, ``power_low_``
        and ``power_high_`` the range of the centred training data beyond
        which it is linear.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_ugmm import UGMMClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = UGMMClassifier(max_iter=30, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 3)
    >>> bool(clf.score(X, y) > 0.9)
    True
    """

    _parameter_constraints: dict = {
        **BaseUGMM._parameter_constraints,
        "objective": [StrOptions({"discriminative", "generative"})],
        "learning_rate_init": [StrOptions({"auto"}), *BaseUGMM._parameter_constraints["learning_rate_init"]],
        "tie_means": ["boolean"],
        "precision_penalty": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "averaging_epochs": [StrOptions({"auto"}), Interval(Real, 1, None, closed="left")],
        "standardize": ["boolean", StrOptions({"yeo-johnson", "auto"})],
    }

    def __init__(
        self,
        hidden_layer_sizes=(64,),
        *,
        objective="discriminative",
        alpha=1e-4,
        precision_penalty="auto",
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init="auto",
        max_iter=200,
        tol=1e-4,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        averaging_epochs="auto",
        dropout=0.0,
        tie_means=False,
        standardize="auto",
        device="cpu",
        n_threads=None,
        callbacks=None,
        random_state=None,
        verbose=0,
        warm_start=False,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.objective = objective
        self.alpha = alpha
        self.precision_penalty = precision_penalty
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.averaging_epochs = averaging_epochs
        self.dropout = dropout
        self.tie_means = tie_means
        self.standardize = standardize
        self.device = device
        self.n_threads = n_threads
        self.callbacks = callbacks
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to data X and labels y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples.
        y : array-like of shape (n_samples,)
            The target values (class labels).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; the loss is ``sum(w * loss) / sum(w)``.
            If None, all samples have the same weight.

        Returns
        -------
        self : UGMMClassifier
            The fitted estimator.
        """
        continuing = self.warm_start and hasattr(self, "net_")
        X, y = validate_data(self, X, y, reset=not continuing, dtype=np.float64)
        check_classification_targets(y)
        sample_weight = self._check_weights(sample_weight, X)
        if continuing:
            if not np.all(np.isin(np.unique(y), self.classes_)):
                raise ValueError("warm_start fit got labels that were not seen in the first fit.")
            y_index = np.searchsorted(self.classes_, y)
        else:
            encoder = LabelEncoder().fit(y)
            classes = encoder.classes_
            if len(classes) < 2:
                raise ValueError(
                    f"The number of classes has to be greater than one; got {len(classes)} class."
                )
            y_index = encoder.transform(y)
        device = resolve_device(self.device)
        rng = local_random_state(self.random_state)
        generator = self._torch_generator(rng)

        if not continuing:
            self.classes_ = classes
            self._fit_scaling(X, sample_weight)
        Xs = self._scaled(X)
        n_classes = len(self.classes_)

        train_idx = np.arange(len(Xs))
        validation = None
        if self.early_stopping:
            train_idx, valid_idx = _split(y_index, self.validation_fraction, rng)
            validation = self._inputs_targets(Xs[valid_idx], y_index[valid_idx], sample_weight[valid_idx], n_classes)
        X_train, y_train = self._inputs_targets(
            Xs[train_idx], y_index[train_idx], sample_weight[train_idx], n_classes
        )

        if continuing:
            module = self.module_
        else:
            with initialisation_limit(self.n_threads):
                module = self._initialised_module(X_train, y_index[train_idx], sample_weight[train_idx], generator)
        module.set_generator(generator)
        self.device_ = device

        self.net_ = self._train(module, X_train, y_train, validation, self._validation_metrics, generator)
        self._record_history(self.net_, append=continuing)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch of training on (X, y), for streaming and out-of-core data.

        The first call builds the model: it needs ``classes`` (all labels that
        will ever appear) and fits the internal standardisation and the
        data-dependent initialisation on its batch. No validation split and
        no stopping rule apply.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples.
        y : array-like of shape (n_samples,)
            The target values (class labels); every label must be in
            ``classes``.
        classes : array-like of shape (n_classes,), default=None
            Required on the first call, ignored (but checked) afterwards.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples in this batch. If None, all
            samples have the same weight.

        Returns
        -------
        self : UGMMClassifier
            The updated estimator.
        """
        first = not hasattr(self, "net_")
        X, y = validate_data(self, X, y, reset=first, dtype=np.float64)
        check_classification_targets(y)
        sample_weight = self._check_weights(sample_weight, X)
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            classes = np.unique(classes)
            if len(classes) < 2:
                raise ValueError(f"The number of classes has to be greater than one; got {len(classes)} class.")
            self.device_ = resolve_device(self.device)
            self.classes_ = classes
            self._fit_scaling(X, sample_weight)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={classes!r} is not the same as on the first call to partial_fit.")
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if len(unseen):
            raise ValueError(f"y contains labels not in classes: {unseen!r}.")
        y_index = np.searchsorted(self.classes_, y)
        X_train, y_train = self._inputs_targets(self._scaled(X), y_index, sample_weight, len(self.classes_))
        self._partial_fit_epoch(
            X_train, y_train, lambda generator: self._initialised_module(X_train, y_index, sample_weight, generator)
        )
        return self

    def _initialised_module(self, X_train, y_index, sample_weight, generator):
        """A new network, initialised from the training data."""
        module = self._new_module(generator)
        # samples of zero weight do not shape the initial model either
        seen = sample_weight > 0
        X_seen = torch.as_tensor(X_train[seen])
        # the focused start of hidden neurons helps class scores but not the
        # generative joint score (Iris, 5-fold CV over seeds 0-9: 0.934 with it, 0.956 without)
        module.init_from_data(X_seen, generator=generator, focus=self.objective == "discriminative")
        if not self.tie_means:
            if self.objective == "discriminative":
                _init_output_from_classes(module, X_seen, y_index[seen], len(self.classes_))
            else:
                _init_root_at_high_activations(module, X_seen)
        return module

    def _learning_rate(self, n_train):
        if self.learning_rate_init == "auto":
            # measured best for each objective with the other defaults
            return 3e-2 if self.objective == "discriminative" else 1e-2
        return self.learning_rate_init

    def _averaging_epochs(self):
        if self.averaging_epochs == "auto":
            # averaging helps the class scores but not the generative joint score
            # (Iris, 5-fold CV over seeds 0-9: 0.953 with a horizon of 10, 0.956 without)
            return 10.0 if self.objective == "discriminative" else None
        return self.averaging_epochs

    def _scaling_method(self):
        if self.standardize == "auto":
            # the power transform helps class scores but not the generative joint
            # score (Iris, 5-fold CV over seeds 0-9: 0.932 with it, 0.956 without)
            return "yeo-johnson" if self.objective == "discriminative" else True
        return self.standardize

    def _penalty(self, n_train):
        strength = self.precision_penalty
        if strength == "auto":
            strength = 150.0 if self.objective == "discriminative" else 0.0
        if strength == 0:
            return None
        return partial(_precision_penalty, strength=strength / max(n_train, 1))

    def _new_module(self, generator):
        n_classes = len(self.classes_)
        generative = self.objective == "generative"
        return UGMMNet(
            self.n_features_in_ + generative,
            self._hidden_sizes(),
            1 if generative else n_classes,
            dropout=self.dropout,
            tie_means=self.tie_means,
            generator=generator,
        )

    @property
    def _per_sample_loss(self):
        return _cross_entropy if self.objective == "discriminative" else _negative_root_score

    def _label_values(self, n_classes):
        """Input values that encode the classes in the generative model (standardised indices)."""
        index = np.arange(n_classes, dtype=np.float64)
        return ((index - index.mean()) / max(index.std(), 1.0)).astype(np.float32)

    def _inputs_targets(self, Xs, y_index, sample_weight, n_classes):
        if self.objective == "generative":
            labels = self._label_values(n_classes)[y_index]
            Xs = np.hstack([Xs, labels[:, None]])
        return Xs, pack_target(y_index, sample_weight)

    def _validation_metrics(self, module, X, packed):
        """Weighted accuracy and conditional log-loss of the class scores."""
        y = torch.as_tensor(np.asarray(packed)[:, 0], device=X.device).long()
        w = torch.as_tensor(np.asarray(packed)[:, -1], device=X.device, dtype=X.dtype)
        scores = self._class_scores(module, X if self.objective == "discriminative" else X[:, :-1])
        correct = (scores.argmax(dim=1) == y).to(w.dtype)
        log_loss = torch.nn.functional.cross_entropy(scores, y, reduction="none")
        return {
            "valid_score": float((w * correct).sum() / w.sum()),
            "valid_log_loss": float((w * log_loss).sum() / w.sum()),
        }

    def _class_scores(self, module, X):
        """Per-class scores (log-densities) for scaled inputs X."""
        if self.objective == "discriminative":
            return module(X)
        n_classes = len(self.classes_)
        padded = torch.cat([X, X.new_zeros((X.shape[0], 1))], dim=1)
        states = torch.as_tensor(self._label_values(n_classes), device=X.device, dtype=X.dtype)
        return module.score_states(padded, index=X.shape[1], states=states)

    def _log_proba(self, X):
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self._batched(
            lambda module, rows: torch.log_softmax(self._class_scores(module, rows), dim=1),
            X,
            prepare=lambda rows: self._scaled(rows, dtype=np.float64),
        )

    def predict_log_proba(self, X):
        """Log of class probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            The log-probability of each class for each sample, with the
            classes in the order of ``classes_``.
        """
        check_is_fitted(self)
        return self._log_proba(X)

    def predict_proba(self, X):
        """Class probabilities (softmax of the per-class log-densities).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            The probability of each class for each sample, with the classes
            in the order of ``classes_``; each row sums to one.
        """
        check_is_fitted(self)
        proba = np.exp(self._log_proba(X))
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X):
        """Most probable class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The predicted class label of each sample.
        """
        check_is_fitted(self)
        log_proba = self._log_proba(X)
        return self.classes_[np.argmax(log_proba, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags


def _output_layer_inputs(module, X, max_samples):
    """Rows of ``X`` spread over the set (at most ``max_samples``) and what the last layer gets from them.

    The activations are computed in eval mode (no dropout) and returned in float64.
    """
    rows = evenly_spaced_rows(len(X), max_samples)
    module.eval()
    h = X[rows]
    for layer in module.layers[:-1]:
        h = layer(h)
    module.train()
    return rows, h.double()


@torch.no_grad()
def _init_output_from_classes(module, X, y_index, n_classes, max_samples=4096):
    """Start each class neuron as a naive-Bayes-like mixture over its class.

    Output neuron c gets component means at the median activation of class c
    and scales equal to the within-class spread of each input, so training
    starts from a model that already separates the classes.
    """
    rows, h = _output_layer_inputs(module, X, max_samples)
    y = torch.as_tensor(y_index[rows])
    last = module.layers[-1]
    overall = torch.quantile(h, torch.tensor([0.25, 0.75], dtype=h.dtype), dim=0)
    overall_spread = ((overall[1] - overall[0]) / 1.349).clamp(min=10 * last.min_scale)
    loc = last.loc.detach().double().clone()
    scale = last.scale.detach().double().clone()
    for c in range(n_classes):
        members = h[y == c]
        if len(members) == 0:
            continue
        q = torch.quantile(members, torch.tensor([0.25, 0.5, 0.75], dtype=h.dtype), dim=0)
        spread = (q[2] - q[0]) / 1.349
        # classes with too few samples for a spread borrow the overall one
        spread = torch.where(spread > 0.05 * overall_spread, spread, overall_spread)
        loc[c] = q[1]
        scale[c] = spread
    last.loc.copy_(loc.to(last.loc.dtype))
    last.set_scale(scale.to(last.raw_scale.dtype))


#: Quantile of a hidden neuron's training activations where the generative
#: root's component for that neuron starts (see _init_root_at_high_activations).
_ROOT_QUANTILE = 0.95


@torch.no_grad()
def _init_root_at_high_activations(module, X, max_samples=4096):
    """Start each component of the generative root at the high end of its input.

    Root component j models the output of hidden neuron j. It starts at the
    95th percentile of that output over the training pairs (x, label), where
    the neuron's components match, rather than at the activations of one
    randomly drawn sample, which made the fit depend on the draw (Iris, 5-fold
    CV over seeds 0-9: mean 0.936 and worst seed 0.893 from a random sample,
    0.956 and 0.947 from the 95th percentile; upper quantiles 0.9-0.99 all
    beat the median, 0.945).
    """
    _, h = _output_layer_inputs(module, X, max_samples)
    root = module.layers[-1]
    high = torch.quantile(h, torch.tensor(_ROOT_QUANTILE, dtype=h.dtype), dim=0)
    root.loc.copy_(high.expand_as(root.loc).to(root.loc.dtype))


def _split(y_index, validation_fraction, rng):
    indices = np.arange(len(y_index))
    seed = rng.randint(np.iinfo(np.int32).max)
    try:
        return train_test_split(indices, test_size=validation_fraction, stratify=y_index, random_state=seed)
    except ValueError:
        # a class too small to stratify: fall back to a plain random split
        return train_test_split(indices, test_size=validation_fraction, random_state=seed)
