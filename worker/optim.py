"""Optimizer state for stacked models: every parameter's dim 0 is the member.

torch's Adam is elementwise, so one Adam over the stacked parameters is M separate ones, except
for its step count, which is one per tensor: `MemberAdam` keeps one per member for when members
take different numbers of steps. `keep_members` slices the state when members are dropped.

Imports only torch and the stdlib: bench/ runs on bare GPU boxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


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
    the parameters, and exactly torch's arithmetic. `make_optimizer` uses it only when needed.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        n_members: int,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        device = self.param_groups[0]["params"][0].device
        self.member_steps = torch.zeros(n_members, device=device)

    @torch.no_grad()
    def step(self, closure: None = None, frozen: Sequence[int] = ()) -> None:  # type: ignore[override]
        """One Adam step for every member but `frozen` (those keep weights, moments, count)."""
        still = set(frozen)
        moving = [m for m in range(self.member_steps.shape[0]) if m not in still]
        if len(moving) == self.member_steps.shape[0]:
            self.member_steps += 1
        else:
            self.member_steps[moving] += 1
        counts = [self.member_steps[m] for m in moving]  # 0-d views: each member's own count
        for group in self.param_groups:
            ps, gs, ms, vs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
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
            if not ps:
                continue
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
