"""The benchmark cases of bench/bench_engine.py, and the baseline it times droptune against: the
per-fold cross-validation loop a user writes by hand (one small nn.Module per fold). Needs only
torch, numpy and scikit-learn."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from droptune.core.memory import pools
from droptune.worker.engine.data import Dataset, make_folds
from droptune.worker.engine.kinds import CNNConfig, MLPConfig
from droptune.worker.engine.stacked import TrainConfig

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
