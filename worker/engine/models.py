"""Stacked ("batched") models: M independent networks trained as one.

Member m owns slice [m] of every parameter. Batched matmuls (bmm) and grouped convolutions make
one kernel do the work of M small ones, which is where the engine's speed comes from. Each
member is initialised exactly as nn.Linear / nn.Conv2d would be, and a member can be copied to or
from a standalone nn.Sequential, which is how the tests prove that stacking changes nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from droptune.core.memory import pools


def _uniform_(t: torch.Tensor, fan_in: int, gen: torch.Generator | None) -> None:
    # kaiming_uniform_(a=sqrt(5)) and nn.Linear's bias init both reduce to U(-1/sqrt(fan_in), ..)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        t.uniform_(-bound, bound, generator=gen)


class MaskRNG:
    """Where dropout masks come from; one draw covers every member of a layer.

    With `folds` = K (as the engine sets it), members are laid out m = b*K + k and one draw of
    uniforms per fold is shared by every trial b: the mask a member gets depends only on its fold,
    its rate and the step, never on which other trials share the batch or were pruned from it.
    So a trial's scores are the same however many trials a worker stacks, and trials on a fold
    see nested masks (a unit dropped at rate 0.3 is dropped at 0.5 too): common random numbers,
    which make rates less noisy to compare. Without `folds` every member draws its own.

    On CPU, torch.rand (mt19937, ~3 ns per float) plus a broadcast compare cost more than the
    matmuls they guard, so masks are built from 16-bit lanes of numpy SFC64 raw words (4 masks
    per 64-bit draw) with float arithmetic only: rates are resolved to 1/65536. On CUDA the
    device RNG is cheap and torch.rand is used.
    """

    def __init__(
        self,
        seed: int,
        device: torch.device | str = "cpu",
        folds: int | None = None,
        torch_rand: bool | None = None,  # None: on accelerators only (tests force either path)
    ) -> None:
        self.device = torch.device(device)
        self.folds = folds
        self.torch_rand = self.device.type != "cpu" if torch_rand is None else torch_rand
        self._bits = np.random.SFC64(seed)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(seed)

    def keep_scale(self, shape: Sequence[int], keep: torch.Tensor) -> torch.Tensor:
        """A float tensor of `shape` (members first): 1/keep[m] with probability keep[m], else 0."""
        k = self.folds if self.folds and shape[0] % self.folds == 0 else shape[0]
        rest = tuple(shape[1:])
        # [B, K, ...rest]: the draw is [1, K, ...rest], broadcast over the B trials
        kv = keep.view(shape[0] // k, k, *(1,) * len(rest))
        if self.torch_rand:
            u = torch.rand((1, k, *rest), generator=self._gen, device=self.device)
            return torch.where(u < kv, 1.0 / kv, 0.0).view(tuple(shape))
        n = k * math.prod(rest)
        raw = self._bits.random_raw((n + 3) // 4)
        lanes = torch.from_numpy(raw.view(np.int16)[:n]).view(1, k, *rest)
        # v = (lane + 32768.5) / 65536 is uniform on (0, 1); floor(v + keep) is 1 w.p. keep
        v = torch.add((32768.5 / 65536) + kv, lanes.to(torch.float32), alpha=1.0 / 65536)
        return v.floor_().mul_(1.0 / kv).view(tuple(shape))


def dropout_members(
    x: torch.Tensor, p: torch.Tensor, rng: MaskRNG, channelwise: bool = False
) -> torch.Tensor:
    """Inverted dropout with one rate per member; x is [M, b, ...] with members first.

    channelwise drops whole feature maps (Dropout2d): one draw per (member, sample, channel).
    """
    shape = x.shape[:3] + (1,) * (x.dim() - 3) if channelwise else x.shape
    return x * rng.keep_scale(shape, 1.0 - p).to(x.dtype)  # no-op unless under autocast


class Stacked(nn.Module):
    """Shared bookkeeping: per-member dropout rates and member slicing. Every kind's stacked
    network is one (worker/engine/kinds), so the engine, scoring and export take any of them."""

    # whether the kind drops its inputs too (input_rates); a kind that cannot says so
    takes_input_dropout = True
    n_members: int
    rates: torch.Tensor
    input_rates: torch.Tensor

    def _init_rates(self, n_members: int, n_layers: int, device: torch.device | None) -> None:
        self.n_members = n_members
        self.register_buffer("rates", torch.zeros(n_members, n_layers, device=device))
        self.register_buffer("input_rates", torch.zeros(n_members, device=device))
        # host-side flags so forward() can skip dropout without reading device tensors
        self._layer_active = [False] * n_layers
        self._input_active = False
        self.mask_rng: MaskRNG | None = None

    def _rng(self) -> MaskRNG:
        if self.mask_rng is None:
            # unseeded use (tests, notebooks) follows torch's global seed
            seed = int(torch.randint(0, 2**62, (1,)).item())
            self.mask_rng = MaskRNG(seed, self.rates.device)
        return self.mask_rng

    @property
    def n_layers(self) -> int:
        return int(self.rates.shape[1])

    def set_rates(
        self,
        rates: torch.Tensor | Sequence[Sequence[float]],
        input_rates: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        """rates [M, n_layers] (or [M, 1], broadcast); input_rates [M] (MLP only)."""
        r = torch.as_tensor(rates, dtype=torch.float32).cpu()
        if r.dim() != 2 or r.shape[0] != self.n_members or r.shape[1] not in (1, self.n_layers):
            raise ValueError(f"rates must be [{self.n_members}, {self.n_layers}], got {r.shape}")
        r = r.expand(self.n_members, self.n_layers)
        ri = torch.zeros(self.n_members) if input_rates is None else torch.as_tensor(input_rates)
        ri = ri.to(torch.float32).cpu().reshape(self.n_members)
        if bool(((r < 0) | (r >= 1)).any()) or bool(((ri < 0) | (ri >= 1)).any()):
            raise ValueError("dropout rates must lie in [0, 1)")
        self.rates.copy_(r)
        self.input_rates.copy_(ri)
        self._layer_active = [bool((r[:, i] > 0).any()) for i in range(self.n_layers)]
        self._input_active = bool((ri > 0).any())

    @torch.no_grad()
    def select_members(self, idx: torch.Tensor) -> None:
        """Keep only members idx, in place, so optimizers holding the parameters stay valid."""
        for p in self.parameters():
            p.data = p.data[idx]
            p.grad = None
        r, ri = self.rates[idx].cpu(), self.input_rates[idx].cpu()
        self.n_members = int(idx.numel())
        self.rates = self.rates[idx]
        self.input_rates = self.input_rates[idx]
        self.set_rates(r, ri)

    def export_member(self, m: int) -> nn.Module:
        """A standalone module equal to member m (dropout rates included): the refit's download."""
        raise NotImplementedError(f"{type(self).__name__} cannot export a member")


