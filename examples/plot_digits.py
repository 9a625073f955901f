"""
=====================================
Handwritten digits
=====================================

The 8x8 digits of scikit-learn (1797 images, 64 pixel features, 10
classes) with a small uGMM network, its confusion matrix, and the
mixing weights of a hidden neuron drawn as an image: each first-layer
component belongs to one pixel, so a neuron's weights form an 8x8 map of the
pixels it listens to.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import ConfusionMatrixDisplay, log_loss
from sklearn.model_selection import train_test_split

from sklearn_ugmm import UGMMClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)

clf = UGMMClassifier(hidden_layer_sizes=(32,), max_iter=25, random_state=0).fit(X_train, y_train)
print(
    f"test accuracy {clf.score(X_test, y_test):.3f}, "
    f"test log-loss {log_loss(y_test, clf.predict_proba(X_test)):.3f} ({clf.n_iter_} epochs)"
)

# %%
# Confusion matrix
# ----------------
ConfusionMatrixDisplay.from_estimator(clf, X_test, y_test, colorbar=False)
plt.show()

# %%
# What the hidden neurons look at
# -------------------------------
# Mixing weights of the first layer, one 8x8 image per neuron (the eight
# neurons with the most concentrated weights).
weights = clf.module_.layers[0].log_weights().exp().detach().numpy()
entropy = -(weights * np.log(weights)).sum(axis=1)
fig, axes = plt.subplots(2, 4, figsize=(9, 4.6))
for ax, j in zip(axes.ravel(), np.argsort(entropy)[:8]):
    ax.imshow(weights[j].reshape(8, 8), cmap="viridis")
    ax.set_title(f"neuron {j}")
    ax.set_axis_off()
fig.suptitle("first-layer mixing weights per pixel")
fig.tight_layout()
plt.show()
