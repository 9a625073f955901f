"""Training throughput and peak memory of the uGMM layer against the plain formula.

Trains the 784-128-64-10 uGMM network (three uGMM layers, cross-entropy,
Adam) in three ways, side by side in one process:

* ``ours``: :class:`sklearn_ugmm.nn.UGMMNet` (the memory-bounded kernel);
* ``naive``: the same network through the plain, fully materialised formula
  :func:`sklearn_ugmm.nn.ugmm_log_density_reference`, eager;
* ``naive-compiled``: the plain formula through :func:`torch.compile`.

Throughput is measured at batch 128 in interleaved rounds (each round times
every variant in turn, the median round is reported), so that load changes
on the machine hit all variants alike. Peak memory is measured at batch 512,
one fresh subprocess per variant: on CUDA with
``torch.cuda.max_memory_allocated``; on CPU as the peak resident set size
during one training step minus the resident size just before it (after data
loading, model set-up and one warm-up step, with glibc told to return large
freed blocks to the system so that the resident size follows live memory).

Data: MNIST from ``../shared/data/mnist.npz`` (relative to the repository)
when present, else random sparse inputs in [0, 1] resembling it.

Run ``python examples/benchmarks/bench_layer.py [--device cuda]``; about
two minutes on a 2-core CPU, most of it spent in ``torch.compile``.
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sklearn_ugmm.nn import UGMMNet, ugmm_log_density_reference

N_INPUTS, HIDDEN, N_OUTPUTS = 784, (128, 64), 10
VARIANTS = ("ours", "naive", "naive-compiled")
LABELS = {"ours": "ours", "naive": "naive (eager)", "naive-compiled": "naive (torch.compile)"}
TARGETS = {"naive": ("speed", 8.0), "naive-compiled": ("speed", 1.3)}
MEMORY_TARGET = 0.25
MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist.npz"


class NaiveNet(nn.Module):
    """The same network evaluated with the plain formula, layer by layer."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        for layer in self.net.layers:
            x = ugmm_log_density_reference(x, layer.component_loc, layer.scale, layer.log_weights())
        return x


def load_data(n_samples, device, seed=0):
    """MNIST digits scaled to [0, 1] if available, else MNIST-like noise."""
    gen = torch.Generator().manual_seed(seed)
    if MNIST.exists():
        with np.load(MNIST) as data:
            X = torch.as_tensor(data["X_train"][:n_samples], dtype=torch.float32) / 255.0
            y = torch.as_tensor(data["y_train"][:n_samples], dtype=torch.long)
        source = "MNIST"
    else:
        # about 80% background zeros, the rest spread over (0, 1]
        ink = torch.rand(n_samples, N_INPUTS, generator=gen) < 0.2
        X = torch.rand(n_samples, N_INPUTS, generator=gen) * ink
        y = torch.randint(N_OUTPUTS, (n_samples,), generator=gen)
        source = "random MNIST-like"
    return X.to(device), y.to(device), source


def make_trainer(variant, X, y, batch, device, seed=0):
    """One training step closure for ``variant`` over cycling batches of ``X``."""
    torch.manual_seed(seed)
    net = UGMMNet(N_INPUTS, HIDDEN, N_OUTPUTS, device=device)
    net.init_from_data(X[:2048], generator=torch.Generator().manual_seed(seed))
    model = net if variant == "ours" else NaiveNet(net)
    if variant == "naive-compiled":
        model = torch.compile(model)
    return training_step(model, net.parameters(), X, y, batch)


def training_step(model, parameters, X, y, batch, **adam_options):
    """A closure doing one Adam step of cross-entropy on the next batch of ``X`` (cycling)."""
    opt = torch.optim.Adam(parameters, lr=1e-3, **adam_options)
    batches = [(X[i : i + batch], y[i : i + batch]) for i in range(0, len(X) - batch + 1, batch)]
    state = {"i": 0}

    def step():
        xb, yb = batches[state["i"] % len(batches)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    return step


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(X, y, device, batch, rounds, variants):
    """Median seconds per training step of each variant, in interleaved rounds."""
    steps_per_round = {"ours": 4, "naive": 1, "naive-compiled": 4}
    trainers, warmup = {}, {}
    for variant in variants:
        trainers[variant] = make_trainer(variant, X, y, batch, device)
        start = time.perf_counter()
        for _ in range(2):  # the first call compiles, the second settles
            trainers[variant]()
        synchronize(device)
        warmup[variant] = time.perf_counter() - start
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            n_steps = steps_per_round[variant]
            synchronize(device)
            start = time.perf_counter()
            for _ in range(n_steps):
                trainers[variant]()
            synchronize(device)
            times[variant].append((time.perf_counter() - start) / n_steps)
    return {v: float(np.median(t)) for v, t in times.items()}, warmup


def _return_freed_memory_to_os():
    # glibc keeps freed blocks below a dynamic mmap threshold in its heap, so
    # the resident size would not drop after a step; a fixed threshold maps
    # every large tensor separately and unmaps it when it is freed.
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 128 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024)


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(variant, device, batch):
    """Peak memory (bytes) of one training step, measured in this process."""
    if device.type == "cpu":
        _return_freed_memory_to_os()
    X, y, _ = load_data(max(4 * batch, 2048), device)
    step = make_trainer(variant, X, y, batch, device)
    step()  # warm-up: compilation, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return peak_rss_rise(step)