class StackedMLP(Stacked):
    """M MLPs: Linear -> ReLU -> Dropout per hidden layer, weights [M, in, out]."""

    def __init__(
        self,
        n_members: int,
        in_features: int,
        hidden: Sequence[int],
        n_classes: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        dev = torch.device(device) if device is not None else None
        dims = [in_features, *hidden, n_classes]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fi, fo in itertools.pairwise(dims):
            # init on CPU with the seeded generator so every device gets identical weights
            w, b = torch.empty(n_members, fi, fo), torch.empty(n_members, 1, fo)
            _uniform_(w, fi, generator)
            _uniform_(b, fi, generator)
            self.weights.append(nn.Parameter(w.to(dev)))
            self.biases.append(nn.Parameter(b.to(dev)))
        self._init_rates(n_members, len(hidden), dev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, b, F] -> outputs [M, b, C]: class logits, or C = 1 regression predictions."""
        if self.training and self._input_active:
            x = dropout_members(x, self.input_rates, self._rng())
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = x.relu_()  # in place is safe: baddbmm's backward does not need its output
                if self.training and self._layer_active[i]:
                    x = dropout_members(x, self.rates[:, i], self._rng())
        return x

    def member_state(self, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Member m's (weight [out, in], bias [out]) per layer, in nn.Linear's convention."""
        return [
            (w[m].detach().t().clone(), b[m, 0].detach().clone())
            for w, b in zip(self.weights, self.biases, strict=True)
        ]

    @torch.no_grad()
    def load_member(self, m: int, module: nn.Module) -> None:
        """Copy the nn.Linear layers of a standalone module (in order) into member m."""
        linears = [mod for mod in module.modules() if isinstance(mod, nn.Linear)]
        if len(linears) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} Linear layers, got {len(linears)}")
        for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
            w[m].copy_(lin.weight.t())
            b[m, 0].copy_(lin.bias)

    def export_member(self, m: int) -> nn.Sequential:
        """A standalone nn.Sequential equal to member m (dropout rates included)."""
        layers: list[nn.Module] = []
        states = self.member_state(m)
        if float(self.input_rates[m]) > 0:
            layers.append(nn.Dropout(float(self.input_rates[m])))
        for i, (w, b) in enumerate(states):
            lin = nn.Linear(w.shape[1], w.shape[0], device=w.device)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            layers.append(lin)
            if i < len(states) - 1:
                layers += [nn.ReLU(), nn.Dropout(float(self.rates[m, i]))]
        return nn.Sequential(*layers)


