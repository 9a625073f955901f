"""Visual inspection of fitted uGMM estimators.

scikit-learn style display objects: build them with ``from_estimator``, draw
them with ``plot``; the matplotlib artists they draw are stored as
attributes. They need matplotlib (``pip install sklearn-ugmm[plot]``), which
is imported only when something is drawn.

* :class:`NeuronDisplay`: the univariate Gaussian mixture of one neuron.
* :class:`LayerDisplay`: the mixing weights of a whole layer, as a heatmap.
* :class:`TrainingCurveDisplay`: training loss and validation score per epoch.
"""

from ._layer import LayerDisplay
from ._neuron import NeuronDisplay
from ._training import TrainingCurveDisplay

__all__ = ["LayerDisplay", "NeuronDisplay", "TrainingCurveDisplay"]
