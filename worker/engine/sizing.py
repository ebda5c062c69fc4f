"""How big a batch of trials to stack, what one trial costs (FLOPs, for the benchmark), and
what running out of memory looks like.

Imports only torch and the stdlib (plus worker.data/models and core.memory): bench/ runs on bare
GPU boxes. The memory and FLOP arithmetic is core/memory.py, which the submit's admission
(storage/submit/admission.py) calls too.
"""

from __future__ import annotations

import gc
import os
import re
from typing import TYPE_CHECKING

import torch

from droptune.core import memory
from droptune.worker.engine.data import FoldData
from droptune.worker.engine.kinds.base import ModelConfig

if TYPE_CHECKING:
    from droptune.worker.engine.stacked import TrainConfig


def flops_per_trial(model: ModelConfig, data: FoldData, cfg: TrainConfig) -> float:
    """Nominal FLOPs of one trial (all K folds, all epochs): 2*in*out per sample per layer
    forward, backward = 2x forward, plus the forward pass of each epoch's validation."""
    layers = model.layers(data.n_features, data.n_classes, data.image_shape)
    n_train = sum(data.train_len_host)
    n_val = sum(data.val_len_host)
    return cfg.epochs * memory.forward_flops(layers) * (3.0 * n_train + n_val)


def trial_bytes(
    model: ModelConfig, data: FoldData, batch_size: int, trials: int = 1
) -> tuple[int, int]:
    """(bytes per trial of a training step: its K members' parameter state and saved
    activations; bytes of the largest validation chunk of `trials` trials)."""
    layers = model.layers(data.n_features, data.n_classes, data.image_shape)
    per_trial = data.k * memory.member_train_bytes(layers, data.n_features, batch_size)
    lva = max(int(data.val_idx.shape[1]), 1)
    return per_trial, memory.eval_bytes(layers, data.n_features, trials * data.k, lva)


def _data_bytes(data: FoldData) -> int:
    tensors = (data.X_std, data.y, data.train_idx, data.val_idx)
    return sum(t.numel() * t.element_size() for t in tensors)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        return int(pages * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_batch_trials(
    model: ModelConfig,
    data: FoldData,
    n_available: int,
    device: torch.device | str,
    batch_size: int = 64,
    memory_bytes: int | None = None,
) -> int:
    """How many trials to stack: as many as memory allows, capped where speed stops improving.

    The memory is half the device's free memory on a GPU, a quarter of the free RAM on a CPU
    (shared with everything else there), and no more than half of `memory_bytes`
    (DROPTUNE_WORKER_MEMORY_GB) less the folds already loaded: the estimate can be low by a
    factor of up to 2 where the activations dominate."""
    dev = torch.device(device)
    per_trial, evals = trial_bytes(model, data, batch_size, n_available)
    budget = _free_bytes(dev) // (2 if dev.type == "cuda" else 4)
    if memory_bytes is not None:
        budget = min(budget, (memory_bytes - _data_bytes(data)) // 2)
    budget -= evals
    # CPU: past ~16 trials the stacked weights fall out of cache and s/trial stops improving
    cap = 256 if dev.type == "cuda" else 16
    return max(1, min(n_available, cap, budget // max(per_trial, 1)))


# How allocators say they could not allocate, besides torch.OutOfMemoryError: CUDA itself and
# cuBLAS / cuDNN, and torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory").
_OOM_WORDS = (
    "cuda out of memory",
    "cuda error: out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "status_alloc_failed",
)


def is_oom(exc: BaseException) -> bool:
    """Whether an error means the batch ran out of memory (on the GPU or in RAM)."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in _OOM_WORDS)


def oom_reason(exc: BaseException) -> str:
    """The short reason a trial that ran out of memory is failed with: the error's first line,
    without torch's `[enforce fail at file:line] err == 0.` prefix."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", lines[0] if lines else "")
    return f"out of memory: {first or type(exc).__name__}"[:300]


def free_memory(device: torch.device) -> None:
    """Give back what a batch that ran out of memory held, before the next one allocates: the
    caller must have let go of the error (its traceback holds the batch's tensors)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
