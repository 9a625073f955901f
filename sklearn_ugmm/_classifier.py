"""UGMMClassifier: a scikit-learn classifier over the uGMM-NN."""

from numbers import Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin, _fit_context
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ._base import BaseUGMM, _network_features
from ._objectives import make_classifier_objective
from ._preprocessing import categorical_mask, missing_entries

__all__ = ["UGMMClassifier", "auto_hidden_layer_sizes"]

#: ``hidden_layer_sizes="auto"``: neurons per class, and the bounds of the first layer's width
AUTO_NEURONS_PER_CLASS, AUTO_MIN_WIDTH, AUTO_MAX_WIDTH = 8, 64, 256


def auto_hidden_layer_sizes(n_inputs, n_classes):
    """The hidden layers of ``UGMMClassifier(hidden_layer_sizes="auto")``.

    One hidden layer of ``width = clip(8 * n_classes, 64, 256)`` neurons.
    A uGMM neuron is a mixture -- it scores an input by the best matching
    of its components, an OR over its inputs -- and each class's output
    neuron is a mixture over the hidden neurons, so a class needs several
    hidden neurons of its own (its modes): the width grows with the number
    of classes. The number of inputs does not enter: each hidden neuron has
    one component per input, so its size grows with the inputs by itself
    (a second layer, ``(128, 64)``, did not pay on the tuning half of
    ``examples/benchmarks/bench_suite.py``: +0.07 points of accuracy, a
    worse log-loss, three times the fit time).

    Parameters
    ----------
    n_inputs : int
        Network inputs: the features, one per category for categorical ones.
    n_classes : int
        Number of classes.

    Returns
    -------
    sizes : tuple of int

    Examples
    --------
    >>> from sklearn_ugmm._classifier import auto_hidden_layer_sizes
    >>> auto_hidden_layer_sizes(4, 3)
    (64,)
    >>> auto_hidden_layer_sizes(16, 26)
    (208,)
    """
    width = int(np.clip(AUTO_NEURONS_PER_CLASS * n_classes, AUTO_MIN_WIDTH, AUTO_MAX_WIDTH))
    return (width,)


def class_weights(class_weight, classes, y, *, incremental=False):
    """The weight of each row's class under ``class_weight`` (see :class:`UGMMClassifier`).

    Parameters
    ----------
    class_weight : dict, "balanced" or None
        The classifier's ``class_weight``.
    classes : ndarray of shape (n_classes,)
        The sorted class labels; every label of ``y`` is one of them.
    y : ndarray of shape (n_samples,)
        The labels.
    incremental : bool, default=False
        For ``partial_fit``, which refuses "balanced".

    Returns
    -------
    weights : ndarray of shape (n_samples,)

    Raises
    ------
    ValueError
        For "balanced" in ``partial_fit``, a weight that is not a
        non-negative finite number, or a dict whose labels do not match
        ``classes``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ugmm._classifier import class_weights
    >>> class_weights("balanced", np.array([0, 1]), np.array([0, 0, 0, 1]))
    array([0.66666667, 0.66666667, 0.66666667, 2.        ])
    """
    if class_weight is None:
        return np.ones(len(y))
    if isinstance(class_weight, str) and incremental:
        raise ValueError(
            f"class_weight={class_weight!r} is not supported for partial_fit: one batch does not show "
            "the class frequencies. Compute the weights with "
            "sklearn.utils.class_weight.compute_class_weight('balanced', classes=classes, y=y) on a large "
            "enough sample of the labels and pass them as a dict to class_weight."
        )
    if isinstance(class_weight, dict):
        for label, weight in class_weight.items():
            if isinstance(weight, bool) or not isinstance(weight, Real) or not (0 <= weight < np.inf):
                raise ValueError(
                    f"class_weight must map class labels to non-negative finite numbers; got {weight!r} "
                    f"for class {label!r}."
                )
    # "balanced" weighs the labels present (a warm-start fit may lack some classes)
    labels = np.unique(y) if isinstance(class_weight, str) else classes
    per_class = compute_class_weight(class_weight, classes=labels, y=y)
    return np.asarray(per_class, dtype=np.float64)[np.searchsorted(labels, y)]


