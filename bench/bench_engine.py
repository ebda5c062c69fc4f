"""Benchmark droptune's stacked engine against the cross-validation loop a user writes by hand.

    .venv/bin/python bench/bench_engine.py [--device cpu|cuda] [--quick] [--json out.json]

Both run in this process, alternating round by round, so machine noise hits both alike; every
number printed is a median. The custom cases ("bring your own model", worker.custom) train a
user's nn.Module factory: droptune stacks it with torch.vmap, the baseline loops over folds with
the same module; "reference-generic" is the reference MLP through that generic path, to set
beside the built-in StackedMLP's "reference". Needs only torch, numpy and scikit-learn (no
optuna / service deps).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from droptune.core.memory import pools
from droptune.worker.engine.custom import CustomModel, train_custom_trials
from droptune.worker.engine.data import Dataset, FoldData, load_dataset, make_folds, prepare_folds
from droptune.worker.engine.kinds import CNNConfig, MLPConfig
from droptune.worker.engine.sizing import flops_per_trial
from droptune.worker.engine.stacked import TrainConfig, TrialRates, train_trials

K = 5


@dataclass(frozen=True)
class Case:
    name: str
    dataset: str
    model: MLPConfig | CNNConfig
    epochs: int
    options: dict[str, int | float] = field(default_factory=dict)
    max_b_cpu: int = 32  # a CPU round at B=32 would take minutes for the big case


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.drop = nn.Dropout2d(0.0)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(self.drop(torch.relu(self.conv1(x)))))


def small_resnet(
    n_in: tuple[int, int, int], n_out: int, width: int = 16, blocks: int = 2
) -> nn.Module:
    """A user's own model ("bring your own model"): conv stem with BatchNorm, residual blocks
    with Dropout2d, global average pooling, Dropout, linear head."""
    return nn.Sequential(
        nn.Conv2d(n_in[0], width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *[_ResBlock(width) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.0),
        nn.Linear(width, n_out),
    )


def generic_mlp(
    n_in: int | tuple[int, ...], n_out: int, hidden: tuple[int, ...] = (256, 256)
) -> nn.Module:
    """The reference case's MLP as a user would write it, for the generic (custom) path."""
    d = int(np.prod(n_in))
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(0.0)]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, n_out))


@dataclass(frozen=True)
class CustomCase:
    """A user's module through worker.custom (torch.vmap over the stacked members)."""

    name: str
    dataset: str
    factory: Callable[..., nn.Module]
    epochs: int
    max_b_cpu: int = 32

    @property
    def model(self) -> dict[str, str]:
        return {"factory": self.factory.__name__}


CASES = (
    Case("reference", "digits", MLPConfig((256, 256)), 20),
    Case("cnn", "digits", CNNConfig((32, 64), 128), 10),
    Case(
        "synthetic",
        "synthetic",
        MLPConfig((512, 512)),
        2,
        {"n_samples": 20_000, "n_features": 256, "n_informative": 64, "n_classes": 10},
        max_b_cpu=8,
    ),
)
CUSTOM_CASES = (
    CustomCase("resnet", "digits", small_resnet, 5, max_b_cpu=8),
    # the reference case's MLP through the generic path: compare with "reference" (built-in)
    CustomCase("reference-generic", "digits", generic_mlp, 20),
)


# --- the baseline: what a user writes by hand -------------------------------------------------


def _custom_net(case: CustomCase, ds: Dataset, p: float) -> nn.Module:
    """The user's module with every dropout at p, fed flat rows like the built-ins."""
    n_in = ds.image_shape if ds.image_shape is not None else int(ds.X.shape[1])
    net = case.factory(n_in, ds.n_classes)
    for mod in net.modules():
        if isinstance(mod, nn.modules.dropout._DropoutNd):
            mod.p = p
    return nn.Sequential(nn.Unflatten(1, ds.image_shape), net) if ds.image_shape else net


