"""The cost of a uGMM network against a ReLU MLP of the same shape.

For the paper's MNIST network (784-128-64-10) and two tabular networks
(satimage 36-64-6 and magic 10-64-2, the classifier's default hidden layer),
side by side in one process:

* ``uGMM fused``: :class:`sklearn_ugmm.nn.UGMMNet` on the fused C++ kernel,
  with the output neurons :class:`sklearn_ugmm.UGMMClassifier` uses (its
  default ``output_layer="auto"`` is Gaussian product neurons for the
  discriminative objective; ``--output-layer mixture`` measures the paper's
  uGMM output neurons instead);
* ``uGMM reference``: the same network on the reference (blocked PyTorch) kernel;
* ``uGMM tied, fused``: ``tie_means=True`` (the paper's parameter tying);
* ``MLP (ReLU)``: ``nn.Linear`` layers of the same sizes with ReLU.

Columns: trainable parameters; analytic forward cost per sample, as
multiply/add FLOPs and exponentials (a uGMM component costs ``x - mu``,
two multiplications, an addition, one exp and the accumulation: 5 FLOPs and
one exp; a neuron adds one log; a product output neuron's component costs
the same 5 FLOPs and no exp; an MLP weight costs a multiply-add, 2
FLOPs); one training step (cross-entropy, Adam with its fused kernel as in
the estimators, the stated batch), as the
median over interleaved rounds of wall-clock time and of process CPU time
(the CPU time is what to compare on a machine shared with other jobs);
prediction time per 1000 rows (``PREDICT_REPEATS`` calls after a warm-up call
in each round; ``torch.no_grad``, eval mode, and for the
uGMM networks the kernel's inference-only routes, as in the estimators'
prediction methods: ``sklearn_ugmm.nn._fused.inference_routes``), wall and
CPU, in float32 and (CPU) in float64, the dtype the estimators evaluate in
(both networks converted); and peak memory
of one training step (as in ``bench_layer.py``: a fresh subprocess per
variant, the rise of the peak resident set size during the step). Ratios
are to the MLP.

Data: MNIST and the KEEL tabular sets from ``../shared/data`` (relative to
the repository) when present, else random data of the same shapes.

Run ``python examples/benchmarks/bench_cost.py [--threads N]``; about three
minutes on a 2-core CPU (``--no-memory`` skips the subprocesses).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import DEFAULT_DATA_DIR, load_dataset  # noqa: E402
from bench_layer import _return_freed_memory_to_os, child_peak_bytes, peak_rss_rise, training_step  # noqa: E402

from sklearn_ugmm.nn import UGMMNet  # noqa: E402
from sklearn_ugmm.nn import _fused  # noqa: E402

#: name -> (inputs, hidden sizes, classes, data set)
NETS = {
    "mnist": (784, (128, 64), 10, "mnist"),
    "satimage": (36, (64,), 6, "satimage"),
    "magic": (10, (64,), 2, "magic"),
}
VARIANTS = ("fused", "reference", "tied", "mlp")
#: The output neurons of the estimators' networks (UGMMClassifier's "auto").
OUTPUT_LAYER = "product"
LABELS = {
    "fused": "uGMM fused",
    "reference": "uGMM reference",
    "tied": "uGMM tied, fused",
    "mlp": "MLP (ReLU)",
}


def load_data(name, n_rows, seed=0):
    """Float32 inputs (standardised; MNIST scaled to [0, 1]) and labels of a net's data set."""
    n_inputs, _, n_classes, source = NETS[name]
    rng = np.random.default_rng(seed)
    try:
        if source == "mnist":
            with np.load(DEFAULT_DATA_DIR / "mnist.npz") as data:
                X = data["X_train"][:n_rows].reshape(-1, 784) / 255.0
                y = data["y_train"][:n_rows]
        else:
            X, y = load_dataset(source)
            X = (X - X.mean(0)) / X.std(0).clip(min=1e-12)
        origin = source
    except FileNotFoundError:
        X = rng.random((n_rows, n_inputs)) if source == "mnist" else rng.normal(size=(n_rows, n_inputs))
        y = rng.integers(n_classes, size=n_rows)
        origin = "random"
    idx = rng.permutation(len(X))[:n_rows]
    idx = np.resize(idx, n_rows)  # small sets are cycled
    X = torch.as_tensor(X[idx], dtype=torch.float32)
    return X, torch.as_tensor(np.asarray(y)[idx], dtype=torch.long), origin


