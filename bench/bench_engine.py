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
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_cases import CASES, CUSTOM_CASES, Case, CustomCase, K, _custom_net, baseline_trial

from droptune.worker.engine.custom import CustomModel, train_custom_trials
from droptune.worker.engine.data import Dataset, FoldData, load_dataset, prepare_folds
from droptune.worker.engine.sizing import flops_per_trial
from droptune.worker.engine.stacked import TrainConfig, TrialRates, train_trials

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