def _baseline_net(model: MLPConfig | CNNConfig | CustomCase, ds: Dataset, p: float) -> nn.Module:
    if isinstance(model, CustomCase):
        return _custom_net(model, ds, p)
    if isinstance(model, MLPConfig):
        layers: list[nn.Module] = []
        d = ds.X.shape[1]
        for h in model.hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(p)]
            d = h
        return nn.Sequential(*layers, nn.Linear(d, ds.n_classes))
    assert ds.image_shape is not None
    c, h, w = ds.image_shape
    layers = [nn.Unflatten(1, ds.image_shape)]
    for co in model.channels:
        layers += [nn.Conv2d(c, co, 3, padding=1), nn.ReLU(), nn.Dropout2d(p)]
        if pools(h, w):
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = co
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(c * h * w, model.hidden),
        nn.ReLU(),
        nn.Dropout(p),
        nn.Linear(model.hidden, ds.n_classes),
    )


def baseline_trial(
    ds: Dataset,
    model: MLPConfig | CNNConfig | CustomCase,
    cfg: TrainConfig,
    p: float,
    device: torch.device,
) -> float:
    """Mean K-fold validation accuracy, one fold and one small model at a time."""
    torch.manual_seed(cfg.seed)
    accs = []
    for tr, va in make_folds(ds.y, K, cfg.seed):
        scaler = StandardScaler().fit(ds.X[tr])
        x_tr = torch.tensor(scaler.transform(ds.X[tr]), dtype=torch.float32)
        x_va = torch.tensor(scaler.transform(ds.X[va]), dtype=torch.float32, device=device)
        y_tr, y_va = torch.tensor(ds.y[tr]), torch.tensor(ds.y[va], device=device)
        net = _baseline_net(model, ds, p).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loader = DataLoader(TensorDataset(x_tr, y_tr), batch_size=cfg.batch_size, shuffle=True)
        for _ in range(cfg.epochs):
            net.train()
            for xb, yb in loader:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(xb.to(device)), yb.to(device))
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
        net.eval()
        with torch.no_grad():
            accs.append((net(x_va).argmax(1) == y_va).float().mean().item())
    return float(np.mean(accs))


# --- measurement helpers ------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 7) -> float:
    """Median GFLOP/s of an n x n float32 matmul (TF32 allowed on CUDA, as the engine does)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    times = [timed(lambda: a @ b, device)[0] for _ in range(reps)]
    return 2 * n**3 / statistics.median(times) / 1e9


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # process-wide high-water mark (KiB on Linux), so it only ever grows across runs
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def custom_flops_per_trial(
    case: CustomCase, ds: Dataset, data: FoldData, cfg: TrainConfig
) -> float:
    """FLOPs of one trial, as flops_per_trial counts them (training steps 3x a forward, one
    validation forward per epoch), with the forward counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    net = _custom_net(case, ds, 0.0).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(64, data.n_features))
    per_sample = counter.get_total_flops() / 64
    n = data.X_std.shape[1]
    return float(per_sample * cfg.epochs * (3 * sum(data.train_len_host) + n))


