"""A user's own nn.Module, stacked (worker.custom): each member must be exactly the standalone
module trained on the same batches, dropout must be the member's own, and a trial's scores must
not depend on its batch-mates, on the vmapped path and on the member-by-member fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.preprocessing import FunctionTransformer
from torch import nn

from droptune.worker.engine.custom import (
    CustomModel,
    build_stacked,
    dropout_layers,
    fold_seed,
    init_module,
    model_inputs,
    train_custom_trials,
)
from droptune.worker.engine.custom_stack import MemberDropout, StackedModule
from droptune.worker.engine.data import FoldData, dataset_from_arrays, load_dataset, prepare_folds
from droptune.worker.engine.optim import MemberAdam
from droptune.worker.engine.scoring import evaluate
from droptune.worker.engine.stacked import (
    TrainConfig,
    TrialRates,
    epoch_order,
    make_optimizer,
    train_epoch,
)
from tests.stacking import CPU

# --- user modules, as a user's factory would build them --------------------------------------


def mlp(n_in: int, n_out: int, hidden: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, n_out)
    )


def cnn(n_in: tuple[int, int, int], n_out: int) -> nn.Module:
    c, h, w = n_in
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1),
        nn.ReLU(),
        nn.Dropout2d(0.1),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * (h // 4) * (w // 4), 12),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(12, n_out),
    )


class TokenNet(nn.Module):
    """Integer tokens [b, T] (as floats) -> Embedding -> LayerNorm -> Dropout -> mean -> Linear."""

    def __init__(self, n_in: int, n_out: int, vocab: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.norm = nn.LayerNorm(8)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(8, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.norm(self.emb(x.long()))).mean(1))  # type: ignore[no-any-return]


class TokenTransformer(nn.Module):
    """Embedding -> one TransformerEncoderLayer (its three nn.Dropout modules are tuned; the
    attention's own dropout float stays 0) -> mean -> Linear."""

    def __init__(self, n_in: int, n_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        # no biases: the key projection's bias gets a zero gradient (softmax ignores it), whose
        # rounding noise Adam would scale up to full steps
        self.enc = nn.TransformerEncoderLayer(
            8, 2, 16, dropout=dropout, batch_first=True, bias=False
        )
        self.head = nn.Linear(8, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(x.long())).mean(1))  # type: ignore[no-any-return]


def bn_mlp(n_in: int, n_out: int, momentum: float | None = 0.1) -> nn.Module:
    """BatchNorm with running stats; momentum=None (a cumulative average) reads a step count
    with .item(), which vmap refuses: that one trains member by member. (No bias before the
    norm: its gradient is rounding noise, which Adam would scale up to full steps.)"""
    return nn.Sequential(
        nn.Linear(n_in, 16, bias=False),
        nn.BatchNorm1d(16, momentum=momentum),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(16, n_out),
    )


class Taps(nn.Module):
    """Three dropouts side by side on the same input: which one drops is visible in the output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Dropout(), nn.Dropout(), nn.Dropout()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x), self.c(x)], dim=-1)


# --- data -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cancer10() -> FoldData:
    # 10 folds: training parts of 512 (0-8) and 513 rows (9), 8 and 9 steps of 64 (MemberAdam)
    return prepare_folds(load_dataset("breast_cancer"), 10, 0, CPU)


@pytest.fixture(scope="module")
def cancer3() -> FoldData:
    return prepare_folds(load_dataset("breast_cancer"), 3, 0, CPU)


@pytest.fixture(scope="module")
def digits3() -> FoldData:
    # the first 600 digits (8x8 images), 3 folds: training parts of 400 rows
    ds = load_dataset("digits")
    small = dataset_from_arrays(ds.X[:600], ds.y[:600], image_shape=ds.image_shape)
    return prepare_folds(small, 3, 0, CPU)


@pytest.fixture(scope="module")
def tokens3() -> FoldData:
    """Sequences of 6 tokens out of 12; label: more 3s than 5s. Kept as integers (identity
    preprocessing), the module embeds them."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 12, size=(300, 6))
    y = ((x == 3).sum(1) > (x == 5).sum(1)).astype(np.int64)
    ds = dataset_from_arrays(x, y, preprocess=FunctionTransformer)
    return prepare_folds(ds, 3, 0, CPU)


# --- the reference: the textbook loop on a standalone module --------------------------------


def standalone_epoch(
    net: nn.Module, opt: torch.optim.Optimizer, data: FoldData, k: int, order: torch.Tensor, bs: int
) -> None:
    shape = model_inputs(data)
    net.train()
    n = data.train_len_host[k]
    for start in range(0, n, bs):
        idx = order[k, start : min(start + bs, n)]
        x = data.X_std[k, idx].view(len(idx), *(shape if isinstance(shape, tuple) else (shape,)))
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), data.y[idx])
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()


