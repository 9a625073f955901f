"""Hyperparameter search on a Dask cluster through joblib's dask backend."""

import distributed
import numpy as np
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV

from sklearn_ugmm import UGMMClassifier


def test_grid_search_on_local_dask_cluster_matches_sequential():
    import joblib

    X, y = load_iris(return_X_y=True)
    grid = {"hidden_layer_sizes": [(4,), (8,)], "alpha": [1e-4, 1e-2]}
    estimator = UGMMClassifier(max_iter=15, n_iter_no_change=np.inf, early_stopping=False, random_state=0)
    sequential = GridSearchCV(estimator, grid, cv=3, n_jobs=1).fit(X, y)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster, distributed.Client(cluster):
        with joblib.parallel_backend("dask"):
            on_dask = GridSearchCV(estimator, grid, cv=3, n_jobs=-1).fit(X, y)
    assert on_dask.best_params_ == sequential.best_params_
    np.testing.assert_array_equal(on_dask.cv_results_["mean_test_score"], sequential.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(on_dask.predict_proba(X), sequential.predict_proba(X))
