"""The skorch glue: build a skorch ``NeuralNet`` around a uGMM module and train it.

skorch runs the training loop (batching, shuffling, optimiser steps, epoch
history, callbacks, progress printing); the estimators wrap it rather than
subclass it. Sample weights travel in the target array: the last column of
``y`` holds each sample's weight and :class:`WeightedLoss` turns per-sample
losses into ``sum(w * loss) / sum(w)``.
"""

import copy
import math
import warnings

import numpy as np
import torch
from sklearn.utils._param_validation import InvalidParameterError
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from skorch.utils import noop, to_tensor
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from ._progress import EpochProgress

__all__ = [
    "WeightedLoss",
    "DivergenceGuard",
    "InterruptGuard",
    "PenalisedNet",
    "ValidationScore",
    "WeightAveraging",
    "build_net",
    "pack_target",
]

#: ``learning_rate="adaptive"`` multiplies the learning rate by this factor on a plateau
ADAPTIVE_LR_FACTOR = 0.3


def pack_target(y, sample_weight):
    """Stack targets (or nothing) with the sample weights as the last column."""
    w = np.asarray(sample_weight, dtype=np.float32)[:, None]
    if y is None:
        return w
    return np.hstack([np.asarray(y, dtype=np.float32).reshape(len(w), -1), w])


class WeightedLoss(torch.nn.Module):
    """``sum(w * loss) / sum(w)`` of a per-sample loss.

    Parameters
    ----------
    per_sample_loss : callable
        ``per_sample_loss(output, target) -> Tensor of shape (batch,)``, where
        ``target`` is the packed target without its weight column.
    """

    def __init__(self, per_sample_loss):
        super().__init__()
        self.per_sample_loss = per_sample_loss

    def forward(self, output, packed):
        weight = packed[:, -1].to(output.dtype)
        losses = self.per_sample_loss(output, packed[:, :-1])
        total = weight.sum()
        # a batch made only of zero-weight samples contributes nothing
        return (weight * losses).sum() / total.clamp(min=torch.finfo(total.dtype).tiny)


class DivergenceGuard(Callback):
    """Stop with a clear error as soon as a training loss is NaN or infinite."""

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if loss is None:
            return
        value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        if not math.isfinite(value):
            epoch = len(net.history)
            raise FloatingPointError(
                f"the training loss became {value} during epoch {epoch}; "
                "the model diverged. Lower learning_rate_init, increase alpha, or keep "
                "standardize=True (inputs with extreme values destabilise training)."
            )


class InterruptGuard(Callback):
    """Keep the weights of the last completed epoch, for a fit cut short by Ctrl-C.

    skorch ends training quietly on ``KeyboardInterrupt`` (its stopping rules
    raise one too). When the interrupt came from the user in the middle of an
    epoch, this restores the weights as they were at the end of the last
    completed epoch and warns; ``interrupted_`` tells the estimator. With
    early stopping, the stopping rule (a later callback) then restores the
    completed epoch with the best validation loss, as at any other end.
    ``completed_epochs_`` counts the epochs this training call completed; an
    interrupt before the first one is not warned about (there is nothing to
    keep: the estimators then raise ``KeyboardInterrupt`` and stay as they were).
    """

    def initialize(self):
        self.interrupted_ = False
        self.completed_epochs_ = 0
        self._in_epoch = False
        self._snapshot = None
        return self

    def on_train_begin(self, net, **kwargs):
        self.interrupted_ = False
        self.completed_epochs_ = 0
        self._snapshot = _state_copy(net.module_)

    def on_epoch_begin(self, net, **kwargs):
        self._in_epoch = True

    def on_epoch_end(self, net, **kwargs):
        self._in_epoch = False
        self.completed_epochs_ += 1
        self._snapshot = _state_copy(net.module_)

    def on_train_end(self, net, **kwargs):
        if not self._in_epoch:
            return
        self._in_epoch = False
        self.interrupted_ = True
        net.module_.load_state_dict(self._snapshot)
        if self.completed_epochs_ == 0:
            return
        completed = sum(1 for row in net.history if "train_loss" in row)
        warnings.warn(
            f"Training was interrupted (KeyboardInterrupt) during epoch {completed + 1}; "
            f"the model keeps the weights of the last completed epoch ({completed}), or, with "
            "early stopping, of the completed epoch with the best validation loss.",
            UserWarning,
        )