def check_trajectory(
    spec: CustomModel, data: FoldData, folds: list[int], bs: int, epochs: int, loop: bool
) -> StackedModule:
    """Dropout 0: every member m follows the standalone module of fold folds[m], built under
    the same seed and fed the same batches, to float32 rounding."""
    fold_of = torch.tensor(folds)
    net = build_stacked(spec, data, fold_of, seed=5)
    assert net.loop is loop, net.note
    net.set_rates([[0.0]] * len(folds))
    n_in = model_inputs(data)
    singles = [init_module(spec, n_in, data.n_classes, fold_seed(5, k)) for k in folds]
    for m, single in enumerate(singles):
        for mod in single.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                mod.p = 0.0
        for name, t in single.state_dict().items():
            torch.testing.assert_close(net.member_state(m)[name], t, rtol=0, atol=0)
    cfg = TrainConfig(lr=3e-3, batch_size=bs)
    lens = [data.train_len_host[f] for f in folds]
    opt = make_optimizer(net, cfg, lens)
    opts = [torch.optim.Adam(s.parameters(), lr=3e-3) for s in singles]
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = epoch_order(data, gen)
        net.plan_epoch(lens, bs)
        train_epoch(net, opt, data, fold_of, order, bs, lens)
        for single, sopt, k in zip(singles, opts, folds, strict=True):
            standalone_epoch(single, sopt, data, k, order, bs)
    start = init_module(spec, n_in, data.n_classes, fold_seed(5, folds[0]))
    moved = max(
        float((a - b).abs().max())
        for a, b in zip(start.state_dict().values(), singles[0].state_dict().values(), strict=True)
        if a.is_floating_point()
    )
    assert moved > 1e-3  # training did something the comparison can see
    for m, single in enumerate(singles):
        exported = net.export_member(m)
        for name, t in single.state_dict().items():
            torch.testing.assert_close(net.member_state(m)[name], t, rtol=1e-4, atol=3e-5)
            torch.testing.assert_close(exported.state_dict()[name], t, rtol=1e-4, atol=3e-5)
        x = data.X_std[folds[m], :40]
        x = x.view(40, *(n_in if isinstance(n_in, tuple) else (n_in,)))
        with torch.no_grad():
            torch.testing.assert_close(exported.eval()(x), single.eval()(x), rtol=1e-4, atol=1e-4)
    return net


def test_stacked_mlp_follows_standalone_adam(cancer10: FoldData) -> None:
    net = check_trajectory(CustomModel(mlp), cancer10, [0, 9, 4], 64, 2, loop=False)
    opt = make_optimizer(net, TrainConfig(), [512, 513])
    assert isinstance(opt, MemberAdam)


def test_stacked_cnn_with_pooling_follows_standalone_adam(digits3: FoldData) -> None:
    check_trajectory(CustomModel(cnn), digits3, [0, 1, 2, 1], 64, 1, loop=False)


def test_embedding_and_layernorm_follow_standalone_adam(tokens3: FoldData) -> None:
    check_trajectory(CustomModel(TokenNet), tokens3, [0, 1, 2], 32, 2, loop=False)


def test_transformer_encoder_layer_follows_standalone_adam(tokens3: FoldData) -> None:
    net = check_trajectory(CustomModel(TokenTransformer), tokens3, [0, 1], 32, 1, loop=False)
    assert net.note is None and net.drop_paths == ["enc.dropout", "enc.dropout1", "enc.dropout2"]
    # attention dropout (a float, drawn by the module itself) is no reason to fall back
    spec = CustomModel(TokenTransformer, {"dropout": 0.1})
    net = build_stacked(spec, tokens3, torch.tensor([0, 1]), seed=0)
    assert not net.loop and net.note == (
        "module TokenTransformer: dropout not tuned, kept at the model's rate:"
        " enc.self_attn.dropout=0.1"
    )


