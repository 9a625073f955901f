"""Quick demo: UGMMClassifier in a scikit-learn workflow.

Run with ``python examples/quickstart.py`` (well under a minute on a laptop CPU).
"""

from sklearn.datasets import load_breast_cancer
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split

from sklearn_ugmm import UGMMClassifier

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)

# Raw-scale features are fine: the estimator standardises internally.
clf = UGMMClassifier(random_state=0).fit(X_train, y_train)
proba = clf.predict_proba(X_test)
print(f"uGMM-NN {clf.module_.n_inputs}-{'-'.join(map(str, clf.resolved_params_['hidden_layer_sizes']))}-{clf.module_.n_outputs}, "
      f"{clf.n_iter_} epochs")
print(f"test accuracy {accuracy_score(y_test, clf.predict(X_test)):.3f}, "
      f"test log-loss {log_loss(y_test, proba):.3f}")
