"""Training objectives: what differs between the classifier's two objectives and the density.

Each objective is a small object that the fit skeleton in ``_base`` asks for
the network, its inputs, its loss, its data-dependent start, its validation
score and the values of the "auto" parameters. Nothing else in the package
branches on the objective.
"""

import warnings
from functools import partial

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from .nn import AutoregressiveUGMM, UGMMNet
from .nn._net import INIT_MAX_SAMPLES

__all__ = [
    "DensityObjective",
    "DiscriminativeObjective",
    "GenerativeObjective",
    "fitted_temperature",
    "hybrid_loss",
    "label_values",
    "make_classifier_objective",
]


def _precision_penalty(module, strength):
    return strength * module.precision_penalty()


def label_values(n_classes):
    """Input values that encode the classes in the generative model (standardised indices).

    Parameters
    ----------
    n_classes : int
        Number of classes.

    Returns
    -------
    values : ndarray of shape (n_classes,), float32
        The label input of class ``c`` is ``values[c]``.
    """
    index = np.arange(n_classes, dtype=np.float64)
    return ((index - index.mean()) / max(index.std(), 1.0)).astype(np.float32)


#: ``label_smoothing="auto"`` of the discriminative objective when early stopping holds out a split
AUTO_LABEL_SMOOTHING = 0.1
#: the temperature fitted on that split lies in [1 / TEMPERATURE_BOUND, TEMPERATURE_BOUND]
TEMPERATURE_BOUND = 2.0