class PenalisedNet(NeuralNet):
    """skorch's ``NeuralNet`` with an optional penalty on the module added to the training loss.

    Parameters
    ----------
    module, criterion, **kwargs
        As for ``skorch.NeuralNet``.
    penalty : callable, default=None
        ``penalty(module) -> Tensor`` added to the loss of every training
        batch (not to the validation loss, which early stopping watches).
    output_fn : callable, default=None
        ``output_fn(module, X) -> Tensor``: the output the criterion scores,
        in training and validation steps, instead of ``module(X)`` (the
        generative objective's conditional term needs the class scores).
    """

    def __init__(self, module, criterion, penalty=None, output_fn=None, **kwargs):
        super().__init__(module, criterion, **kwargs)
        self.penalty = penalty
        self.output_fn = output_fn

    def infer(self, x, **fit_params):
        if self.output_fn is None:
            return super().infer(x, **fit_params)
        return self.output_fn(self.module_, to_tensor(x, device=self.device))

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if training and self.penalty is not None:
            loss = loss + self.penalty(self.module_)
        return loss


#: How fast the weight average's horizon grows: at most this many epochs per epoch run.
AVERAGING_RAMP = 0.5


class BestEpochStopping(EarlyStopping):
    """skorch's ``EarlyStopping`` that restores the epoch of the lowest monitored loss.

    Patience counts epochs without an improvement by ``threshold``, as in
    skorch and ``MLPClassifier``; the weights restored at the end are those
    of the lowest loss seen (``MLPClassifier``'s ``best_coefs_``), where
    skorch restores the last epoch that improved by more than
    ``threshold``, which may be a few epochs before the lowest. The epoch
    that stops training still ends for the callbacks after this one.
    """

    def on_train_begin(self, net, **kwargs):
        super().on_train_begin(net, **kwargs)
        self.lowest_ = np.inf

    def on_epoch_end(self, net, **kwargs):
        score = net.history[-1, self.monitor]
        if self._is_score_improved(score):
            self.misses_ = 0
            self.dynamic_threshold_ = self._calc_new_threshold(score)
        else:
            self.misses_ += 1
        if score < self.lowest_:
            self.lowest_ = score
            self.best_epoch_ = net.history[-1, "epoch"]
            if self.load_best:
                self.best_model_weights_ = copy.deepcopy(net.module_.state_dict())
        if self.misses_ == self.patience:
            # the epoch ends here: the callbacks after this one (the user's) still see it end
            callbacks = [callback for _, callback in getattr(net, "callbacks_", ())]
            for callback in callbacks[callbacks.index(self) + 1 :] if self in callbacks else ():
                callback.on_epoch_end(net, **kwargs)
            raise KeyboardInterrupt


class WeightAveraging(Callback):
    """Validate, stop and finish on an exponential moving average of the weights.

    After every training step the average moves towards the current weights,
    so that each epoch it covers ``1 / h`` of the distance (Polyak averaging
    with a horizon of about ``h`` epochs). The horizon grows with the epochs
    run: in epoch ``e`` (1, 2, ...) it is ``h = min(horizon, max(1, e *
    ramp))``, so the average never reaches back much further than the last
    ``1 / ramp`` of the epochs run -- a short fit is not held back by the
    weights of its first epochs (``h = 1`` makes the average the current
    weights). The average, not
    the last step's weights, is what the validation pass scores, what the
    other callbacks see at the end of each epoch (early stopping keeps and
    restores it) and what the net holds when training ends. The next epoch
    trains on from the current weights, so Adam's state stays consistent.

    Parameters
    ----------
    horizon : float
        Epochs the average spans at most; more than 1.
    steps_per_epoch : int
        Optimiser steps per epoch.
    ramp : float, default=AVERAGING_RAMP
        The horizon in epoch ``e`` is at most ``e * ramp``.
    """

    def __init__(self, horizon, steps_per_epoch, ramp=None):
        self.horizon = horizon
        self.steps_per_epoch = steps_per_epoch
        self.ramp = ramp

    def initialize(self):
        self._average = None
        self._current = None
        return self

    def on_train_begin(self, net, **kwargs):
        self._average = [p.detach().clone() for p in net.module_.parameters()]
        self._current = None
        self._epoch = 0

    def epoch_horizon(self, epoch):
        """The horizon (epochs) of the average during epoch ``epoch`` (1, 2, ...) of this fit."""
        ramp = AVERAGING_RAMP if self.ramp is None else self.ramp
        return min(self.horizon, max(1.0, epoch * ramp))

    def on_epoch_begin(self, net, **kwargs):
        self._use_current(net)
        self._epoch += 1
        horizon = self.epoch_horizon(self._epoch)
        self._weight = 1.0 - (1.0 - 1.0 / horizon) ** (1.0 / max(self.steps_per_epoch, 1))

    def on_batch_begin(self, net, training=False, **kwargs):
        if not training:
            self._use_average(net)

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            with torch.no_grad():
                for average, param in zip(self._average, net.module_.parameters()):
                    average.lerp_(param, self._weight)

    def on_epoch_end(self, net, **kwargs):
        self._use_average(net)

    def on_train_end(self, net, **kwargs):
        self._use_average(net)
        # the copies are not part of the fitted model (and would pin GPU memory in a pickle)
        self._average = None
        self._current = None

    def _use_average(self, net):
        if self._average is None or self._current is not None:
            return
        self._current = _state_copy(net.module_)
        with torch.no_grad():
            for param, average in zip(net.module_.parameters(), self._average):
                param.copy_(average)

    def _use_current(self, net):
        if self._current is None:
            return
        net.module_.load_state_dict(self._current)
        self._current = None