def missing_fraction(X):
    """Fraction of the entries of ``X`` that are missing (NaN, or None in raw categorical columns).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Validated data: floats, or objects with raw categorical values.

    Returns
    -------
    fraction : float
        In [0, 1); a fit refuses rows with nothing observed, so it is below 1.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_ugmm._classifier import missing_fraction
    >>> missing_fraction(np.array([[1.0, np.nan], [3.0, 4.0]]))
    0.25
    """
    X = np.asarray(X)
    if X.size == 0:
        return 0.0
    missing = np.isnan(X) if X.dtype.kind == "f" else missing_entries(X)
    # below 1 (input_dropout must be) even for a pathological table of all-missing rows, which fit refuses later
    return float(min(missing.mean(), 0.99))


class UGMMClassifier(ClassifierMixin, BaseUGMM):
    """Classifier over a uGMM-NN (univariate Gaussian mixture model neural network).

    Every neuron is a univariate Gaussian mixture with one component per
    input and outputs a log-density (arXiv 2509.07569). The network is built
    in PyTorch and trained with Adam through skorch.

    Missing values (NaN) are handled natively, at fit and at prediction: the
    internal scaling is fitted on each feature's observed values, and every
    first-layer neuron drops a missing input's component and renormalises
    its mixture over the sample's observed inputs. Every sample needs at
    least one observed feature.

    Parameters
    ----------
    hidden_layer_sizes : array-like of int, int or "auto", default="auto"
        Neurons in each hidden uGMM layer. "auto" is one layer of
        ``clip(8 * n_classes, 64, 256)`` neurons
        (:func:`~sklearn_ugmm._classifier.auto_hidden_layer_sizes`): each
        class's output neuron combines the hidden neurons, so the
        width grows with the number of classes (64 up to 8 classes, 80 for
        10, 208 for 26). The value used is in ``resolved_params_``.
    objective : {"discriminative", "generative"}, default="discriminative"
        "discriminative": one output neuron per class, trained with
        cross-entropy on their log-densities. "generative": the paper's joint
        model; the label is an extra input, a single root neuron scores
        (x, label), training maximises that score, and prediction evaluates
        every class (MPE inference) with probabilities given by the softmax of
        the scores.
    output_layer : {"auto", "product", "mixture"}, default="auto"
        The class neurons. "mixture": uGMM neurons, as in the paper,
        ``out_c = log sum_j pi_cj N(h_j | mu_cj, sigma_cj**2)`` over the last
        hidden layer's outputs ``h``: a class scores high when *any* hidden
        neuron matches (an OR). "product": Gaussian product neurons
        (:class:`~sklearn_ugmm.nn.UGMMProductLayer`), ``out_c = sum_j pi_cj
        log N(h_j | mu_cj, sigma_cj**2)``, a weighted Gaussian naive Bayes
        over the hidden neurons that adds up their evidence (an AND), with
        the same parameters. The hidden layers are uGMM layers either way.
        "auto" is "product" for the discriminative objective, chosen on the
        tuning half of ``examples/benchmarks/bench_suite.py`` (15 sets,
        3-fold: mean accuracy 0.880 against 0.874 with "mixture", better on
        12 of 15 sets, log-loss 0.305 against 0.313), and "mixture" for the
        generative objective (the only one it supports: its root is the
        joint score of (x, label)). The value used is in ``resolved_params_``.
    conditional_weight : float or "auto", default="auto"
        Generative objective only (ignored by the discriminative one): the
        weight ``w`` of a conditional term in the training loss, a hybrid of
        the joint and the conditional likelihood. The loss of a sample
        ``(x, y)`` is ``-root(x, y) + w * CE``, where ``CE`` is the
        cross-entropy at ``y`` of the softmax over the class scores that
        prediction uses (the root with the label input set to each class).
        0 is the paper's pure joint objective, which rewards separating the
        classes only indirectly: its class scores emerge late in training and
        vary with the seeds. "auto" is 0.2 for the generative objective
        (``examples/benchmarks/bench_generative_iris.py``, iris 5-fold CV
        for split seeds 0-4 times model seeds 0-4, 25 runs, at commit
        ``54f405c``, without weight averaging, on the machine of the time;
        single runs depend on the CPU's vector code, see
        ``averaging_epochs``: mean accuracy 0.951, worst run 0.920 and 8
        runs below 0.95 with 0; 0.958 / 0.933 / 2 with 0.1; 0.9645 / 0.953 /
        0 with 0.2; 0.962 / 0.947 / 1 with 0.3; 0.953 / 0.933 / 7 with 1.
        5-fold CV, model seeds 0-2: wine 0.801 ->
        0.859, breast_cancer 0.658 -> 0.822, log-loss 0.629 -> 0.463 and
        0.641 -> 0.430); larger weights helped those two more (1: wine
        0.899, breast_cancer 0.910) but not iris. Each step also scores
        every class: fits took 1.3-1.7 times as long in these runs. 0 for
        the discriminative objective. The value used is in
        ``resolved_params_``; models saved before the option load with 0.
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
        Minibatch size. "auto" is ``min(n_train, clip(n_train // 10, 32,
        200))`` for the discriminative objective, where ``n_train`` is the
        number of rows trained on (after the validation split): about 10
        steps per epoch on small data, so that the stopping rule's patience
        of ``n_iter_no_change`` epochs is not a handful of steps, and
        200-row batches from 2,000 rows on. It is ``min(200, n_train)`` for
        the generative objective, whose joint density overfits with small
        batches.
    learning_rate : {"constant", "adaptive", "cosine"}, default="constant"
        Learning-rate schedule, MLPClassifier's name. "constant" keeps
        ``learning_rate_init``. "adaptive" multiplies the rate by 0.3 each
        time the monitored loss (the one ``n_iter_no_change`` watches) has
        gone ``n_iter_no_change // 4 + 1`` epochs (at least 3) without
        improving by ``tol``; training still stops after ``n_iter_no_change`` epochs without
        progress. "cosine" gives epoch ``e`` (1, 2, ...) the rate
        ``learning_rate_init * (1 + cos(pi * (e - 1) / max_iter)) / 2``, so
        that the last of ``max_iter`` epochs takes small steps. Unlike
        MLPClassifier's (SGD only) they apply to Adam, and only in ``fit``
        (``partial_fit`` keeps the rate; after a "cosine" ``fit`` it trains at
        ``learning_rate_init``). "cosine" suits a fixed, short budget
        (``early_stopping=False`` and a small ``max_iter``): 8 epochs of
        MNIST (10,000 images, ``(128, 64)``,
        ``examples/benchmarks/bench_budget.py``, seeds 0-4, commit 86bb8d5)
        give a mean test accuracy of 0.927 (worst 0.924) against 0.877 (worst
        0.869) with "constant". It is not the default without early stopping: on long
        fits (``max_iter=200``) it overfits more (tuning half of
        ``examples/benchmarks/bench_suite.py``, ``early_stopping=False``:
        0.872 / log-loss 0.416 against 0.874 / 0.379).
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
        probabilities than training to convergence. The split also fits
        ``temperature_`` (see ``label_smoothing``).
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping (stratified
        by class where every class allows it), drawn among the rows of
        positive ``sample_weight``: rows of weight 0 always train.
    n_iter_no_change : int or np.inf, default=10
        Epochs without progress before training stops; ``np.inf`` turns the
        stopping rule off, so training runs exactly ``max_iter`` epochs
        (without a ConvergenceWarning). 10 is MLPClassifier's default; it
        was 20 before ``label_smoothing``, which lets training run longer
        before the validation loss turns. On the tuning half of
        ``examples/benchmarks/bench_suite.py`` with smoothing (model seeds
        0 / 1 / 2, gap to the same-seed MLP): 10 gives -0.04 / -0.10 /
        +0.04 points and log-loss 0.299 / 0.302 / 0.305 in 1.05-1.12 times
        the epochs of the earlier defaults; 20 gives -0.00 / -0.03 / +0.07
        and 0.298 / 0.300 / 0.306 in 1.5 times their epochs.
    averaging_epochs : float or "auto", default="auto"
        Horizon, in epochs, of a moving average of the weights (Polyak
        averaging): validation, early stopping and the fitted model use the
        average while training continues from the current weights, which
        smooths out the noise of a lively learning rate. The horizon grows
        with the epochs run: in epoch ``e`` of a fit (1, 2, ...) it is
        ``min(averaging_epochs, max(1, e / 2))``, so the average never reaches
        back further than about the last half of the epochs run, and a
        short fit (``max_iter=8``) is not held back by its first epochs'
        weights. 1 turns it off (better with a schedule that decays the rate
        to zero). "auto" is 10. For the generative objective it steadies the
        class scores, whose accuracy otherwise moves from epoch to epoch:
        iris, 5-fold CV for split seeds 0-4 times model seeds 0-4
        (``examples/benchmarks/bench_generative_iris.py``), mean 0.9611 and
        worst run 0.9533, the same with AVX2 and AVX-512 vector code; without
        it (1, the earlier "auto") 0.9597 / 0.9400 with AVX-512 and 0.9640 /
        0.9467 with AVX2, where a run's result turns on the last bit of a
        few sums. Applies in ``fit``, not in ``partial_fit``.
    label_smoothing : float or "auto", default="auto"
        Discriminative objective only: the cross-entropy's targets put
        ``1 - label_smoothing`` on the true class and spread the rest evenly
        over all classes (PyTorch's ``cross_entropy(label_smoothing=...)``);
        the early-stopping rule then watches the smoothed validation loss.
        Smoothing keeps the scores from growing overconfident on the training
        rows, so the validation loss turns later and the network trains
        longer. After a smoothed fit with a validation split, the class
        scores get a factor ``temperature_`` in ``[1/2, 2]`` that minimises
        the split's log-loss, which gives back the confidence that smoothing
        takes away (the predicted class does not change). "auto" is 0.1 for
        the discriminative objective when ``early_stopping`` holds out a
        split, and 0 otherwise (without a split nothing would calibrate the
        smoothed scores); the generative objective has no labels to smooth
        and refuses a positive value. Chosen on the tuning half of
        ``examples/benchmarks/bench_suite.py`` (15 sets, 3-fold, model seeds
        0 / 1 / 2 against the same-seed MLP): accuracy gap -0.00 / -0.03 /
        +0.07 points against -0.15 / -0.35 / -0.09 without smoothing,
        log-loss 0.298 / 0.300 / 0.306 against 0.305 / 0.308 / 0.307, with
        ``n_iter_no_change=20`` (then the default), in about 1.6 times as many
        epochs; see ``n_iter_no_change`` for the patience of 10 that keeps
        most of the gain at little extra cost. Smoothing 0.05: -0.10 and
        0.313 at seed 0; 0.1 without the temperature: the same accuracy,
        log-loss 0.333 (underconfident). Smoothed fits need more epochs: a
        short fit with early stopping (``max_iter`` of a few tens) is less
        accurate with it (iris with 30% of the entries missing, 8 hidden
        neurons, 15 epochs, model seeds 0-4: 0.82 against 0.87; equal from 60
        epochs). Smoothing blunts :meth:`score_samples` as an
        out-of-distribution score: it keeps every class's score of a training
        input within a bounded margin of the best one, so the network's
        components widen and unusual inputs score nearly as high (digits,
        classes 5-9 unseen, 5 seeds: AUROC 0.737 against 0.926 with
        ``label_smoothing=0``), while the largest class probability separates
        them better (0.944 against 0.933). For novelty detection with
        ``score_samples`` fit with ``label_smoothing=0``. The value used is in
        ``resolved_params_``; models saved before the option load with 0.
    dropout : float, default=0.0
        Probability of removing each mixture component during training.
    input_dropout : float or "auto", default="auto"
        Missingness-aware training: the probability of treating each
        observed input entry of each training sample as missing. In every
        training step an independent mask per sample drops entries, and the
        first layer drops their components and renormalises over the
        sample's remaining inputs, exactly as it does for NaN; the hidden
        layers are unaffected, and prediction never drops anything. It
        teaches the network to classify from incomplete rows. "auto" is the
        fraction of missing (NaN) entries in the training data: 0 (off) for
        complete data, where training is unchanged; when complete training
        data will meet missing values at prediction, set it to about the
        expected missing fraction. Rows with missing inputs take a slower
        path than complete ones, so a positive value slows training.
    tie_means : bool, default=False
        The paper's parameter tying: component means are the incoming
        activations and each neuron learns where to evaluate its mixture.
    kernel : {"auto", "fused", "reference"}, default="auto"
        Implementation of the uGMM layers; see
        :func:`~sklearn_ugmm.nn.ugmm_log_density`. "auto" uses the fused
        C++ kernel (built once on first use) for large layers and batches,
        and falls back to the reference kernel without a compiler.
    standardize : bool, "yeo-johnson" or "auto", default="auto"
        Internal feature scaling, so that raw-scale data works. True:
        standardise each feature (weighted mean and standard deviation).
        "yeo-johnson": first a weighted Yeo-Johnson power transform per
        feature (unit-free, linear beyond the training range), which brings
        skewed, heavy-tailed features closer to the Gaussian shape of the
        components. False: no scaling. "auto" is "yeo-johnson" for the
        discriminative and True for the generative objective, which the
        transform does not help.
    categorical_features : "from_dtype", array-like of int, str or bool, or None, \
            default="from_dtype"
        The categorical columns, as in HistGradientBoostingClassifier:
        "from_dtype" takes the pandas ``category``, ``object`` and ``string``
        columns of a DataFrame (none for an array); otherwise column indices,
        column names or a boolean mask over the columns; None for none. Each
        categorical column becomes one 0/1 network input per category seen in
        ``fit`` (sorted), inside the fitted preprocessing (``scaler_.encoder``),
        so a raw DataFrame needs no ColumnTransformer. A missing category, or
        one not seen in ``fit``, makes the column's inputs missing values
        (handled natively); a column of more than 255 categories raises a
        ValueError (encode it first, e.g. with TargetEncoder).
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, as in LogisticRegression: a dict
        ``{class_label: weight}`` (classes not in it weigh 1), "balanced"
        (``n_samples / (n_classes * np.bincount(y))`` on the labels of each
        fit) or None (all classes weigh 1). Multiplied with
        ``sample_weight``. ``partial_fit`` accepts a dict but not "balanced",
        since one batch does not show the class frequencies (as
        SGDClassifier): compute the weights with
        :func:`~sklearn.utils.class_weight.compute_class_weight` on a large
        enough sample of the labels and pass them as a dict.
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
        Training loss per epoch (with ``label_smoothing``, of the smoothed
        targets).
    best_loss_ : float
        Smallest training loss in ``loss_curve_``.
    validation_scores_ : list of float or None
        Validation accuracy per epoch (``early_stopping=True`` only), one
        entry per entry of ``loss_curve_``: NaN for epochs trained without a
        validation split (``partial_fit``). Early stopping itself watches
        the validation loss of the training objective and restores the
        epoch where it was lowest.
    best_validation_score_ : float or None
        Best validation accuracy (``early_stopping=True`` only).
    temperature_ : float
        Factor on the class scores in ``predict_proba`` and
        ``predict_log_proba``: fitted on the validation split after a
        label-smoothed fit (see ``label_smoothing``), 1 otherwise;
        ``partial_fit`` keeps the value of the fit it continues.
        ``predict`` and ``score_samples`` do not use it.
    net_ : skorch.NeuralNet
        The skorch net that trained the model (its history and optimiser
        state; it keeps no validation rows).
    module_ : sklearn_ugmm.nn.UGMMNet
        The trained torch network.
    device_ : torch.device
        Device the network is on.
    scaler_ : FeatureScaler
        The internal scaling, fitted once per fit: ``scaler_.transform(X)``
        is what the network sees. ``scaler_.power_params_`` holds the
        Yeo-Johnson transform when it is used (``lambdas``: the power of each
        feature, 1 is the identity; ``shift`` and ``scale``: the centring and
        spread applied before it; ``low`` and ``high``: the range of the
        centred training data beyond which it is linear), ``scaler_.mean_``
        and ``scaler_.scale_`` the standardisation after it.
        ``scaler_.encoder`` is the encoding of the categorical columns (its
        ``is_categorical`` mask and ``categories_``, one array per categorical
        column), applied first, or None without categorical columns; the
        scaling then has one value per numeric feature and per category.
    scaling_mean_, scaling_scale_ : ndarray of shape (n_network_inputs,)
        ``scaler_.mean_`` and ``scaler_.scale_``.
    resolved_params_ : dict
        The values this fit used for the parameters that can be "auto"
        (``hidden_layer_sizes``, ``output_layer``, ``learning_rate_init``, ``batch_size``,
        ``precision_penalty``, ``averaging_epochs``, ``standardize``, ``input_dropout``,
        ``conditional_weight``, ``label_smoothing``), and ``n_train``, the rows
        trained on (after the validation split) that ``batch_size`` and the
        precision penalty depend on. ``partial_fit`` keeps those of its
        first call, except ``batch_size``, resolved again for each call's
        rows (and at most their number, as ``MLPClassifier`` clips it).

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
        "hidden_layer_sizes": [StrOptions({"auto"}), *BaseUGMM._parameter_constraints["hidden_layer_sizes"]],
        "objective": [StrOptions({"discriminative", "generative"})],
        "output_layer": [StrOptions({"auto", "product", "mixture"})],
        "conditional_weight": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "learning_rate_init": [StrOptions({"auto"}), *BaseUGMM._parameter_constraints["learning_rate_init"]],
        "tie_means": ["boolean"],
        "kernel": [StrOptions({"auto", "fused", "reference"})],
        "precision_penalty": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "input_dropout": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="left")],
        "label_smoothing": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="left")],
        "averaging_epochs": [StrOptions({"auto"}), Interval(Real, 1, None, closed="left")],
        "standardize": ["boolean", StrOptions({"yeo-johnson", "auto"})],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "categorical_features": ["array-like", StrOptions({"from_dtype"}), None],
    }

    def __init__(
        self,
        hidden_layer_sizes="auto",
        *,
        objective="discriminative",
        output_layer="auto",
        conditional_weight="auto",
        alpha=1e-4,
        precision_penalty="auto",
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init="auto",
        max_iter=200,
        tol=1e-4,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=10,
        averaging_epochs="auto",
        label_smoothing="auto",
        dropout=0.0,
        input_dropout="auto",
        tie_means=False,
        kernel="auto",
        standardize="auto",
        categorical_features="from_dtype",
        class_weight=None,
        device="cpu",
        n_threads=None,
        callbacks=None,
        random_state=None,
        verbose=0,
        warm_start=False,
    ):
        self._store_params(locals())

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to data X and labels y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples; NaN marks a missing value.
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
        return self._fit(X, y, sample_weight)

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
            The input samples; NaN marks a missing value.
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
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    _auto_parameters = (
        "hidden_layer_sizes", "output_layer", "learning_rate_init", "batch_size", "precision_penalty",
        "averaging_epochs", "standardize", "input_dropout", "conditional_weight", "label_smoothing",
    )
    _requires_y = True
    _fit_allows_nan = True

    def _objective(self, n_features, classes, fitted=False, continuing=False):
        resolved = getattr(self, "resolved_params_", None) if fitted or continuing else None
        keep_sizes = fitted or (isinstance(self.hidden_layer_sizes, str) and self.hidden_layer_sizes == "auto")
        if resolved is not None and "hidden_layer_sizes" in resolved and keep_sizes:
            # the fitted network's sizes, even if the "auto" formula has changed since it was saved
            sizes = tuple(resolved["hidden_layer_sizes"])
        else:
            sizes = self._hidden_sizes(n_features, len(classes))
        output_layer = self.output_layer
        if resolved is not None and fitted:
            # the fitted network's output layer; models saved before the option had mixtures
            output_layer = resolved.get("output_layer", "mixture")
        return make_classifier_objective(
            self.objective,
            n_features,
            sizes,
            len(classes),
            dropout=self.dropout,
            tie_means=self.tie_means,
            kernel=self.kernel,
            output_layer=output_layer,
        )

    def _auto_hidden_sizes(self, n_inputs, n_classes):
        return auto_hidden_layer_sizes(n_inputs, n_classes)

    def _data_auto_values(self, X_train):
        return {"input_dropout": missing_fraction(X_train)}

    def _configure_module(self, module, objective, resolved):
        # the generative objective's label input (after the features) is never dropped
        module.set_input_dropout(resolved["input_dropout"], n_inputs=objective.n_features)

    def _calibration(self, objective, evaluation, resolved, validation, continuing, incremental):
        """``temperature_``: fitted on the validation split after a label-smoothed fit, else 1."""
        if incremental:
            # partial_fit holds nothing out: a continued call keeps the fitted temperature
            return {"temperature_": getattr(self, "temperature_", 1.0) if continuing else 1.0}
        if validation is None or not resolved["label_smoothing"]:
            return {"temperature_": 1.0}
        parameter = next(evaluation.parameters())
        X = torch.as_tensor(validation[0], device=parameter.device, dtype=parameter.dtype)
        return {"temperature_": objective.temperature(evaluation, X, validation[1])}

    def _targets(self, y, classes, *, continuing, incremental):
        check_classification_targets(y)
        if continuing:
            if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(f"classes={classes!r} is not the same as on the first call to partial_fit.")
            classes = self.classes_
        elif incremental:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            classes = np.unique(classes)
        else:
            classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"The number of classes has to be greater than one; got {len(classes)} class.")
        unseen = np.setdiff1d(np.unique(y), classes)
        if len(unseen):
            if continuing and not incremental:
                raise ValueError("warm_start fit got labels that were not seen in the first fit.")
            raise ValueError(f"y contains labels not in classes: {unseen!r}.")
        return np.searchsorted(classes, y), classes

    def _categorical_mask(self, X):
        return categorical_mask(X, self.categorical_features)

    def _label_weights(self, y, classes, *, incremental):
        return class_weights(self.class_weight, classes, y, incremental=incremental)

    def _split(self, n_samples, y_index, rng):
        if n_samples < 2:
            return None  # (one row of positive weight) nothing to hold out: train on every row
        indices = np.arange(n_samples)
        seed = rng.randint(np.iinfo(np.int32).max)
        try:
            return train_test_split(indices, test_size=self.validation_fraction, stratify=y_index, random_state=seed)
        except ValueError:
            # a class too small to stratify: fall back to a plain random split
            return train_test_split(indices, test_size=self.validation_fraction, random_state=seed)

    def _reduced_class_scores(self, X, reduce):
        """``reduce(class scores)`` of the rows of X, in float64 batches."""
        X = self._validated_input(X)
        objective = self._fitted_objective()
        return self._batched(
            lambda module, rows: reduce(objective.class_scores(module, rows)),
            X,
            prepare=lambda rows: _network_features(self.scaler_, rows, dtype=np.float64),
        )

    def _log_proba(self, X):
        # models fitted before the temperature existed have none
        temperature = getattr(self, "temperature_", 1.0)
        return self._reduced_class_scores(X, lambda scores: torch.log_softmax(temperature * scores, dim=1))

    def score_samples(self, X):
        """Log of the model's total score of each sample, summed over the classes.

        Generative objective: ``log sum_y exp root(x, y)``, the root neuron's
        joint score of (x, label) summed over the label values.
        Discriminative objective: ``log sum_c exp out_c(x)``, the log-sum-exp
        of the output neurons' log-densities. Both are computed on the
        internally scaled inputs (``scaler_.transform(X)``).

        This is **not** a normalised density: its integral over the inputs is
        not one (for more than one feature it diverges), and no Jacobian of
        the internal scaling is added. It is a score for ranking inputs by
        how typical they are for the fitted model -- novelty and
        out-of-distribution detection (a low score flags an unusual input);
        compare scores of one fitted model only. For a normalised density
        use :class:`~sklearn_ugmm.UGMMDensityEstimator`. A network trained
        with label smoothing (the default ``label_smoothing="auto"`` when
        early stopping holds out a split) ranks unusual inputs much less well
        (see ``label_smoothing``): for novelty detection fit it with
        ``label_smoothing=0``, or rank by the largest class probability.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples; NaN marks a missing value.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            The log of the total score of each sample (float64).

        Examples
        --------
        >>> from sklearn.datasets import load_iris
        >>> from sklearn_ugmm import UGMMClassifier
        >>> X, y = load_iris(return_X_y=True)
        >>> clf = UGMMClassifier(max_iter=30, random_state=0).fit(X, y)
        >>> far = X[:1] + 100.0
        >>> bool(clf.score_samples(far)[0] < clf.score_samples(X).min())
        True
        """
        check_is_fitted(self)
        return self._reduced_class_scores(X, lambda scores: torch.logsumexp(scores, dim=1))

    def predict_log_proba(self, X):
        """Log of class probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The input samples; NaN marks a missing value.

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
            The input samples; NaN marks a missing value.

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
            The input samples; NaN marks a missing value.

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
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = False
        tags.input_tags.categorical = True
        return tags

