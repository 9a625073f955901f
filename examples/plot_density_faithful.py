"""
================================================
A normalised density on the Old Faithful data
================================================

:class:`~sklearn_ugmm.UGMMDensityEstimator` arranges uGMM neurons
autoregressively, so that ``exp(score_samples)`` is a true density and
:meth:`~sklearn_ugmm.UGMMDensityEstimator.sample` draws exact samples. We fit
it to the 272 eruptions of the Old Faithful geyser (duration and waiting
time, R's ``datasets::faithful``) and compare its contours, samples and
held-out log-likelihood with a :class:`~sklearn.mixture.GaussianMixture` and a
:class:`~sklearn.neighbors.KernelDensity`.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neighbors import KernelDensity
from sklearn.preprocessing import StandardScaler

from sklearn_ugmm import UGMMDensityEstimator


def load_faithful():
    """The shared data set when present, else the copy shipped with the examples."""
    try:
        here = Path(__file__).resolve().parent
    except NameError:  # run interactively
        here = Path.cwd()
    shared = here.parent.parent / "shared" / "data" / "tabular" / "faithful.npz"
    if shared.exists():
        return np.load(shared)["X"].astype(float)
    return np.loadtxt(here / "data" / "faithful.csv", delimiter=",", skiprows=1)


X = load_faithful()
X_train, X_test = train_test_split(X, test_size=0.25, random_state=0)

# %%
# Three density estimators
# ------------------------
ugmm = UGMMDensityEstimator(hidden_layer_sizes=(16,), max_iter=150, random_state=0).fit(X_train)
gmm = GaussianMixture(n_components=2, covariance_type="full", random_state=0).fit(X_train)
# KernelDensity has one bandwidth for all features: fit it on standardised
# data (chosen by cross-validation) and correct the log-density for the scaling.
scaler = StandardScaler().fit(X_train)
kde_search = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-1.3, 0, 12)}, cv=5)
kde = kde_search.fit(scaler.transform(X_train)).best_estimator_
log_jacobian = -np.sum(np.log(scaler.scale_))


def kde_score_samples(Z):
    return kde.score_samples(scaler.transform(Z)) + log_jacobian


scores = {
    "uGMM-NN (autoregressive)": ugmm.score(X_test),
    "GaussianMixture (2, full)": gmm.score(X_test),
    f"KernelDensity (bw={kde.bandwidth:.2f}, standardised)": kde_score_samples(X_test).mean(),
}
for name, value in scores.items():
    print(f"{name:>42}: held-out log-likelihood per sample {value:.3f}")

# %%
# The density integrates to one
# -----------------------------
# A Riemann sum of ``exp(score_samples)`` on a wide grid.
gx, gy = np.meshgrid(np.linspace(0.5, 6.5, 200), np.linspace(30, 110, 200))
grid = np.column_stack([gx.ravel(), gy.ravel()])
cell = (gx[0, 1] - gx[0, 0]) * (gy[1, 0] - gy[0, 0])
print(f"integral of the uGMM density on the grid: {np.exp(ugmm.score_samples(grid)).sum() * cell:.3f}")

# %%
# Contours and samples
# --------------------
fig, axes = plt.subplots(1, 3, figsize=(13, 4.3), sharex=True, sharey=True)
densities = {
    "uGMM-NN": (ugmm.score_samples(grid), ugmm.sample(272, random_state=0)),
    "GaussianMixture": (gmm.score_samples(grid), gmm.sample(272)[0]),
    "KernelDensity": (kde_score_samples(grid), scaler.inverse_transform(kde.sample(272, random_state=0))),
}
for ax, (name, (log_density, samples)) in zip(axes, densities.items()):
    ax.contourf(gx, gy, np.exp(log_density).reshape(gx.shape), levels=12, cmap="Blues")
    ax.scatter(X[:, 0], X[:, 1], s=6, c="k", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=6, c="tab:orange", alpha=0.7, label="samples")
    ax.set_title(name)
    ax.set_xlabel("eruption duration (min)")
axes[0].set_ylabel("waiting time (min)")
axes[0].legend(loc="upper left")
fig.tight_layout()
plt.show()