def test_chunked_evaluation_equals_one_shot(cancer3: FoldData) -> None:
    net = build_stacked(CustomModel(bn_mlp), cancer3, torch.tensor([0, 1, 2, 0]), seed=0)
    fold_of = net.member_fold
    full = evaluate(net, cancer3, fold_of, "log_loss")
    chunked = evaluate(net, cancer3, fold_of, "log_loss", max_rows=200)
    torch.testing.assert_close(full, chunked)
    assert full[0] == full[3] and full[0] != full[1]


def test_batchnorm_running_stats_vmapped_and_fallback(cancer3: FoldData) -> None:
    """BatchNorm (momentum 0.1) runs vmapped with per-member running stats; momentum=None
    cannot, and member by member it follows the standalone module just as well."""
    vm = check_trajectory(CustomModel(bn_mlp), cancer3, [0, 1, 2], 64, 2, loop=False)
    assert vm.note is None
    spec = CustomModel(bn_mlp, {"momentum": None})
    fb = check_trajectory(spec, cancer3, [0, 1, 2], 64, 2, loop=True)
    assert fb.note is not None and fb.note.startswith("module bn_mlp cannot be vmapped (")
    assert fb.note.endswith("members trained one by one") and ".item()" in fb.note


def test_fallback_end_to_end_gives_the_warning(cancer3: FoldData) -> None:
    cfg = TrainConfig(epochs=2, lr=5e-3, batch_size=64)
    trials = [TrialRates((0.0,)), TrialRates((0.4,))]
    res, note = train_custom_trials(cancer3, CustomModel(bn_mlp, {"momentum": None}), cfg, trials)
    assert note is not None and "members trained one by one" in note and "\n" not in note
    assert [r.epochs_run for r in res] == [2, 2] and all(r.mean > 0.85 for r in res)
    res2, note2 = train_custom_trials(cancer3, CustomModel(bn_mlp), cfg, trials)
    assert note2 is None and all(r.mean > 0.85 for r in res2)


def test_member_by_member_path_equals_the_vmapped_one_with_dropout(digits3: FoldData) -> None:
    """Forcing the fallback on a module vmap can run: same masks, same trajectory."""
    fold_of = torch.tensor([0, 1, 2, 0])
    nets = [build_stacked(CustomModel(cnn), digits3, fold_of, seed=2) for _ in range(2)]
    nets[1].loop = True
    cfg = TrainConfig(lr=3e-3, batch_size=64)
    lens = [digits3.train_len_host[f] for f in fold_of.tolist()]
    for net in nets:
        net.set_rates([[0.3], [0.5], [0.0], [0.6]])
        opt = make_optimizer(net, cfg, lens)
        order = epoch_order(digits3, torch.Generator().manual_seed(0))
        net.plan_epoch(lens, 64)
        train_epoch(net, opt, digits3, fold_of, order, 64, lens)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=3e-5)


def _taps(rates: list[list[float]], folds: list[int]) -> tuple[StackedModule, torch.Tensor]:
    net = StackedModule([Taps(), Taps()], torch.tensor(folds), (500,), mask_seed=0)
    net.set_rates(rates)
    return net.train(), torch.ones(len(folds), 64, 500)


def test_per_layer_rates_reach_their_dropout_modules() -> None:
    rates = [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.9], [0.2, 0.2, 0.2]]
    net, x = _taps(rates, [0, 1, 0, 1])
    assert dropout_layers(Taps()) == ["a", "b", "c"] == net.drop_paths
    out = net(x).view(4, 64, 3, 500)
    for m, row in enumerate(rates):
        for j, p in enumerate(row):
            dropped = float((out[m, :, j] == 0).float().mean())
            assert abs(dropped - p) < 0.02, (m, j, dropped)
            kept = out[m, :, j][out[m, :, j] != 0]
            torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))
        exported = net.export_member(m)
        assert [mod.p for _, mod in exported.named_modules() if isinstance(mod, nn.Dropout)] == (
            pytest.approx(row)
        )
    assert not any(isinstance(mod, MemberDropout) for mod in net.export_member(0).modules())
    net.eval()
    assert torch.equal(net(x), torch.ones(4, 64, 1500))  # no dropout in eval
    with pytest.raises(ValueError, match="rates"):
        net.set_rates([[0.1, 0.2]] * 4)


