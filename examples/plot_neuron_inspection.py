"""
==========================================
Looking inside a uGMM-NN: neuron displays
==========================================

Every neuron of a uGMM network is a univariate Gaussian mixture with one
component per input. :mod:`sklearn_ugmm.inspection` draws them:

* :class:`~sklearn_ugmm.inspection.LayerDisplay`: the mixing weights of a
  layer, i.e. which inputs each neuron listens to;
* :class:`~sklearn_ugmm.inspection.NeuronDisplay`: the mixture of one neuron
  over the range of the activations that reach it;
* :class:`~sklearn_ugmm.inspection.TrainingCurveDisplay`: the loss and the
  validation score per epoch.

All values are in the network's internal space: the first layer sees the
standardised features, deeper layers see the log-densities of the layer
before.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_wine

from sklearn_ugmm import UGMMClassifier
from sklearn_ugmm.inspection import LayerDisplay, NeuronDisplay, TrainingCurveDisplay

X, y = load_wine(return_X_y=True, as_frame=True)
clf = UGMMClassifier(hidden_layer_sizes=(8,), max_iter=60, random_state=0).fit(X, y)
print(f"training accuracy {clf.score(X, y):.3f} after {clf.n_iter_} epochs")

# %%
# Training curve
# --------------
# The dotted line is the epoch early stopping restored (best validation loss).
TrainingCurveDisplay.from_estimator(clf)
plt.show()

# %%
# Which features each hidden neuron weights
# -----------------------------------------
# Feature names come from the DataFrame the model was fitted on.
fig, ax = plt.subplots(figsize=(9, 4))
LayerDisplay.from_estimator(clf, layer=0, ax=ax)
fig.tight_layout()
plt.show()

# %%
# One hidden neuron
# -----------------
# The black curve is the mixture ``sum_k pi_k N(t | mu_k, sigma_k^2)`` as a
# function of a common argument ``t``; the dashed curves are its largest
# weighted components, one per input feature. The grey histogram pools the
# incoming (standardised) feature values, each feature counting with its
# mixing weight.
weights = clf.module_.layers[0].log_weights().exp().detach().numpy()
neuron = int(np.argmax(weights.max(axis=1)))  # the most selective neuron
NeuronDisplay.from_estimator(clf, X, layer=0, neuron=neuron, max_components=4)
plt.show()

# %%
# The output layer
# ----------------
# Output neuron ``c`` scores class ``c``. With the classifier's default
# ``output_layer="product"`` it is a Gaussian product over the hidden
# activations (log-densities), ``sum_j pi_cj log N(h_j | mu_cj, sigma_cj^2)``:
# it adds up the evidence of every hidden neuron, weighted by ``pi_cj``. Its
# heatmap shows which hidden neurons carry each class; the dashed curves
# show where each class expects them, and the black curve is their
# normalised weighted product over a common argument (a Gaussian).
fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
for c, ax in enumerate(axes):
    NeuronDisplay.from_estimator(clf, X, layer=-1, neuron=c, max_components=3, ax=ax)
    ax.set_title(f"output neuron {c} (class {clf.classes_[c]})")
fig.tight_layout()
plt.show()

LayerDisplay.from_estimator(clf, layer=-1)
plt.show()