def fitted_temperature(scores, y, sample_weight, bound=TEMPERATURE_BOUND):
    """The factor ``t`` on the class scores that minimises their weighted log-loss, within bounds.

    ``sum_i w_i CE(t * scores_i, y_i)`` is convex in ``t``, hence unimodal
    in ``log t``: a ternary search over ``log t`` in ``[-log bound, log
    bound]`` finds its minimum to about ``1e-7``. The bound matters: on rows
    that the scores separate, the log-loss falls without end as ``t`` grows.

    Parameters
    ----------
    scores : Tensor of shape (n_samples, n_classes)
        Class scores (logits up to a constant per row).
    y : Tensor of shape (n_samples,)
        Class indices.
    sample_weight : Tensor of shape (n_samples,)
        Non-negative weights, not all zero.
    bound : float, default=TEMPERATURE_BOUND
        ``t`` lies in ``[1 / bound, bound]``; more than 1.

    Returns
    -------
    t : float

    Examples
    --------
    >>> import torch
    >>> from sklearn_ugmm._objectives import fitted_temperature
    >>> scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    >>> y, w = torch.tensor([0, 1, 1]), torch.ones(3, dtype=torch.float64)
    >>> round(fitted_temperature(scores, y, w), 4)  # p = 2/3 right: t = log 2
    0.6931
    """
    # on the CPU, in float64 (which MPS devices lack)
    scores, weights = scores.detach().to("cpu", torch.float64), sample_weight.to("cpu", torch.float64)
    y = y.cpu()

    def log_loss(log_t):
        losses = torch.nn.functional.cross_entropy(scores * float(np.exp(log_t)), y, reduction="none")
        return float((weights * losses).sum() / weights.sum())

    low, high = -float(np.log(bound)), float(np.log(bound))
    for _ in range(40):
        a, b = low + (high - low) / 3, high - (high - low) / 3
        if log_loss(a) < log_loss(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


#: ``batch_size="auto"`` of the classifier: about this many steps per epoch, in batches of these bounds
AUTO_STEPS_PER_EPOCH, AUTO_MIN_BATCH, AUTO_MAX_BATCH = 10, 32, 200


def auto_batch_size(n_train):
    """The classifier's ``batch_size="auto"``: ``min(n_train, clip(n_train // 10, 32, 200))``.

    About 10 optimiser steps per epoch for small data (at least 32 rows a
    batch), 200-row batches from 2,000 training rows on. With a fixed
    200-row batch a data set of 200 rows had one step per epoch, and the
    stopping rule's patience of ``n_iter_no_change`` epochs was a handful
    of steps: small data sets stopped while they still underfitted.

    Parameters
    ----------
    n_train : int
        Rows trained on (after the validation split).

    Returns
    -------
    batch_size : int

    Examples
    --------
    >>> from sklearn_ugmm._objectives import auto_batch_size
    >>> [auto_batch_size(n) for n in (20, 200, 1000, 10000)]
    [20, 32, 100, 200]
    """
    return int(min(n_train, np.clip(n_train // AUTO_STEPS_PER_EPOCH, AUTO_MIN_BATCH, AUTO_MAX_BATCH)))


class _ClassifierObjective:
    """What the two classifier objectives share: labels, the class-score metrics, the defaults."""

    #: history entry that early stopping watches (lower is better)
    validation_monitor = "valid_loss"

    #: ``output_layer="auto"``: the output neurons this objective trains best with
    auto_output_layer = "mixture"
    #: the output layers the objective can train
    output_layers = ("mixture", "product")

    def __init__(self, n_features, hidden_sizes, n_classes, *, dropout, tie_means, kernel="auto", output_layer="auto"):
        self.n_features = n_features
        self.hidden_sizes = hidden_sizes
        self.n_classes = n_classes
        self.dropout = dropout
        self.tie_means = tie_means
        self.kernel = kernel
        if output_layer == "auto":
            output_layer = self.auto_output_layer
        if output_layer not in self.output_layers:
            raise ValueError(
                f"output_layer={output_layer!r} is not available with the {self.name} objective; "
                f"use one of {self.output_layers}."
            )
        self.output_layer = output_layer

    def new_module(self, generator):
        return self._net(*self._network_io(), generator)

    def size_floor(self):
        """Lower bounds ``(values, tensors)`` on the network's state, without building it.

        Each uGMM neuron has a mixing logit per input, in at least one
        tensor per layer (``load_model`` refuses files holding less).
        """
        sizes = [self._network_io()[0], *self.hidden_sizes, self._network_io()[1]]
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:])), len(sizes) - 1

    def auto_values(self, n_train, validating=False):
        """The value of each "auto" parameter for ``n_train`` training rows.

        ``validating``: early stopping holds out a validation split.
        """
        return {
            **self.auto,
            "batch_size": auto_batch_size(n_train),
            "hidden_layer_sizes": tuple(self.hidden_sizes),
            "output_layer": self.output_layer,
            "label_smoothing": 0.0,
        }

    def training_loss(self, resolved):
        """``(forward, per_sample_loss)`` of a fit with the resolved parameters ``resolved``.

        ``forward(module, X)`` is the training output of the module for the
        network inputs ``X`` (None: ``module(X)``), ``per_sample_loss(output,
        target)`` the loss of each sample from that output.
        """
        return None, self.per_sample_loss

    def penalty(self, strength, n_train):
        """``penalty(module)`` added to the training loss, or None: a prior worth ``strength`` samples."""
        if not strength:
            return None
        return partial(_precision_penalty, strength=strength / max(n_train, 1))

    def _net(self, n_inputs, n_outputs, generator):
        return UGMMNet(
            n_inputs,
            self.hidden_sizes,
            n_outputs,
            dropout=self.dropout,
            tie_means=self.tie_means,
            kernel=self.kernel,
            generator=generator,
            output_layer=self.output_layer,
            dtype=torch.float32,  # whatever torch's default dtype: the estimators train in float32
        )

    def _scored_rows(self, module, X, packed):
        """``(class scores, labels, weights)`` of the network inputs ``X`` and their packed targets."""
        packed = np.asarray(packed)
        y = torch.as_tensor(packed[:, 0], device=X.device).long()
        w = torch.as_tensor(packed[:, -1], device=X.device, dtype=X.dtype)
        return self.class_scores(module, X[:, : self.n_features]), y, w

    def temperature(self, module, X, packed):
        """The factor on the class scores that fits the validation rows best (:func:`fitted_temperature`)."""
        with torch.no_grad():
            scores, y, w = self._scored_rows(module, X, packed)
        return fitted_temperature(scores, y, w)

    def validation_score(self, module, X, packed):
        """Weighted accuracy and conditional log-loss of the class scores."""
        scores, y, w = self._scored_rows(module, X, packed)
        correct = (scores.argmax(dim=1) == y).to(w.dtype)
        log_loss = torch.nn.functional.cross_entropy(scores, y, reduction="none")
        return {
            "valid_score": float((w * correct).sum() / w.sum()),
            "valid_log_loss": float((w * log_loss).sum() / w.sum()),
        }


class DiscriminativeObjective(_ClassifierObjective):
    """One output neuron per class, trained with cross-entropy on their log-densities."""

    name = "discriminative"
    #: Gaussian product output neurons (a weighted naive Bayes over the last
    #: hidden layer) sum the evidence of the hidden neurons; chosen on the
    #: tuning half of bench_suite.py (see UGMMClassifier's ``output_layer``)
    auto_output_layer = "product"

    #: "auto" values, measured best with the other defaults: the power transform,
    #: weight averaging and the precision penalty help the class scores
    #: (see UGMMClassifier's parameters for the measurements)
    auto = {
        "learning_rate_init": 3e-2, "averaging_epochs": 10.0, "precision_penalty": 150.0, "standardize": "yeo-johnson",
        "conditional_weight": 0.0,  # a generative option: the discriminative loss is all conditional
    }

    def auto_values(self, n_train, validating=False):
        """The value of each "auto" parameter for ``n_train`` training rows.

        ``label_smoothing`` is ``AUTO_LABEL_SMOOTHING`` (0.1) when early
        stopping holds out a split (``validating``), where a temperature
        fitted on that split gives back the confidence that smoothing takes
        away, and 0 otherwise (see UGMMClassifier's ``label_smoothing``).
        """
        values = super().auto_values(n_train, validating)
        values["label_smoothing"] = AUTO_LABEL_SMOOTHING if validating else 0.0
        return values

    def _network_io(self):
        return self.n_features, self.n_classes

    def network_inputs(self, Xs, y_index):
        return Xs

    @staticmethod
    def per_sample_loss(output, target, label_smoothing=0.0):
        return torch.nn.functional.cross_entropy(
            output, target[:, 0].long(), reduction="none", label_smoothing=label_smoothing
        )

    def training_loss(self, resolved):
        """``(forward, per_sample_loss)``: the cross-entropy, with ``resolved["label_smoothing"]``.

        Files saved before the option have no smoothing.
        """
        smoothing = resolved.get("label_smoothing", 0.0)
        if not smoothing:
            return None, self.per_sample_loss
        return None, partial(self.per_sample_loss, label_smoothing=smoothing)

    def initialise(self, module, X, y_index, generator, rng):
        """Data-dependent start from the (positive-weight) training inputs ``X``."""
        module.init_from_data(X, generator=generator, focus=True)
        if not self.tie_means:
            module.init_output_from_classes(X, y_index, self.n_classes)

    def class_scores(self, module, X):
        """Per-class scores (log-densities) for scaled inputs X."""
        return module(X)


class GenerativeObjective(_ClassifierObjective):
    """The paper's joint model: the label is an extra input and one root neuron scores (x, label)."""

    name = "generative"
    #: the root is the joint score of (x, label): a mixture, as in the paper
    output_layers = ("mixture",)

    #: "auto" values: the generative joint score is itself a log-density that needs
    #: sharp components, and the power transform did not help it; a conditional
    #: term of weight 0.2 and a weight average over 10 epochs steady its class
    #: scores (see UGMMClassifier's ``conditional_weight`` and ``averaging_epochs``)
    auto = {
        "learning_rate_init": 1e-2, "averaging_epochs": 10.0, "precision_penalty": 0.0, "standardize": True,
        "conditional_weight": 0.2,
    }

    def auto_values(self, n_train, validating=False):
        """The value of each "auto" parameter for ``n_train`` training rows.

        ``batch_size`` is ``min(200, n_train)``: with the small batches of
        :func:`auto_batch_size` the joint density overfits and its class
        scores suffer (iris, 5-fold CV, 3 seeds: 0.787 with 32-row batches).
        No label smoothing: the joint score has no labels to smooth.
        """
        return {**super().auto_values(n_train, validating), "batch_size": min(AUTO_MAX_BATCH, n_train)}

    def _network_io(self):
        return self.n_features + 1, 1

    def network_inputs(self, Xs, y_index):
        labels = label_values(self.n_classes)[y_index]
        return np.hstack([Xs, labels[:, None]])

    @staticmethod
    def per_sample_loss(output, target):
        return -output[:, 0]

    def training_loss(self, resolved):
        """``(forward, per_sample_loss)``: the joint score, plus ``conditional_weight`` times the class cross-entropy.

        With ``w = resolved["conditional_weight"]`` (0 in files saved before
        the option) the loss of a sample ``(x, y)`` is ``-root(x, y) + w *
        CE``, where ``CE = -log softmax(class_scores(x))[y]`` is the
        cross-entropy of the class scores that prediction uses (the root
        with the label input set to each class, :meth:`class_scores`). The
        training output is then ``[root(x, y), class scores...]`` of shape
        ``(batch, 1 + n_classes)``. With ``w = 0`` it is the paper's joint
        objective, computed exactly as without the option.
        """
        if resolved.get("label_smoothing", 0.0):
            raise ValueError(
                f"label_smoothing={resolved['label_smoothing']!r} applies to the discriminative objective's "
                "cross-entropy; the generative objective maximises a joint score, with no labels to smooth. "
                'Use label_smoothing=0 or "auto".'
            )
        weight = float(resolved.get("conditional_weight") or 0.0)
        if weight == 0:
            return None, self.per_sample_loss
        return self.joint_and_class_scores, partial(hybrid_loss, weight=weight)

    def joint_and_class_scores(self, module, X):
        """``[root(X), class scores of X's features]``, shape ``(batch, 1 + n_classes)``, for network inputs X.

        In training with (input) dropout the class scores are the root's
        outputs for each label value, each pass with its own masks as in
        :meth:`UGMMNet.forward` (:meth:`UGMMNet.score_states` is exact only
        without dropout; with dropout and missing inputs it can give NaN).
        """
        if not (module.training and _has_dropout(module)):
            return torch.cat([module(X), self.class_scores(module, X[:, : self.n_features])], dim=1)
        values = torch.as_tensor(label_values(self.n_classes), device=X.device, dtype=X.dtype)
        scores = []
        for value in values:
            labelled = X.clone()
            labelled[:, self.n_features] = value
            scores.append(module(labelled))
        return torch.cat([module(X), *scores], dim=1)

    def initialise(self, module, X, y_index, generator, rng):
        """Data-dependent start from the (positive-weight) training inputs ``X``."""
        # the focused start of hidden neurons helps class scores but not the
        # generative joint score (Iris, 5-fold CV over seeds 0-9: 0.934 with it, 0.956 without)
        module.init_from_data(X, generator=generator, focus=False)
        if not self.tie_means:
            module.init_output_at_quantile(X, 0.95)

    def class_scores(self, module, X):
        """Per-class scores (MPE over the label input) for scaled inputs X."""
        padded = torch.cat([X, X.new_zeros((X.shape[0], 1))], dim=1)
        states = torch.as_tensor(label_values(self.n_classes), device=X.device, dtype=X.dtype)
        return module.score_states(padded, index=X.shape[1], states=states)


def _has_dropout(module):
    """Whether a training pass of ``module`` drops components or inputs."""
    layers = getattr(module, "layers", ())
    return getattr(module, "input_dropout", 0.0) > 0 or any(getattr(layer, "dropout", 0.0) > 0 for layer in layers)


def hybrid_loss(output, target, weight):
    """Per-sample ``-output[:, 0] + weight * cross_entropy(output[:, 1:], target[:, 0])``.

    The generative objective's loss with a conditional term
    (:meth:`GenerativeObjective.training_loss`): ``output`` holds the joint
    score of each sample with its own label, then its class scores.
    """
    conditional = torch.nn.functional.cross_entropy(output[:, 1:], target[:, 0].long(), reduction="none")
    return -output[:, 0] + weight * conditional


def make_classifier_objective(
    objective, n_features, hidden_sizes, n_classes, *, dropout, tie_means, kernel="auto", output_layer="auto"
):
    """The objective object named by ``UGMMClassifier(objective=...)``."""
    cls = {"discriminative": DiscriminativeObjective, "generative": GenerativeObjective}[objective]
    return cls(
        n_features, hidden_sizes, n_classes, dropout=dropout, tie_means=tie_means, kernel=kernel,
        output_layer=output_layer,
    )


class DensityObjective:
    """Maximum likelihood of the autoregressive uGMM density."""

    validation_monitor = "valid_loss"
    #: "auto" learning rates: small data sets, and from ``_LR_THRESHOLD`` training samples on
    _LR_SMALL, _LR_LARGE, _LR_THRESHOLD = 3e-3, 1e-2, 300

    def __init__(self, n_features, hidden_sizes, *, n_free_components, order, dropout):
        self.n_features = n_features
        self.hidden_sizes = hidden_sizes
        self.n_free_components = n_free_components
        self.order = order
        self.dropout = dropout

    def auto_values(self, n_train, validating=False):
        """The value of each "auto" parameter for ``n_train`` training rows (``validating``: unused)."""
        return {
            # small data sets need the smaller steps, larger ones reach a better
            # optimum in fewer epochs with the larger (examples/benchmarks/bench_density.py)
            "learning_rate_init": self._LR_SMALL if n_train < self._LR_THRESHOLD else self._LR_LARGE,
            # small batches for small data, up to 256 rows for large data
            # (on magic, 256-row batches reach a better likelihood per epoch than 512)
            "batch_size": int(min(n_train, np.clip(n_train // 64, 32, 256))),
        }

    def penalty(self, strength, n_train):
        return None

    def training_loss(self, resolved):
        """``(forward, per_sample_loss)``: ``module(X)`` and the negative log-likelihood."""
        return None, self.per_sample_loss

    def size_floor(self):
        """Lower bounds ``(values, tensors)`` on the network's state, without building it.

        Each masked neuron has a mixing logit per input, and each conditional
        also has its free components' linear terms and gates, in at least one
        tensor per layer (``load_model`` refuses files holding less).
        """
        sizes = [self.n_features, *self.hidden_sizes]
        last = self.hidden_sizes[-1] if self.hidden_sizes else 0
        masked = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        return masked + self.n_features * self.n_free_components * (self.n_features + last), len(sizes)

    def new_module(self, generator):
        return AutoregressiveUGMM(
            self.n_features,
            self.hidden_sizes,
            n_free_components=self.n_free_components,
            order=self.order,
            dropout=self.dropout,
            generator=generator,
            dtype=torch.float32,
        )

    def network_inputs(self, Xs, y_index):
        return Xs

    @staticmethod
    def per_sample_loss(output, target):
        return -output

    def initialise(self, module, X, y_index, generator, rng):
        """Data-dependent start, then the free components at a BIC-selected GaussianMixture of ``X``."""
        module.init_from_data(X, generator=generator)
        X = X.numpy().astype(np.float64)
        if len(X) < 2:
            return  # no mixture to fit
        if len(X) > INIT_MAX_SAMPLES:
            X = X[rng.permutation(len(X))[:INIT_MAX_SAMPLES]]
        seed = rng.randint(np.iinfo(np.int32).max)
        best, best_bic = None, np.inf
        max_components = max(1, min(self.n_free_components, len(X) // (2 * (X.shape[1] + 1))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for m in range(1, max_components + 1):
                gmm = GaussianMixture(m, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(X)
                bic = gmm.bic(X)
                if bic < best_bic:
                    best, best_bic = gmm, bic
        module.init_from_mixture(best.weights_, best.means_, best.covariances_, generator=generator)

    @staticmethod
    def validation_score(module, X, packed):
        """Weighted mean log-likelihood of the validation rows."""
        w = torch.as_tensor(np.asarray(packed)[:, -1], device=X.device, dtype=X.dtype)
        return float((w * module(X)).sum() / w.sum())