def test_masks_are_nested_within_a_fold_and_differ_across_folds() -> None:
    # members 0, 2 on fold 0 (rates 0.3, 0.6), member 1 on fold 1: common random numbers
    net, x = _taps([[0.3], [0.3], [0.6]], [0, 1, 0])
    zero = net(x) == 0
    assert bool((zero[0] <= zero[2]).all()) and 0.55 < float(zero[2].float().mean()) < 0.65
    assert not torch.equal(zero[0], zero[1])
    assert not torch.equal(zero[0], net(x) == 0)  # fresh masks each step


def test_dropout_rate_changes_training(cancer3: FoldData) -> None:
    cfg = TrainConfig(epochs=2, lr=5e-3, metric="log_loss", seed=1)
    (none,), _ = train_custom_trials(cancer3, CustomModel(mlp), cfg, [TrialRates((0.0,))])
    (much,), _ = train_custom_trials(cancer3, CustomModel(mlp), cfg, [TrialRates((0.7,))])
    assert np.abs(np.subtract(none.fold_scores, much.fold_scores)).max() > 1e-3


Factory = Callable[..., nn.Module]


@pytest.mark.parametrize(
    ("factory", "options"),
    [(mlp, {}), (bn_mlp, {}), (bn_mlp, {"momentum": None})],
    ids=["mlp", "batchnorm-vmapped", "batchnorm-member-by-member"],
)
def test_a_trials_scores_do_not_depend_on_its_batch_mates(
    cancer3: FoldData, factory: Factory, options: dict[str, Any]
) -> None:
    """With dropout on: alone, second of three, or with a batch-mate pruned after epoch 1
    (select_members slicing parameters, buffers, rates and optimizer state), the same."""
    cfg = TrainConfig(epochs=2, metric="log_loss", seed=3, batch_size=64)
    spec = CustomModel(factory, options)
    me, other, third = TrialRates((0.3,)), TrialRates((0.5,)), TrialRates((0.1,))
    (alone,), _ = train_custom_trials(cancer3, spec, cfg, [me])
    runs = {
        "second of three": train_custom_trials(cancer3, spec, cfg, [other, me, third])[0][1],
        "batch-mate pruned after epoch 1": train_custom_trials(
            cancer3, spec, cfg, [other, me], on_epoch=lambda e, a, s: [0] if e == 1 else []
        )[0][1],
    }
    for how, r in runs.items():
        np.testing.assert_allclose(r.fold_scores, alone.fold_scores, rtol=0, atol=1e-5, err_msg=how)
    (another,), _ = train_custom_trials(cancer3, spec, cfg, [other])
    assert np.abs(np.subtract(another.fold_scores, alone.fold_scores)).max() > 1e-3


def test_bad_models_are_rejected(cancer3: FoldData) -> None:
    cfg = TrainConfig(epochs=1)
    no_dropout = CustomModel(lambda n_in, n_out: nn.Linear(n_in, n_out))
    with pytest.raises(ValueError, match="no dropout modules to tune"):
        train_custom_trials(cancer3, no_dropout, cfg, [TrialRates((0.1,))])
    wrong_width = CustomModel(lambda n_in, n_out: mlp(n_in, n_out + 1))
    with pytest.raises(ValueError, match="expected"):
        train_custom_trials(cancer3, wrong_width, cfg, [TrialRates((0.1,))])
    with pytest.raises(ValueError, match="input dropout"):
        train_custom_trials(cancer3, CustomModel(mlp), cfg, [TrialRates((0.1,), input=0.2)])
    with pytest.raises(ValueError, match="dropout_layers says 2"):
        train_custom_trials(cancer3, CustomModel(mlp), cfg, [TrialRates((0.1, 0.2))])
    assert train_custom_trials(cancer3, CustomModel(mlp), cfg, []) == ([], None)


def test_dropout_subclasses_are_tuned_and_alpha_dropout_is_not() -> None:
    """A team's own nn.Dropout2d subclass is tuned, with its kind from the class hierarchy;
    alpha dropout (another rescaling) is left at its rate and named."""
    from droptune.worker.engine.custom_stack import find_dropouts, untuned_dropout

    class MyDrop(nn.Dropout2d):
        pass

    net = nn.Sequential(nn.Linear(4, 4), MyDrop(0.2), nn.AlphaDropout(0.1), nn.Dropout(0.3))
    assert [n for n, _ in find_dropouts(net)] == ["1", "3"]
    assert untuned_dropout(net) == ["2 (AlphaDropout p=0.1)"]
