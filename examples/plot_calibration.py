"""
=======================================
Probability calibration
=======================================

Reliability curves of :class:`~sklearn_ugmm.UGMMClassifier` and
:class:`~sklearn.neural_network.MLPClassifier` on a held-out set, drawn with
:class:`~sklearn.calibration.CalibrationDisplay`, with the Brier score and
the log-loss of each. Early stopping (on by default) restores the epoch of
the best validation loss, which keeps the uGMM probabilities from becoming
over-confident, and after training with smoothed labels (the default) a
temperature fitted on the same validation split rescales the class scores;
:class:`~sklearn.calibration.CalibratedClassifierCV` can recalibrate them
further.
"""

import matplotlib.pyplot as plt
from sklearn.calibration import CalibratedClassifierCV, CalibrationDisplay
from sklearn.datasets import make_classification
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_ugmm import UGMMClassifier

X, y = make_classification(
    n_samples=3000, n_features=10, n_informative=4, n_redundant=2, class_sep=0.7, random_state=0
)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, random_state=0)

models = {
    "uGMM-NN": UGMMClassifier(hidden_layer_sizes=(16,), max_iter=40, random_state=0),
    "uGMM-NN + isotonic": CalibratedClassifierCV(
        UGMMClassifier(hidden_layer_sizes=(16,), max_iter=40, random_state=0), method="isotonic", cv=3
    ),
    "MLP": make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=300, random_state=0)),
}

fig, ax = plt.subplots(figsize=(6, 6))
for name, model in models.items():
    model.fit(X_train, y_train)
    proba = model.predict_proba(X_test)[:, 1]
    print(
        f"{name:>20}: accuracy {model.score(X_test, y_test):.3f}, "
        f"Brier {brier_score_loss(y_test, proba):.4f}, log-loss {log_loss(y_test, proba):.4f}"
    )
    CalibrationDisplay.from_predictions(y_test, proba, n_bins=10, name=name, ax=ax)
ax.set_title("reliability curves (held-out half)")
plt.show()
