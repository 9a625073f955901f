"""
==================================================
Decision boundaries against MLPClassifier
==================================================

Probability maps of :class:`~sklearn_ugmm.UGMMClassifier` and
:class:`~sklearn.neural_network.MLPClassifier` on three 2-D toy problems.
Near the data both fit the classes well. Away from it the uGMM maps show
axis-aligned stripes: every first-layer component looks at a single feature,
so far along one axis the decision is made by whichever components have the
widest scales on that axis, while the ReLU network extrapolates its boundary
linearly. Neither model is uncertain far from the data: the class
log-densities of the uGMM output neurons differ by a quadratic in the
distance, so they predict with probability close to one there too.
"""

import matplotlib.pyplot as plt
from sklearn.datasets import make_circles, make_classification, make_moons
from sklearn.inspection import DecisionBoundaryDisplay
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_ugmm import UGMMClassifier

datasets = {
    "moons": make_moons(n_samples=200, noise=0.25, random_state=0),
    "circles": make_circles(n_samples=200, noise=0.15, factor=0.5, random_state=1),
    "linear": make_classification(
        n_samples=200, n_features=2, n_redundant=0, n_informative=2, n_clusters_per_class=1, random_state=2
    ),
}
models = {
    "uGMM-NN (32,)": UGMMClassifier(hidden_layer_sizes=(32,), max_iter=40, random_state=0),
    "MLP (32,)": make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=500, random_state=0)),
}

fig, axes = plt.subplots(len(datasets), len(models), figsize=(8, 11), sharex="row", sharey="row")
for row, (data_name, (X, y)) in enumerate(datasets.items()):
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, random_state=0)
    for col, (model_name, model) in enumerate(models.items()):
        ax = axes[row, col]
        model.fit(X_train, y_train)
        DecisionBoundaryDisplay.from_estimator(
            model, X, response_method="predict_proba", cmap="RdBu", alpha=0.8, ax=ax, grid_resolution=60, eps=1.0
        )
        ax.scatter(X_train[:, 0], X_train[:, 1], c=y_train, cmap="RdBu", edgecolors="k", s=20)
        ax.scatter(X_test[:, 0], X_test[:, 1], c=y_test, cmap="RdBu", edgecolors="k", marker="^", s=25, alpha=0.6)
        ax.set_title(f"{model_name} on {data_name}\ntest accuracy {model.score(X_test, y_test):.2f}")
        ax.set_xlabel("")
        ax.set_ylabel("")
fig.tight_layout()
plt.show()

