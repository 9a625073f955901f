"""TrainingCurveDisplay: training loss and validation score per epoch."""

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._utils import check_matplotlib_support, get_axes

__all__ = ["TrainingCurveDisplay"]


def _labels(estimator):
    """Axis labels of the loss and of the validation score for an estimator."""
    if getattr(estimator, "_estimator_type", None) == "classifier" or hasattr(estimator, "classes_"):
        if getattr(estimator, "objective", "discriminative") == "generative":
            return "training loss (negative log root score)", "validation accuracy"
        return "training loss (cross-entropy)", "validation accuracy"
    return "training loss (negative log-likelihood per sample)", "validation log-likelihood per sample"


class TrainingCurveDisplay:
    """Training loss and validation score per epoch of a uGMM estimator.

    Draws ``loss_curve_`` (the training loss of each epoch) and, when the
    estimator was fitted with ``early_stopping=True``,
    ``validation_scores_`` on a second y axis (validation accuracy for the
    classifier, validation mean log-likelihood for the density estimator,
    both in the standardised space the network sees). Early stopping restores
    the epoch of the best validation *loss*, which is not always the epoch of
    the best validation score; that epoch is marked when the training
    history (``net_.history``) records it.

    Create it with :meth:`from_estimator`; the constructor takes
    precomputed values.

    Parameters
    ----------
    loss : ndarray of shape (n_epochs,)
        Training loss per epoch.
    validation_scores : ndarray of shape (n_valid_epochs,), default=None
        Validation score per epoch, for the last ``n_valid_epochs`` epochs.
    best_epoch : int, default=None
        Epoch (1-based) whose weights the model holds, marked by a vertical
        line.
    loss_label : str, default="training loss"
        Label of the loss axis.
    score_label : str, default="validation score"
        Label of the validation score axis.

    Attributes
    ----------
    loss_line_ : matplotlib Line2D
        The training loss.
    validation_line_ : matplotlib Line2D or None
        The validation score (None without early stopping).
    best_epoch_line_ : matplotlib Line2D or None
        The restored epoch.
    ax_ : matplotlib Axes
        Axes of the training loss.
    ax_validation_ : matplotlib Axes or None
        Twin axes of the validation score.
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_ugmm import UGMMClassifier
    >>> from sklearn_ugmm.inspection import TrainingCurveDisplay
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = UGMMClassifier(max_iter=10, random_state=0).fit(X, y)
    >>> disp = TrainingCurveDisplay.from_estimator(clf)
    >>> len(disp.loss_line_.get_ydata()) == clf.n_iter_
    True
    >>> disp.ax_validation_.get_ylabel()
    'validation accuracy'
    """

    def __init__(self, loss, *, validation_scores=None, best_epoch=None, loss_label="training loss",
                 score_label="validation score"):
        self.loss = loss
        self.validation_scores = validation_scores
        self.best_epoch = best_epoch
        self.loss_label = loss_label
        self.score_label = score_label

    @classmethod
    def from_estimator(cls, estimator, *, ax=None):
        """Read the training history of a fitted estimator and plot it.

        Parameters
        ----------
        estimator : UGMMClassifier or UGMMDensityEstimator
            A fitted estimator.
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure when None.

        Returns
        -------
        display : TrainingCurveDisplay
            The display, with the artists drawn.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from sklearn_ugmm import UGMMDensityEstimator
        >>> from sklearn_ugmm.inspection import TrainingCurveDisplay
        >>> X = np.random.RandomState(0).normal(size=(200, 2))
        >>> est = UGMMDensityEstimator(hidden_layer_sizes=(8,), max_iter=5, early_stopping=False).fit(X)
        >>> disp = TrainingCurveDisplay.from_estimator(est)
        >>> disp.validation_line_ is None
        True
        """
        check_matplotlib_support(f"{cls.__name__}.from_estimator")
        check_is_fitted(estimator)
        loss = np.asarray(getattr(estimator, "loss_curve_", []), dtype=np.float64)
        scores = getattr(estimator, "validation_scores_", None)
        scores = None if scores is None else np.asarray(scores, dtype=np.float64)
        loss_label, score_label = _labels(estimator)
        display = cls(
            loss,
            validation_scores=scores,
            best_epoch=_restored_epoch(estimator, len(loss)),
            loss_label=loss_label,
            score_label=score_label,
        )
        return display.plot(ax=ax)

    def plot(self, ax=None):
        """Plot the curves.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure when None.

        Returns
        -------
        display : TrainingCurveDisplay
            Object that stores the computed values and the artists.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from sklearn_ugmm.inspection import TrainingCurveDisplay
        >>> disp = TrainingCurveDisplay([1.0, 0.5, 0.4], validation_scores=[0.6, 0.8, 0.7]).plot()
        >>> disp.validation_line_.get_xdata().tolist()
        [1, 2, 3]
        """
        check_matplotlib_support(f"{type(self).__name__}.plot")
        ax = get_axes(ax)
        loss = np.asarray(self.loss, dtype=np.float64)
        epochs = np.arange(1, len(loss) + 1)
        (self.loss_line_,) = ax.plot(epochs, loss, color="tab:blue", marker=".", label="training loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel(self.loss_label)
        lines = [self.loss_line_]

        self.validation_line_ = None
        self.ax_validation_ = None
        if self.validation_scores is not None:
            scores = np.asarray(self.validation_scores, dtype=np.float64)
            # after warm starts, the scores cover the last fit only
            valid_epochs = np.arange(len(loss) - len(scores) + 1, len(loss) + 1)
            self.ax_validation_ = ax.twinx()
            (self.validation_line_,) = self.ax_validation_.plot(
                valid_epochs, scores, color="tab:orange", marker=".", label="validation score"
            )
            self.ax_validation_.set_ylabel(self.score_label)
            lines.append(self.validation_line_)

        self.best_epoch_line_ = None
        if self.best_epoch is not None:
            self.best_epoch_line_ = ax.axvline(self.best_epoch, color="0.5", linestyle=":", label="restored epoch")
            lines.append(self.best_epoch_line_)
        ax.legend(lines, [line.get_label() for line in lines], fontsize="small")
        ax.set_title("training curve")
        self.ax_ = ax
        self.figure_ = ax.figure
        return self


def _restored_epoch(estimator, n_epochs):
    """Epoch of the best validation loss when early stopping restored it, else None."""
    if not getattr(estimator, "early_stopping", False) or not hasattr(estimator, "net_"):
        return None
    history = [row for row in estimator.net_.history if "train_loss" in row]
    losses = [row.get("valid_loss") for row in history]
    if not history or any(v is None for v in losses):
        return None
    losses = np.asarray(losses, dtype=np.float64)
    if not np.any(np.isfinite(losses)):
        return None
    # the history covers the last fit, which ends the loss curve
    return int(n_epochs - len(losses) + 1 + np.nanargmin(losses))