def _state_copy(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class ValidationScore(Callback):
    """Record a score of the model on the validation data after each epoch.

    Parameters
    ----------
    score : callable
        ``score(module, X, packed_y)`` with the module in eval mode: a float,
        recorded as ``valid_score``, or a dict of history keys to floats.
    """

    def __init__(self, score):
        self.score = score

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        if dataset_valid is None:
            return
        module = net.module_
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                X = torch.as_tensor(dataset_valid.X, device=net.device)
                value = self.score(module, X, dataset_valid.y)
        finally:
            module.train(was_training)
        values = value if isinstance(value, dict) else {"valid_score": value}
        for key, v in values.items():
            net.history.record(key, float(v))


def build_net(
    module,
    per_sample_loss,
    *,
    learning_rate_init,
    alpha,
    batch_size,
    max_iter,
    tol,
    n_iter_no_change,
    generator,
    device,
    verbose,
    validation_data=None,
    validation_score=None,
    validation_monitor="valid_loss",
    extra_callbacks=(),
    lr_patience=None,
    cosine_epochs=None,
    penalty=None,
    averaging_epochs=None,
    progress_epochs=None,
    steps_per_epoch=1,
    output_fn=None,
):
    """A skorch ``NeuralNet`` that trains ``module`` with Adam.

    Without ``validation_data`` training stops once the training loss has not
    improved by ``tol`` for ``n_iter_no_change`` epochs (MLPClassifier's
    rule); with it, once the validation history entry ``validation_monitor``
    (lower is better) has not, and the best epoch's weights are restored.
    ``alpha`` is an L2 penalty on the mixing logits (Adam's weight decay);
    ``penalty(module)``, when given, is added to every training batch's loss.
    ``output_fn(module, X)``, when given, replaces ``module(X)`` as the
    output that ``per_sample_loss`` scores.
    With ``lr_patience`` the learning rate is multiplied by ``ADAPTIVE_LR_FACTOR`` each
    time that same monitor has gone ``lr_patience`` epochs without improving by
    ``tol`` (``ReduceLROnPlateau`` through skorch's ``LRScheduler``). With
    ``cosine_epochs`` the rate of epoch ``e`` (1, 2, ...) is
    ``learning_rate_init * (1 + cos(pi * (e - 1) / cosine_epochs)) / 2``, a
    half cosine that would reach zero after ``cosine_epochs`` epochs. With
    ``averaging_epochs`` (more than 1) the net validates, stops on and ends
    with a moving average of the weights over about that many epochs of
    ``steps_per_epoch`` steps (:class:`WeightAveraging`). ``progress_epochs``:
    the epochs of one training call, for the progress display (a
    ``partial_fit`` call trains one), when it is not ``max_iter``.
    """
    monitor = "train_loss" if validation_data is None else validation_monitor
    callbacks = []
    if averaging_epochs is not None and averaging_epochs > 1:
        # first: the interrupt guard then snapshots (and restores) the average
        callbacks.append(("weight_averaging", WeightAveraging(averaging_epochs, steps_per_epoch)))
    callbacks += [("interrupt_guard", InterruptGuard()), ("divergence_guard", DivergenceGuard())]
    if validation_data is not None and validation_score is not None:
        # before the stopping rule, which ends the epoch by raising
        callbacks.append(("valid_score", ValidationScore(validation_score)))
    if lr_patience is not None:
        # before the stopping rule, which ends the epoch by raising
        callbacks.append(
            (
                "adaptive_lr",
                LRScheduler(
                    policy=ReduceLROnPlateau,
                    monitor=monitor,
                    patience=lr_patience - 1,  # torch cuts after patience + 1 bad epochs
                    factor=ADAPTIVE_LR_FACTOR,
                    threshold=tol,
                    threshold_mode="abs",
                ),
            )
        )
    if cosine_epochs is not None:
        callbacks.append(("cosine_lr", LRScheduler(policy=CosineAnnealingLR, T_max=cosine_epochs)))
    if verbose:
        # before the stopping rule, which ends the epoch by raising
        callbacks.append(("progress", EpochProgress(monitor, epochs=progress_epochs)))
    callbacks.append(
        (
            "stopping",
            BestEpochStopping(
                monitor=monitor,
                patience=n_iter_no_change,
                threshold=tol,
                threshold_mode="abs",
                load_best=validation_data is not None,
                sink=noop,  # the progress display reports the stop
            ),
        )
    )
    callbacks.extend(_named(extra_callbacks))
    train_split = None
    if validation_data is not None:
        train_split = predefined_split(Dataset(*validation_data))
    return PenalisedNet(
        module=module,
        penalty=penalty,
        output_fn=output_fn,
        criterion=WeightedLoss,
        criterion__per_sample_loss=per_sample_loss,
        optimizer=torch.optim.Adam,
        **_fused_adam(device),
        optimizer__param_groups=[("*logits", {"weight_decay": alpha})],
        lr=learning_rate_init,
        max_epochs=max_iter,
        batch_size=batch_size,
        iterator_train=BatchLoader,
        iterator_valid=BatchLoader,
        iterator_train__shuffle=True,
        iterator_train__generator=generator,
        # every DataLoader iterator draws a base seed, from the global RNG unless given one
        iterator_valid__generator=generator,
        train_split=train_split,
        callbacks=callbacks,
        callbacks__print_log=None,  # replaced by the progress display
        device=device,
        verbose=int(verbose),
    )


class _ArrayBatchSampler(BatchSampler):
    # index arrays, not lists: sklearn's indexing inspects a list element by element
    def __iter__(self):
        for batch in super().__iter__():
            yield np.asarray(batch, dtype=np.intp)


class _RowsOf(torch.utils.data.Dataset):
    """A skorch ``Dataset`` indexed by a whole batch of rows at once.

    skorch turns an index array into a list, which scikit-learn's indexing
    then checks element by element (2-3% of the fit time of a small
    network); arrays and tensors are indexed directly instead.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        plain = (np.ndarray, torch.Tensor)
        self.direct = (
            isinstance(dataset, Dataset)
            and not dataset.X_is_ndframe
            and isinstance(dataset.X, plain)
            and (dataset.y is None or isinstance(dataset.y, plain))
        )

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, rows):
        if not self.direct:
            return self.dataset[rows]
        data = self.dataset
        return data.transform(data.X[rows], None if data.y is None else data.y[rows])


class BatchLoader(DataLoader):
    """A DataLoader that fetches each minibatch with one fancy index.

    The plain DataLoader indexes the dataset once per row and collates the
    rows, which costs more than a training step of a small network. This one
    draws the same row order (the same ``RandomSampler`` with the same
    generator, cut into the same batches) and asks the dataset for a whole
    batch at once.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, generator=None, **kwargs):
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        super().__init__(
            _RowsOf(dataset),
            sampler=_ArrayBatchSampler(sampler, batch_size, drop_last=False),
            batch_size=None,
            generator=generator,
            **kwargs,
        )


def _fused_adam(device):
    """Adam's fused kernel where torch has it (CPU from 2.4, CUDA): ~20% faster steps."""
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and torch.__version__ >= "2.4"):
        return {"optimizer__fused": True}
    return {}


def _named(callbacks):
    """The ``callbacks`` parameter as (name, callback) pairs; InvalidParameterError for any other entry."""
    named = []
    for i, entry in enumerate(callbacks or ()):
        pair = isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
        if not isinstance(entry[1] if pair else entry, Callback):
            raise InvalidParameterError(
                f"The 'callbacks' parameter must hold skorch callbacks or (name, callback) pairs; "
                f"entry {i} is {entry!r}."
            )
        named.append(entry if pair else (f"user_{i}_{type(entry).__name__}", entry))
    return named
