"""The ``verbose`` progress display of a fit: one line that says where training stands.

skorch's own table prints every history column of every epoch with ANSI
colours; :class:`EpochProgress` replaces it with what a person waiting for a
fit wants to know: epochs done of the maximum, time per epoch, time left at
most (early stopping usually ends sooner), the training loss and the best
validation result so far. In a terminal it rewrites one line in place; when
the output is not a terminal (a log file, a pipe, a notebook) it prints plain
lines, at most one every ``interval`` seconds. It never writes escape codes.
"""

import math
import sys
import time

import numpy as np
from skorch.callbacks import Callback

__all__ = ["EpochProgress", "format_duration"]


def format_duration(seconds):
    """A short human-readable duration.

    Examples
    --------
    >>> from sklearn_ugmm._progress import format_duration
    >>> format_duration(0.0123), format_duration(42.4), format_duration(3725)
    ('0.012 s', '42 s', '1 h 02 min')
    """
    if not math.isfinite(seconds):
        return "?"
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class EpochProgress(Callback):
    """Report training progress once per epoch (``verbose > 0``).

    Parameters
    ----------
    monitor : str, default="valid_loss"
        History entry whose best (lowest) value is shown and whose stopping
        rule is reported at the end; the best epoch shown is the one early
        stopping keeps.
    stream : file-like or None, default=None
        Where to write; ``sys.stdout`` at the start of training when None.
    interval : float, default=10.0
        Seconds between plain lines when the stream is not a terminal (the
        first and the last epoch are always shown); 0 shows every epoch.
    epochs : int or None, default=None
        Epochs of one training call when it is not ``net.max_epochs`` (a
        ``partial_fit`` call trains one).
    """

    def __init__(self, monitor="valid_loss", stream=None, interval=10.0, epochs=None):
        self.monitor = monitor
        self.stream = stream
        self.interval = interval
        self.epochs = epochs

    def initialize(self):
        self._stream = None
        self._live = False
        self._width = 0
        return self

    def on_train_begin(self, net, **kwargs):
        self._stream = self.stream if self.stream is not None else sys.stdout
        isatty = getattr(self._stream, "isatty", None)
        self._live = bool(isatty and isatty())
        self._width = 0
        self._start = time.perf_counter()
        self._first_epoch = len(net.history)
        self._last_written = -math.inf
        self._pending = None

    def on_epoch_end(self, net, **kwargs):
        done = len(net.history) - self._first_epoch
        total = net.max_epochs if self.epochs is None else self.epochs
        elapsed = time.perf_counter() - self._start
        per_epoch = elapsed / done
        line = (
            f"epoch {done}/{total}  {format_duration(per_epoch)}/epoch  "
            f"at most {format_duration(per_epoch * (total - done))} left  {self._scores(net.history)}"
        )
        self._pending = None
        if self._live:
            self._write("\r" + line.ljust(self._width))
            self._width = len(line)
        elif done == 1 or self.interval <= 0 or elapsed - self._last_written >= self.interval:
            self._write(line + "\n")
            self._last_written = elapsed
        else:
            self._pending = line  # shown at the end if no later line replaces it

    def on_train_end(self, net, **kwargs):
        if self._stream is None:
            return
        if self._pending is not None:
            self._write(self._pending + "\n")
        done = len(net.history) - self._first_epoch
        summary = f"trained {done} epoch(s) in {format_duration(time.perf_counter() - self._start)}"
        stopping = dict(net.callbacks_).get("stopping")
        if stopping is not None and stopping.misses_ >= stopping.patience:
            summary += (
                f"; stopped: {stopping.monitor} did not improve by {stopping.threshold:g} "
                f"in {stopping.patience} epochs"
            )
            if getattr(stopping, "load_best", False) and stopping.best_epoch_ > self._first_epoch:
                summary += f", kept epoch {stopping.best_epoch_ - self._first_epoch}"
        elif self.epochs is None and done >= net.max_epochs:
            summary += "; reached max_iter"
        self._write(("\n" if self._live and self._width else "") + summary + "\n")
        self._stream = None

    def _scores(self, history):
        row = history[-1]
        parts = []
        if "train_loss" in row and self.monitor != "train_loss":
            parts.append(f"train loss {row['train_loss']:.4f}")
        if self.monitor in row:
            values = [r[self.monitor] for r in history[self._first_epoch :] if self.monitor in r]
            best = int(np.nanargmin(values)) if not np.all(np.isnan(values)) else 0
            name = self.monitor.replace("_", " ")
            parts.append(f"{name} {row[self.monitor]:.4f} (best {values[best]:.4f} at epoch {best + 1})")
        if "valid_score" in row and "valid_log_loss" in row:
            # the classifier's score is the accuracy (the density's is minus its loss)
            parts.append(f"valid accuracy {row['valid_score']:.4f}")
        return "  ".join(parts)

    def _write(self, text):
        self._stream.write(text)
        self._stream.flush()