def conv_output_hw(image_shape: tuple[int, int, int], n_blocks: int) -> tuple[int, int]:
    _, h, w = image_shape
    for _ in range(n_blocks):
        if pools(h, w):
            h, w = h // 2, w // 2
    return h, w


class StackedCNN(Stacked):
    """M small CNNs: [conv3x3, ReLU, Dropout2d, maxpool2x2] * n -> FC, ReLU, Dropout -> FC.

    Members live in the channel dimension of one grouped convolution (groups=M); the head is a
    batched matmul like StackedMLP. rates is [M, len(channels) + 1]: one per conv block and one
    for the hidden FC layer. Conv weights are stored [M, out, in, 3, 3] so that every parameter
    has the member dimension first (slicing members is then the same for all parameters).
    """

    takes_input_dropout = False

    def __init__(
        self,
        n_members: int,
        image_shape: tuple[int, int, int],
        channels: Sequence[int],
        hidden: int,
        n_classes: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        dev = torch.device(device) if device is not None else None
        self.image_shape = image_shape
        self.conv_w = nn.ParameterList()
        self.conv_b = nn.ParameterList()
        c_in = image_shape[0]
        for c_out in channels:
            w, b = torch.empty(n_members, c_out, c_in, 3, 3), torch.empty(n_members, c_out)
            _uniform_(w, c_in * 9, generator)
            _uniform_(b, c_in * 9, generator)
            self.conv_w.append(nn.Parameter(w.to(dev)))
            self.conv_b.append(nn.Parameter(b.to(dev)))
            c_in = c_out
        h, w_ = conv_output_hw(image_shape, len(channels))
        self.flat = c_in * h * w_
        self.head_w = nn.ParameterList()
        self.head_b = nn.ParameterList()
        for fi, fo in ((self.flat, hidden), (hidden, n_classes)):
            w, b = torch.empty(n_members, fi, fo), torch.empty(n_members, 1, fo)
            _uniform_(w, fi, generator)
            _uniform_(b, fi, generator)
            self.head_w.append(nn.Parameter(w.to(dev)))
            self.head_b.append(nn.Parameter(b.to(dev)))
        self._init_rates(n_members, len(channels) + 1, dev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, b, C*H*W] -> outputs [M, b, n_classes] (n_classes = 1: regression)."""
        m, bsz = x.shape[0], x.shape[1]
        # [M, b, C, H, W] -> [b, M*C, H, W]: member m owns channel group m
        h = (
            x.view(m, bsz, *self.image_shape)
            .transpose(0, 1)
            .reshape(bsz, -1, *self.image_shape[1:])
        )
        for i, (w, b) in enumerate(zip(self.conv_w, self.conv_b, strict=True)):
            h = F.relu(F.conv2d(h, w.flatten(0, 1), b.flatten(), padding=1, groups=m))
            if self.training and self._layer_active[i]:
                hm = h.view(bsz, m, w.shape[1], *h.shape[2:]).transpose(0, 1)
                h = dropout_members(hm, self.rates[:, i], self._rng(), channelwise=True)
                h = h.transpose(0, 1).reshape(bsz, -1, *h.shape[3:])
            if pools(h.shape[2], h.shape[3]):
                h = F.max_pool2d(h, 2)
        z = h.reshape(bsz, m, -1).transpose(0, 1)
        z = F.relu(torch.baddbmm(self.head_b[0], z, self.head_w[0]))
        if self.training and self._layer_active[-1]:
            z = dropout_members(z, self.rates[:, -1], self._rng())
        return torch.baddbmm(self.head_b[1], z, self.head_w[1])

    def member_state(self, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Member m's (weight, bias) per layer in nn.Conv2d / nn.Linear conventions."""
        convs = [
            (w[m].detach().clone(), b[m].detach().clone())
            for w, b in zip(self.conv_w, self.conv_b, strict=True)
        ]
        heads = [
            (w[m].detach().t().clone(), b[m, 0].detach().clone())
            for w, b in zip(self.head_w, self.head_b, strict=True)
        ]
        return convs + heads

    @torch.no_grad()
    def load_member(self, m: int, module: nn.Module) -> None:
        """Copy the Conv2d then Linear layers of a standalone module (in order) into member m."""
        convs = [mod for mod in module.modules() if isinstance(mod, nn.Conv2d)]
        lins = [mod for mod in module.modules() if isinstance(mod, nn.Linear)]
        if len(convs) != len(self.conv_w) or len(lins) != 2:
            raise ValueError("module does not match this StackedCNN's layer structure")
        for conv, w, b in zip(convs, self.conv_w, self.conv_b, strict=True):
            w[m].copy_(conv.weight)
            b[m].copy_(conv.bias)
        for lin, w, b in zip(lins, self.head_w, self.head_b, strict=True):
            w[m].copy_(lin.weight.t())
            b[m, 0].copy_(lin.bias)

    def export_member(self, m: int) -> nn.Sequential:
        """A standalone nn.Sequential equal to member m (dropout rates included)."""
        layers: list[nn.Module] = [nn.Unflatten(1, self.image_shape)]
        c_in, (h, w_) = self.image_shape[0], self.image_shape[1:]
        for i, w in enumerate(self.conv_w):
            layers += [
                nn.Conv2d(c_in, w.shape[1], 3, padding=1, device=w.device),
                nn.ReLU(),
                nn.Dropout2d(float(self.rates[m, i])),
            ]
            if pools(h, w_):
                layers.append(nn.MaxPool2d(2))
                h, w_ = h // 2, w_ // 2
            c_in = w.shape[1]
        hidden = self.head_w[0].shape[2]
        n_classes = self.head_w[1].shape[2]
        layers += [
            nn.Flatten(),
            nn.Linear(self.flat, hidden, device=self.head_w[0].device),
            nn.ReLU(),
            nn.Dropout(float(self.rates[m, -1])),
            nn.Linear(hidden, n_classes, device=self.head_w[0].device),
        ]
        net = nn.Sequential(*layers)
        self._copy_out(m, net)
        return net

    @torch.no_grad()
    def _copy_out(self, m: int, net: nn.Module) -> None:
        mods = [mod for mod in net.modules() if isinstance(mod, nn.Conv2d | nn.Linear)]
        for mod, (w, b) in zip(mods, self.member_state(m), strict=True):
            mod.weight.copy_(w)
            assert mod.bias is not None
            mod.bias.copy_(b)