def peak_rss_rise(fn):
    """Rise of the peak resident set size (bytes) while ``fn()`` runs."""
    base = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size (VmHWM) to the current one
    fn()
    return (_proc_status_kib("VmHWM") - base) * 1024


def child_peak_bytes(args, label):
    """Run this script's ``args`` in a fresh interpreter; the ``peak_bytes`` it prints (nan on failure)."""
    # the child imports what this process imports (an uninstalled checkout too)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        print(f"memory measurement of {label} failed:\n{result.stderr}", file=sys.stderr)
        return float("nan")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def measure_memory(device, batch, variants):
    """Run :func:`memory_child` for each variant in a fresh subprocess."""
    return {
        variant: child_peak_bytes(
            [__file__, "--device", str(device), "--memory-child", variant, "--memory-batch", str(batch),
             "--threads", str(torch.get_num_threads())],
            variant,
        )
        for variant in variants
    }


def print_table(args, source, per_step, warmup, peaks):
    ours, ours_mem = per_step["ours"], peaks.get("ours", float("nan"))
    threads = f", torch threads: {torch.get_num_threads()}" if args.device.type == "cpu" else ""
    print(f"\nuGMM-NN {N_INPUTS}-{'-'.join(map(str, HIDDEN))}-{N_OUTPUTS}, cross-entropy + Adam, "
          f"device {args.device}{threads}, data: {source}")
    print(f"throughput at batch {args.batch} (median of {args.rounds} interleaved rounds), "
          f"peak memory of one training step at batch {args.memory_batch}\n")
    header = (f"{'variant':<24}{'ms/step':>10}{'samples/s':>11}{'warm-up s':>11}"
              f"{'ours speed-up':>15}{'peak MiB':>10}{'ours/peak':>11}")
    print(header)
    print("-" * len(header))
    for v in per_step:
        mem = peaks.get(v, float("nan"))
        print(f"{LABELS[v]:<24}{1e3 * per_step[v]:>10.1f}{args.batch / per_step[v]:>11.0f}"
              f"{warmup[v]:>11.1f}{per_step[v] / ours:>14.2f}x{mem / 2**20:>10.1f}"
              f"{ours_mem / mem:>11.4f}")
    print()
    for v, (_, target) in TARGETS.items():
        if v in per_step:
            ratio = per_step[v] / ours
            verdict = "met" if ratio >= target else "NOT met"
            print(f"throughput ours vs {LABELS[v]:<22}: {ratio:6.2f}x  (target >= {target}x: {verdict})")
    for v in ("naive", "naive-compiled"):
        if v in peaks:
            ratio = ours_mem / peaks[v]
            verdict = "met" if ratio <= MEMORY_TARGET else "NOT met"
            print(f"peak memory ours / {LABELS[v]:<22}: {ratio:6.4f}   "
                  f"(target <= {MEMORY_TARGET}: {verdict})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=128, help="batch size for throughput")
    parser.add_argument("--memory-batch", type=int, default=512, help="batch size for memory")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.memory_child:
        peak = memory_child(args.memory_child, args.device, args.memory_batch)
        print(json.dumps({"peak_bytes": peak}))
        return
    variants = [v for v in VARIANTS if not (args.no_compile and v == "naive-compiled")]
    X, y, source = load_data(args.batch * 16, args.device)
    per_step, warmup = measure_throughput(X, y, args.device, args.batch, args.rounds, variants)
    peaks = measure_memory(args.device, args.memory_batch, variants)
    print_table(args, source, per_step, warmup, peaks)


if __name__ == "__main__":
    main()