def run_case(
    case: Case | CustomCase,
    device: torch.device,
    batches: tuple[int, ...],
    rates: tuple[float, ...],
    peak: float,
) -> dict[str, Any]:
    ds = load_dataset(case.dataset, getattr(case, "options", None) or None)
    cfg = TrainConfig(epochs=case.epochs, batch_size=64, lr=1e-3)
    data = prepare_folds(ds, K, cfg.seed, device)
    if isinstance(case, CustomCase):
        flops = custom_flops_per_trial(case, ds, data, cfg)
    else:
        flops = flops_per_trial(case.model, data, cfg)
    if device.type == "cpu":
        batches = tuple(b for b in batches if b <= case.max_b_cpu)
    notes: set[str] = set()

    def droptune(b: int, first_rate: float) -> list[float]:
        i0 = rates.index(first_rate)
        trials = [TrialRates((rates[(i0 + j) % len(rates)],)) for j in range(b)]
        if isinstance(case, CustomCase):
            res, note = train_custom_trials(data, CustomModel(case.factory), cfg, trials, device)
            notes.update([note] if note else [])
            return [r.mean for r in res]
        return [r.mean for r in train_trials(data, case.model, cfg, trials, device)]

    # warm-up: first calls pay one-off allocator / BLAS / cuDNN set-up costs
    droptune(1, rates[0])
    base_s: list[float] = []
    base_acc: dict[float, float] = {}
    tune_s: dict[int, list[float]] = {b: [] for b in batches}
    tune_acc: dict[float, list[float]] = {r: [] for r in rates}
    mem: dict[int, float] = {}
    for rate in rates:  # one round per rate: baseline, then droptune at every B
        model = case if isinstance(case, CustomCase) else case.model
        dt, acc = timed(partial(baseline_trial, ds, model, cfg, rate, device), device)
        base_s.append(dt)
        base_acc[rate] = acc
        for b in batches:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            dt, accs = timed(partial(droptune, b, rate), device)
            tune_s[b].append(dt / b)
            mem[b] = peak_memory_mb(device)
            for j, a in enumerate(accs[: len(rates)]):
                tune_acc[rates[(rates.index(rate) + j) % len(rates)]].append(a)
    base = statistics.median(base_s)
    per_b = {}
    for b in batches:
        s = statistics.median(tune_s[b])
        per_b[b] = {
            "s_per_trial": s,
            "speedup": base / s,
            "gflops": flops / s / 1e9,
            "pct_peak": 100 * flops / s / 1e9 / peak,
            "peak_mem_mb": mem[b],
        }
    return {
        "case": case.name,
        "dataset": case.dataset,
        "model": case.model if isinstance(case, CustomCase) else asdict(case.model),
        "notes": sorted(notes),
        "epochs": case.epochs,
        "n_samples": int(ds.X.shape[0]),
        "n_features": int(ds.X.shape[1]),
        "flops_per_trial": flops,
        "baseline_s_per_trial": base,
        "baseline_gflops": flops / base / 1e9,
        "droptune": per_b,
        "accuracy": {
            str(r): {"baseline": base_acc[r], "droptune": statistics.median(tune_acc[r])}
            for r in rates
        },
    }


def print_case(res: dict[str, Any], peak: float) -> None:
    print(f"\n== {res['case']}: {res['dataset']} {res['model']} {res['epochs']} epochs, {K}-fold")
    print(
        f"   flops/trial {res['flops_per_trial'] / 1e9:.1f} GFLOP; matmul peak {peak:.0f} GFLOP/s"
    )
    base = res["baseline_s_per_trial"]
    print(f"   baseline        {base:8.3f} s/trial  {res['baseline_gflops']:7.1f} GFLOP/s")
    for b, r in res["droptune"].items():
        print(
            f"   droptune B={b:<4d} {r['s_per_trial']:8.3f} s/trial  {r['gflops']:7.1f} GFLOP/s"
            f" ({r['pct_peak']:4.1f}% of peak)  x{r['speedup']:6.1f}  mem {r['peak_mem_mb']:.0f} MB"
        )
    for note in res.get("notes", []):
        print(f"   note: {note}")
    for rate, a in res["accuracy"].items():
        print(
            f"   dropout {rate}: CV accuracy baseline {a['baseline']:.4f}"
            f"  droptune {a['droptune']:.4f}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (2 rates instead of 3)")
    ap.add_argument("--json", type=Path, help="write results here")
    ap.add_argument("--cases", default=",".join(c.name for c in (*CASES, *CUSTOM_CASES)))
    ap.add_argument(
        "--batches", help="comma-separated B values (default cpu 1,8,32; cuda 1,32,256)"
    )
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    default_b = "1,8,32" if device.type == "cpu" else "1,32,256"
    batches = tuple(int(b) for b in (args.batches or default_b).split(","))
    rates = (0.0, 0.5) if args.quick else (0.0, 0.2, 0.5)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = matmul_peak(device)
    print(
        f"torch {torch.__version__} on {device} ({platform.processor() or platform.machine()},"
        f" {torch.get_num_threads()} threads); matmul peak {peak:.0f} GFLOP/s"
    )
    results = []
    wanted = set(args.cases.split(","))
    for case in (*CASES, *CUSTOM_CASES):
        if case.name in wanted:
            res = run_case(case, device, batches, rates, peak)
            print_case(res, peak)
            results.append(res)
    peak_end = matmul_peak(device)
    print(f"\nmatmul peak re-measured at the end: {peak_end:.0f} GFLOP/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "device": str(device),
                    "device_name": torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "matmul_peak_gflops": peak,
                    "matmul_peak_end_gflops": peak_end,
                    "quick": args.quick,
                    "cases": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