def make_model(name, variant, X, seed=0, output_layer=OUTPUT_LAYER):
    n_inputs, hidden, n_classes, _ = NETS[name]
    torch.manual_seed(seed)
    if variant == "mlp":
        sizes = [n_inputs, *hidden, n_classes]
        layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        return nn.Sequential(*layers[:-1])
    kernel = "reference" if variant == "reference" else "fused"
    net = UGMMNet(n_inputs, hidden, n_classes, kernel=kernel, tie_means=variant == "tied", output_layer=output_layer)
    net.init_from_data(X[:2048], generator=torch.Generator().manual_seed(seed))
    return net


def count_cost(name, variant, output_layer=OUTPUT_LAYER):
    """Trainable parameters, forward FLOPs (multiply/add) and exponentials per sample."""
    n_inputs, hidden, n_classes, _ = NETS[name]
    sizes = [n_inputs, *hidden, n_classes]
    params = flops = exps = 0
    last = len(sizes) - 2
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        product = output_layer == "product" and i == last
        if variant == "mlp":
            params += n_in * n_out + n_out
            flops += 2 * n_in * n_out + 2 * n_out  # multiply-adds, bias, ReLU
        else:
            loc = n_out if variant == "tied" else n_in * n_out
            params += loc + 2 * n_in * n_out  # means, scales, mixing logits
            flops += 5 * n_in * n_out
            exps += 0 if product else n_in * n_out + n_out  # one exp per component, one log per neuron
    return params, flops, exps


def make_step(model, X, y, batch):
    # Adam's fused kernel where torch has one, as the estimators train
    fused = torch.__version__ >= "2.4" or None
    return training_step(model, model.parameters(), X, y, batch, fused=fused)


def make_predict(model, X):
    def predict():
        model.eval()
        with torch.no_grad(), _fused.inference_routes():
            model(X)
        model.train()

    return predict


def make_predict64(model, X):
    """Prediction on a float64 copy of the model, as the estimators evaluate."""
    import copy

    twin = copy.deepcopy(model).double().eval()
    X64 = X.double()

    def predict():
        with torch.no_grad(), _fused.inference_routes():
            twin(X64)

    return predict


#: Timed calls of each prediction per round, after one untimed call: a single call of a
#: 0.2 ms prediction right after another variant ran measured its cold caches (the
#: float64 ratios moved by a third between identical runs).
PREDICT_REPEATS = 10


def _timed(fn, repeats, warm=False):
    if warm:
        fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def measure_times(name, variants, batch, predict_rows, rounds, output_layer=OUTPUT_LAYER):
    """Median step and predict times (wall, CPU) of each variant, in interleaved rounds."""
    X, y, origin = load_data(name, max(16 * batch, predict_rows))
    jobs = {}
    for v in variants:
        model = make_model(name, v, X, output_layer=output_layer)
        jobs[v] = (
            make_step(model, X, y, batch),
            make_predict(model, X[:predict_rows]),
            make_predict64(model, X[:predict_rows]),
        )
        for fn in jobs[v]:  # warm-up: first build of the kernel, optimiser state
            fn()
    samples = {v: {"step": [], "step_cpu": [], "predict": [], "predict_cpu": [], "predict64_cpu": []}
               for v in variants}
    for _ in range(rounds):
        for v in variants:
            step, predict, predict64 = jobs[v]
            wall, cpu = _timed(step, 3)
            samples[v]["step"].append(wall)
            samples[v]["step_cpu"].append(cpu)
            wall, cpu = _timed(predict, PREDICT_REPEATS, warm=True)
            # per 1000 rows
            samples[v]["predict"].append(wall * 1000 / predict_rows)
            samples[v]["predict_cpu"].append(cpu * 1000 / predict_rows)
            _, cpu = _timed(predict64, PREDICT_REPEATS, warm=True)
            samples[v]["predict64_cpu"].append(cpu * 1000 / predict_rows)
    return {v: {k: float(np.median(s)) for k, s in d.items()} for v, d in samples.items()}, origin


