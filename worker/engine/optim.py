"""Optimizer state for stacked models: every parameter's dim 0 is the member.

torch's Adam is elementwise, so one Adam over the stacked parameters is M separate ones, except
for its step count, which is one per tensor: `MemberAdam` keeps one per member for when members
take different numbers of steps. `keep_members` slices the state when members are dropped.

Imports only torch and the stdlib: bench/ runs on bare GPU boxes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

# torch._fused_adam_ is private: its signature may change in any release. These are the torch
# versions (major, minor) tests/unit/test_engine.py has passed on; widen after running it on a new
# one.
FUSED_ADAM_TESTED = ((2, 13), (2, 14))  # [from, to)


def fused_adam_usable() -> bool:
    """Whether MemberAdam may call torch's private fused Adam kernel on the installed torch."""
    found = re.match(r"(\d+)\.(\d+)", torch.__version__)
    if found is None or not hasattr(torch, "_fused_adam_"):
        return False
    version = (int(found[1]), int(found[2]))
    return FUSED_ADAM_TESTED[0] <= version < FUSED_ADAM_TESTED[1]


def keep_members(opt: torch.optim.Optimizer, keep: torch.Tensor) -> None:
    """Keep the optimizer state of members `keep` (the model's parameters already sliced)."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                st["exp_avg"] = st["exp_avg"][keep]
                st["exp_avg_sq"] = st["exp_avg_sq"][keep]
    if isinstance(opt, MemberAdam):
        opt.member_steps = opt.member_steps[keep]


class MemberAdam(torch.optim.Optimizer):
    """torch.optim.Adam with a step count per member: dim 0 of every parameter is the member.

    Needed when folds take different numbers of steps per epoch (fold sizes straddling a
    multiple of the batch size): a member with no samples in a step must neither move nor count
    the step, or its bias correction drifts from that of the model it stands for. torch's Adam
    keeps one count per tensor, so this one hands torch's fused Adam kernel (the one
    `Adam(fused=True)` runs) one view per member, each with its own count: still one pass over
    the parameters, and exactly torch's arithmetic. That kernel is private API, so on a torch
    outside FUSED_ADAM_TESTED (or with fused=False) the same update runs as plain tensor ops
    (equal to float32 rounding). `make_optimizer` uses this class only when needed.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        n_members: int,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        device = self.param_groups[0]["params"][0].device
        self.member_steps = torch.zeros(n_members, device=device)
        usable = fused_adam_usable()
        if fused and not usable:
            raise ValueError(f"torch {torch.__version__} has no tested torch._fused_adam_")
        self.fused = usable if fused is None else fused

    @torch.no_grad()
    def step(self, closure: None = None, frozen: Sequence[int] = ()) -> None:  # type: ignore[override]
        """One Adam step for every member but `frozen` (those keep weights, moments, count)."""
        still = set(frozen)
        moving = [m for m in range(self.member_steps.shape[0]) if m not in still]
        if len(moving) == self.member_steps.shape[0]:
            self.member_steps += 1
        else:
            self.member_steps[moving] += 1
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            if not params or not moving:
                continue
            if self.fused:
                self._fused_step(group, params, moving)
            else:
                for p in params:
                    _plain_adam_(p, self.state[p], self.member_steps, moving, group)

    def _fused_step(
        self, group: dict[str, Any], params: list[torch.Tensor], moving: list[int]
    ) -> None:
        counts = [self.member_steps[m] for m in moving]  # 0-d views: each member's own count
        ps, gs, ms, vs, steps = [], [], [], [], []
        for p in params:
            state = self.state[p]
            assert p.grad is not None
            grad = p.grad.contiguous()  # the kernel needs contiguous member slices
            data = p.data
            if not data.is_contiguous():
                raise ValueError("MemberAdam needs contiguous parameters")
            for m in moving:
                ps.append(data[m])
                gs.append(grad[m])
                ms.append(state["exp_avg"][m])
                vs.append(state["exp_avg_sq"][m])
            steps += counts
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            ps,
            gs,
            ms,
            vs,
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )


def _plain_adam_(
    p: torch.Tensor,
    state: dict[str, torch.Tensor],
    member_steps: torch.Tensor,
    moving: list[int],
    group: dict[str, Any],
) -> None:
    """torch's single-tensor Adam update for members `moving` of p, each at its own step count,
    in public tensor ops (vectorised over members, so it stays usable on big stacks)."""
    assert p.grad is not None
    beta1, beta2 = group["betas"]
    idx = torch.tensor(moving, device=p.device)
    param, grad = p.data[idx], p.grad[idx]
    exp_avg, exp_avg_sq = state["exp_avg"][idx], state["exp_avg_sq"][idx]
    if group["weight_decay"] != 0:
        grad = grad.add(param, alpha=group["weight_decay"])
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = member_steps[idx].view(-1, *[1] * (p.dim() - 1))
    bias_correction1 = _one_minus_pow(beta1, step)
    bias_correction2_sqrt = _one_minus_pow(beta2, step).sqrt()
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
    param.sub_(exp_avg / denom * (group["lr"] / bias_correction1))
    p.data.index_copy_(0, idx, param)
    state["exp_avg"].index_copy_(0, idx, exp_avg)
    state["exp_avg_sq"].index_copy_(0, idx, exp_avg_sq)


def _one_minus_pow(beta: float, step: torch.Tensor) -> torch.Tensor:
    """1 - beta**step as -expm1(step * log(beta)): the plain form cancels digits in float32 when
    beta is near 1 and the step count small (torch computes it from Python floats)."""
    log_beta = math.log(beta) if beta > 0 else -math.inf
    return -torch.expm1(step * log_beta)
