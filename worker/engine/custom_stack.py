"""A user's nn.Module stacked into M = B * K members, trained as one model.

The M copies' parameters and buffers are stacked along a new dim 0 (torch.func.stack_module_state)
and one forward runs them all through `torch.vmap(functional_call)`. Every parameter then has
the member first, as in the built-in stacked models, so the engine's optimizers (MemberAdam, fused
Adam: elementwise, hence per-member exact), `keep_members` and `scoring.forward_slice` work
unchanged.

Dropout: every nn.Dropout / Dropout1d / 2d / 3d becomes a `MemberDropout` that reads its member's
rate (and fold) from tensors handed in through functional_call. Masks are not drawn with vmap's
randomness="different" (that would cut member m's draw out of one [M, ...] draw, so its masks
would depend on how many members share the batch). Instead each dropout module owns a generator
and draws uniforms for [K, ...] once per call (vmap randomness="same": one unbatched draw), and
member m keeps u[fold(m)] < 1 - rate(m). As in the built-ins' MaskRNG: trials of one fold share
uniforms and so get nested masks (common random numbers), and a trial's masks depend only on
(seed, fold, module), never on its batch-mates or on which of them are pruned. Random ops of the
user's own (not nn.DropoutNd) are "same" too: equal for all members.

Modules vmap cannot run (BatchNorm with momentum=None, .item(), data-dependent control flow,
in-place writes into unbatched state, ...) are found by a probe at build time: one vmapped
forward/backward on a tiny batch, compared with a member-by-member run. They then train member
by member through the same stacked tensors (unbind views), with the same masks: same interface,
same results, M times the kernel launches.

Imports only torch and the stdlib (plus worker.models): bench/ runs on bare GPU boxes.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from droptune.worker.engine.models import Stacked

# nn.Dropout drops elements; the Nd kinds drop whole channels of an N-d feature map
DROPOUT_KINDS: dict[type[nn.Module], int] = {
    nn.Dropout: 0,
    nn.Dropout1d: 1,
    nn.Dropout2d: 2,
    nn.Dropout3d: 3,
}
PERF_DROP = "There is a performance drop because we have not yet implemented the batching rule"


class MemberDropout(nn.Module):
    """One nn.DropoutNd of the user's module, with the member's rate and fold as (overridden)
    buffers. `share`: the member-by-member path, where members of one forward share the draws
    (the vmapped path draws once per call anyway)."""

    rate: torch.Tensor
    fold: torch.Tensor

    def __init__(self, spatial: int, n_folds: int, generator: torch.Generator) -> None:
        super().__init__()
        self.spatial, self.n_folds, self.generator = spatial, n_folds, generator
        self.register_buffer("rate", torch.zeros(()), persistent=False)
        self.register_buffer("fold", torch.zeros((), dtype=torch.int64), persistent=False)
        self.active = False  # host flag: some member has a rate > 0 here
        self.share = False
        self._calls = 0
        self._cache: list[torch.Tensor] = []

    def begin(self, first: bool) -> None:
        """Start a member's forward; `first`: the first member of a new step (fresh draws)."""
        self._calls = 0
        if first:
            self._cache = []

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        if self.spatial == 0:
            return tuple(x.shape)
        # (N, C, *spatial) batched, (C, *spatial) not; Dropout2d reads 3-D input as (N, C, L)
        batched = x.dim() > self.spatial + 1 or (self.spatial == 2 and x.dim() == 3)
        lead = 2 if batched else 1
        return tuple(x.shape[:lead]) + (1,) * (x.dim() - lead)

    def _uniforms(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        call = self._calls
        self._calls += 1
        if self.share and call < len(self._cache) and self._cache[call].shape[1:] == shape:
            return self._cache[call]
        u = torch.rand((self.n_folds, *shape), generator=self.generator, device=device)
        if self.share:
            self._cache.append(u)
        return u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.active:
            return x
        u = self._uniforms(self.mask_shape(x), x.device)[self.fold]
        keep = 1.0 - self.rate
        return x * ((u < keep).to(x.dtype) / keep)


def find_dropouts(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The module's nn.DropoutNd submodules in named_modules order: the order of per-layer
    rates."""
    return [(n, m) for n, m in module.named_modules() if dropout_kind(m) is not None]


def dropout_kind(module: nn.Module) -> int | None:
    """0 for nn.Dropout, 1-3 for Dropout1d/2d/3d (and their subclasses), else None (alpha
    dropout, whose rescaling differs, is not one of them)."""
    return next((DROPOUT_KINDS[c] for c in type(module).__mro__ if c in DROPOUT_KINDS), None)


def untuned_dropout(module: nn.Module) -> list[str]:
    """Dropout this engine does not tune: attention-weight dropout (a float inside
    nn.MultiheadAttention, not a module) and alpha dropout. It runs at the factory's rate, with
    one draw shared by all members on the vmapped path."""
    out = []
    for name, mod in module.named_modules():
        if isinstance(mod, nn.MultiheadAttention) and mod.dropout > 0:
            out.append(f"{name or 'module'}.dropout={mod.dropout:g}")
        elif isinstance(mod, nn.AlphaDropout | nn.FeatureAlphaDropout) and mod.p > 0:
            out.append(f"{name or 'module'} ({type(mod).__name__} p={mod.p:g})")
    return out


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    root.get_submodule(parent).register_module(leaf, new)


@contextlib.contextmanager
def vmap_friendly(device: torch.device, quiet: bool = True) -> Iterator[None]:
    """Kernels vmap can batch: no fused inference fast path of nn.MultiheadAttention /
    TransformerEncoderLayer, and on CPU the math attention (flash-for-CPU has no batching rule).
    vmap's 'performance drop' warnings (an op looped inside vmap) are silenced; the probe
    reports them."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.filterwarnings("ignore", message=PERF_DROP)
            if device.type == "cpu":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel([SDPBackend.MATH]):
                    yield
            else:
                yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


class StackedModule(Stacked):
    """M members of one user module: member m starts from fold_of[m]'s module (all K given).

    forward: x [M, b, F] -> [M, b, C], the rows reshaped to input_shape per member. rates is
    [M, L], one column per dropout module (find_dropouts order). `note` is None, or one line for
    the trial record: the module trains member by member (and why), or vmap loops an op.
    """

    member_fold: torch.Tensor
    template: nn.Module  # the user's module as built (fold 0), for export_member
    base: nn.Module  # its copy with MemberDropout in place of each dropout module
    drops: list[MemberDropout]

    def __init__(
        self,
        fold_modules: Sequence[nn.Module],
        fold_of: torch.Tensor,
        input_shape: tuple[int, ...],
        *,
        mask_seed: int,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.input_shape, self.n_folds = input_shape, len(fold_modules)
        template = copy.deepcopy(fold_modules[0]).to(dev)
        base = copy.deepcopy(template)
        drops = find_dropouts(base)
        if not drops:
            raise ValueError(
                f"module {type(template).__name__} has no dropout modules to tune "
                "(nn.Dropout, Dropout1d/2d/3d)"
            )
        self.drop_paths = [path for path, _ in drops]
        members: list[MemberDropout] = []
        for i, (path, mod) in enumerate(drops):
            gen = torch.Generator(device=dev)
            gen.manual_seed((mask_seed * 1_000_003 + (i + 1) * 104_729) % 2**63)
            members.append(MemberDropout(dropout_kind(mod) or 0, self.n_folds, gen))
            _replace(base, path, members[-1])
        # plain attributes (object.__setattr__): not submodules, so .parameters() is the stack
        object.__setattr__(self, "template", template)
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "drops", members)
        self._stack(fold_modules, fold_of, dev)
        self._init_rates(int(fold_of.numel()), len(members), dev)
        self.register_buffer("member_fold", fold_of.to(dev))
        self.loop = False
        self.note: str | None = None
        self._plan: collections.deque[list[int]] = collections.deque()

    def _stack(self, fold_modules: Sequence[nn.Module], fold_of: torch.Tensor, dev: Any) -> None:
        params, buffers = stack_module_state(list(fold_modules))
        idx = fold_of.cpu()
        self.param_names = list(params)
        self.buffer_names = list(buffers)
        self.stacked_params = nn.ParameterDict()
        self.stacked_buffers = nn.Module()
        for name, t in params.items():
            p = t.detach()[idx].to(dev).contiguous()
            self.stacked_params[_key(name)] = nn.Parameter(p, requires_grad=t.requires_grad)
        for name, t in buffers.items():
            self.stacked_buffers.register_buffer(_key(name), t[idx].to(dev).contiguous())

    def train(self, mode: bool = True) -> StackedModule:
        super().train(mode)
        self.base.train(mode)
        return self

    def state(self) -> dict[str, torch.Tensor]:
        """The stacked tensors functional_call hands the base module, members first."""
        out = {n: self.stacked_params[_key(n)] for n in self.param_names}
        out.update({n: getattr(self.stacked_buffers, _key(n)) for n in self.buffer_names})
        for i, path in enumerate(self.drop_paths):
            out[f"{path}.rate"] = self.rates[:, i]
            out[f"{path}.fold"] = self.member_fold
        return out

    def plan_epoch(self, lens: Sequence[int], batch_size: int) -> None:
        """Each member's real rows in each step of the coming engine.train_epoch (lens: the
        members' training lengths). The engine pads short folds' last steps with rows the loss
        weighs 0, harmless to per-sample layers but not to BatchNorm's batch statistics: with a
        plan, each training forward runs every member on its real rows only (a member with
        none is skipped), as its standalone loop would."""
        self._plan = collections.deque(
            [min(max(n - start, 0), batch_size) for n in lens]
            for start in range(0, max(lens), batch_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, b, F] -> outputs [M, b, C]; M may be a slice of the members (forward_slice)."""
        x = x.view(x.shape[0], x.shape[1], *self.input_shape)
        run = run_members if self.loop else run_vmapped
        counts = self._plan.popleft() if self.training and self._plan else None
        if counts is not None and (len(counts) != x.shape[0] or max(counts) != x.shape[1]):
            raise RuntimeError(f"step plan {counts} does not fit a batch of {tuple(x.shape[:2])}")
        if counts is None or min(counts) == x.shape[1]:
            return run(self.base, self.drops, self.state(), x)
        return self._grouped(run, x, counts)

    def _grouped(self, run: Any, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Members grouped by their real row count, each group on its rows only; padding rows
        get output 0 (the loss weighs them 0). In-place buffer updates are written back."""
        state, pieces, where = self.state(), [], []
        for c in sorted(set(counts) - {0}):
            idx = torch.tensor([m for m, n in enumerate(counts) if n == c], device=x.device)
            sub = {n: t[idx] for n, t in state.items()}
            out = run(self.base, self.drops, sub, x[idx, :c])
            with torch.no_grad():
                for name in self.buffer_names:
                    state[name][idx] = sub[name]
            pieces.append(F.pad(out, (0, 0, 0, x.shape[1] - c)))
            where.append(idx)
        full = torch.cat(pieces)
        out = full.new_zeros(x.shape[0], *full.shape[1:])
        return out.index_copy(0, torch.cat(where), full)

    def set_rates(
        self,
        rates: torch.Tensor | Sequence[Sequence[float]],
        input_rates: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        """rates [M, L] (or [M, 1], broadcast over the L dropout modules); no input dropout."""
        if input_rates is not None and bool((torch.as_tensor(input_rates) != 0).any()):
            raise ValueError("input dropout is only supported for MLP models")
        super().set_rates(rates, input_rates)
        for mod, active in zip(self.drops, self._layer_active, strict=True):
            mod.active = active

    @torch.no_grad()
    def select_members(self, idx: torch.Tensor) -> None:
        """Keep only members idx (parameters, buffers, rates, folds), in place."""
        for name in self.buffer_names:
            key = _key(name)
            setattr(self.stacked_buffers, key, getattr(self.stacked_buffers, key)[idx])
        self.member_fold = self.member_fold[idx]
        super().select_members(idx)

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's parameters and buffers under the user module's own names."""
        state = {n: self.stacked_params[_key(n)][m] for n in self.param_names}
        state.update({n: getattr(self.stacked_buffers, _key(n))[m] for n in self.buffer_names})
        return {n: t.detach().clone() for n, t in state.items()}

    @torch.no_grad()
    def load_member(self, m: int, module: nn.Module) -> None:
        """Copy a standalone module's parameters and buffers into member m."""
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            key = _key(name)
            dst = self.stacked_params[key] if name in self.param_names else None
            if dst is None:
                dst = getattr(self.stacked_buffers, key)
            dst[m].copy_(t)

    @torch.no_grad()
    def export_member(self, m: int) -> nn.Module:
        """The user's own module with member m's weights and buffers, each nn.DropoutNd set to
        the member's rate: a plain standalone module for the download."""
        net = copy.deepcopy(self.template)
        tensors = {**dict(net.named_parameters()), **dict(net.named_buffers())}
        for name, t in self.member_state(m).items():
            tensors[name].copy_(t)
        for i, (_, mod) in enumerate(find_dropouts(net)):
            mod.p = float(self.rates[m, i])  # type: ignore[assignment]
        return net


def _key(name: str) -> str:
    # ParameterDict / register_buffer names cannot hold "."
    return name.replace(".", "/")


def run_vmapped(
    base: nn.Module,
    drops: Sequence[MemberDropout],
    state: Mapping[str, torch.Tensor],
    x: Any,
    quiet: bool = True,
) -> torch.Tensor:
    """All members in one vmapped functional_call; MemberDropout draws [K, ...] once per call.
    quiet=False lets vmap's performance warnings through (the probe records them)."""
    for mod in drops:
        mod.share = False
        mod.begin(first=True)

    def one(s: dict[str, torch.Tensor], xm: torch.Tensor) -> torch.Tensor:
        return functional_call(base, s, (xm,))  # type: ignore[no-any-return]

    with vmap_friendly(x.device, quiet):
        out: torch.Tensor = torch.vmap(one, randomness="same")(dict(state), x)
        return out


def run_members(
    base: nn.Module,
    drops: Sequence[MemberDropout],
    state: Mapping[str, torch.Tensor],
    x: Any,
    reseed: int | None = None,
) -> torch.Tensor:
    """Member by member through unbind views of the stacked tensors (so in-place buffer updates,
    BatchNorm's running stats, land in the stack, and the gradients come back as one stacked
    tensor); members of one step share the dropout draws, as in the vmapped path. reseed (the
    probe): torch's global seed before each member, so the module's own random ops draw for
    every member what vmap's randomness="same" draws once."""
    cols = {n: t.unbind(0) for n, t in state.items()}
    outs = []
    for m in range(x.shape[0]):
        if reseed is not None:
            torch.manual_seed(reseed)
        for mod in drops:
            mod.share = True
            mod.begin(first=m == 0)
        outs.append(functional_call(base, {n: c[m] for n, c in cols.items()}, (x[m],)))
    return torch.stack(outs)