def memory_child(name, variant, batch, output_layer=OUTPUT_LAYER):
    """Peak memory (bytes) of one training step, measured in this process (CPU)."""
    _return_freed_memory_to_os()
    X, y, _ = load_data(name, max(4 * batch, 2048))
    step = make_step(make_model(name, variant, X, output_layer=output_layer), X, y, batch)
    step()  # warm-up
    return peak_rss_rise(step)


def measure_memory(name, variants, batch, output_layer=OUTPUT_LAYER):
    """Run :func:`memory_child` for each variant in a fresh subprocess."""
    args = ["--batch", str(batch), "--threads", str(torch.get_num_threads()), "--output-layer", output_layer]
    return {v: child_peak_bytes([__file__, "--memory-child", name, v, *args], f"{name}/{v}") for v in variants}


def print_table(name, origin, args, costs, times, peaks):
    n_inputs, hidden, n_classes, _ = NETS[name]
    shape = "-".join(map(str, [n_inputs, *hidden, n_classes]))
    print(f"\n{name} {shape} (data: {origin}), {args.output_layer} output neurons, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}, "
          f"median of {args.rounds} interleaved rounds")
    header = (f"{'variant':<18}{'params':>9}{'MFLOP/s.':>9}{'exp/s.':>8}{'step ms':>9}{'x MLP':>7}"
              f"{'CPU ms':>8}{'x MLP':>7}{'pred ms/1k':>11}{'x MLP':>7}{'CPU':>7}{'x MLP':>7}"
              f"{'f64 CPU':>8}{'x MLP':>7}{'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    mlp = times["mlp"]
    for v in times:
        params, flops, exps = costs[v]
        t = times[v]
        print(f"{LABELS[v]:<18}{params:>9}{flops / 1e6:>9.3f}{exps:>8}{1e3 * t['step']:>9.2f}"
              f"{t['step'] / mlp['step']:>7.1f}{1e3 * t['step_cpu']:>8.2f}{t['step_cpu'] / mlp['step_cpu']:>7.1f}"
              f"{1e3 * t['predict']:>11.2f}{t['predict'] / mlp['predict']:>7.1f}"
              f"{1e3 * t['predict_cpu']:>7.2f}{t['predict_cpu'] / mlp['predict_cpu']:>7.1f}"
              f"{1e3 * t['predict64_cpu']:>8.2f}{t['predict64_cpu'] / mlp['predict64_cpu']:>7.1f}"
              f"{peaks.get(v, float('nan')) / 2**20:>9.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    parser.add_argument("--batch", type=int, default=128, help="training batch size")
    parser.add_argument("--predict-rows", type=int, default=1000, help="rows per prediction call")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--output-layer", choices=("product", "mixture"), default=OUTPUT_LAYER,
                        help="the uGMM networks' output neurons (default: the classifier's, product)")
    parser.add_argument("--memory-child", nargs=2, metavar=("NET", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps({"peak_bytes": memory_child(*args.memory_child, args.batch, args.output_layer)}))
        return None
    if _fused.load() is None:
        print(f"fused kernel unavailable ({_fused.failure_reason()}): 'fused' rows use the reference kernel")
    results = {}
    for name in args.nets:
        costs = {v: count_cost(name, v, args.output_layer) for v in VARIANTS}
        times, origin = measure_times(name, VARIANTS, args.batch, args.predict_rows, args.rounds, args.output_layer)
        peaks = {} if args.no_memory else measure_memory(name, VARIANTS, args.batch, args.output_layer)
        print_table(name, origin, args, costs, times, peaks)
        results[name] = {"costs": costs, "times": times, "peaks": peaks}
    return results


if __name__ == "__main__":
    main()
