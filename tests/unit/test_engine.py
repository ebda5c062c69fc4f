"""The stacked engine must be exactly a set of independent standalone trainings, only faster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from droptune.worker.engine.data import FoldData, load_dataset, prepare_folds
from droptune.worker.engine.kinds import CNNConfig, MLPConfig
from droptune.worker.engine.models import (
    MaskRNG,
    StackedCNN,
    StackedMLP,
    dropout_members,
)
from droptune.worker.engine.optim import FUSED_ADAM_TESTED, MemberAdam, fused_adam_usable
from droptune.worker.engine.sizing import auto_batch_trials, flops_per_trial
from droptune.worker.engine.stacked import (
    StackedRun,
    TrainConfig,
    TrialRates,
    epoch_order,
    evaluate,
    make_optimizer,
    sample_weights,
    train_trials,
)
from tests.stacking import CPU, check_trajectory, digits3_folds, reg5_folds


@pytest.fixture(scope="module")
def digits5() -> FoldData:
    # 1797 samples in 5 folds: training parts of 1437 and 1438 rows (unequal, exercises masking)
    return prepare_folds(load_dataset("digits"), 5, 0, CPU)


@pytest.fixture(scope="module")
def digits3() -> FoldData:
    return digits3_folds()


@pytest.fixture(scope="module")
def reg5() -> FoldData:
    return reg5_folds()


def test_stacked_mlp_follows_standalone_adam_exactly(digits5: FoldData) -> None:
    folds = [0, 1, 2, 3, 4, 2]
    gen = torch.Generator().manual_seed(1)
    stacked = StackedMLP(len(folds), 64, (32, 16), 10, generator=gen)
    start = [w.detach().clone() for w in stacked.parameters()]
    check_trajectory(stacked, digits5, folds, bs=64, epochs=2)
    for before, after in zip(start, stacked.parameters(), strict=True):
        assert float((before - after.detach()).abs().max()) > 1e-3


def test_member_without_samples_in_last_step_does_not_move(digits5: FoldData) -> None:
    # 1437 = 3 * 479: those members have 3 batches while the 1438-row ones have a 4th of 1 row.
    # Over several epochs the short members must also not count the steps they sit out.
    assert sorted(set(digits5.train_len_host)) == [1437, 1438]
    folds = list(range(5))
    stacked = StackedMLP(5, 64, (16,), 10, generator=torch.Generator().manual_seed(2))
    check_trajectory(stacked, digits5, folds, bs=479, epochs=4, wd=1e-3)


def test_folds_with_fewer_steps_per_epoch_follow_standalone_adam() -> None:
    # breast_cancer, 10 folds: training parts of 512 and 513 rows, 8 and 9 steps of 64
    data = prepare_folds(load_dataset("breast_cancer"), 10, 0, CPU)
    assert sorted(set(data.train_len_host)) == [512, 513]
    stacked = StackedMLP(10, 30, (16,), 2, generator=torch.Generator().manual_seed(4))
    # Two epochs: a skipped step miscounted shifts Adam's bias correction by ~5% in the
    # second; longer runs on this data amplify float rounding (Adam near-zero gradients).
    check_trajectory(stacked, data, list(range(10)), bs=64, epochs=2)
    assert isinstance(
        make_optimizer(stacked, TrainConfig(), [512, 513]), MemberAdam
    ) and not isinstance(make_optimizer(stacked, TrainConfig(), [512, 512]), MemberAdam)


def test_member_adam_without_torchs_private_kernel_follows_standalone_adam(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A torch without torch._fused_adam_ (or outside the tested versions) trains on the public
    fallback: same trajectory as standalone Adam, and as the fused kernel to float32 rounding."""
    data = prepare_folds(load_dataset("breast_cancer"), 10, 0, CPU)
    fused = StackedMLP(10, 30, (16,), 2, generator=torch.Generator().manual_seed(4))
    plain = StackedMLP(10, 30, (16,), 2, generator=torch.Generator().manual_seed(4))
    # on a torch outside FUSED_ADAM_TESTED: run these tests there, then widen it
    assert fused_adam_usable(), torch.__version__
    check_trajectory(fused, data, list(range(10)), bs=64, epochs=2, wd=1e-3)

    monkeypatch.delattr(torch, "_fused_adam_")
    assert not fused_adam_usable()
    opt = make_optimizer(plain, TrainConfig(), [512, 513])
    assert isinstance(opt, MemberAdam) and not opt.fused
    with pytest.raises(ValueError, match="_fused_adam_"):
        MemberAdam(plain.parameters(), 10, lr=1e-3, fused=True)
    check_trajectory(plain, data, list(range(10)), bs=64, epochs=2, wd=1e-3)
    for a, b in zip(fused.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    monkeypatch.undo()

    monkeypatch.setattr(torch, "__version__", "2.14.0")  # a signature nobody has checked yet
    assert hasattr(torch, "_fused_adam_") and not fused_adam_usable()
    major, minor = FUSED_ADAM_TESTED[0]
    monkeypatch.setattr(torch, "__version__", f"{major}.{minor}.1+cu128")
    assert fused_adam_usable()


def test_sample_weights_make_every_step_a_sum_of_member_means() -> None:
    # batches of 3 over members of 7, 5 and 6 samples: steps of (3, 3, 1), (3, 2, -), (3, 3, -)
    w = sample_weights([7, 5, 6], 3, CPU)
    third, half = 1 / 3, 1 / 2
    expected = [
        [third, third, third, third, third, third, 1.0],
        [third, third, third, half, half, 0.0, 0.0],
        [third, third, third, third, third, third, 0.0],
    ]
    torch.testing.assert_close(w, torch.tensor(expected), rtol=0, atol=0)


def test_stopping_trials_drops_their_members_from_model_and_optimizer(digits5: FoldData) -> None:
    cfg = TrainConfig(epochs=1, batch_size=479)  # uneven folds: MemberAdam, a count per member
    trials = [TrialRates((0.1,)), TrialRates((0.2,)), TrialRates((0.3,))]
    run = StackedRun(digits5, MLPConfig((8,)), cfg, trials)
    run.train_epoch(epoch_order(digits5, torch.Generator().manual_seed(0)), cfg.batch_size)
    assert isinstance(run.opt, MemberAdam)
    weight = next(run.net.parameters())
    moments = {t: run.opt.state[weight]["exp_avg"][t * 5 : t * 5 + 5].clone() for t in (0, 2)}
    rows = {t: weight[t * 5 : t * 5 + 5].detach().clone() for t in (0, 2)}
    run.opt.member_steps[5:10] = 7  # marks trial 1's counts, which must leave with it
    run.stop([1, 1])
    assert run.active == [0, 2] and run.fold_of.tolist() == [0, 1, 2, 3, 4] * 2
    assert run.lens == [digits5.train_len_host[f] for f in range(5)] * 2
    assert run.net.n_members == 10 and run.net.rates[:, 0].tolist() == pytest.approx(
        [0.1] * 5 + [0.3] * 5
    )
    assert 7 not in run.opt.member_steps.tolist() and run.opt.member_steps.shape == (10,)
    for p in run.net.parameters():
        assert run.opt.state[p]["exp_avg"].shape == p.shape == run.opt.state[p]["exp_avg_sq"].shape
    for i, t in enumerate((0, 2)):
        assert torch.equal(weight[i * 5 : i * 5 + 5], rows[t])
        assert torch.equal(run.opt.state[weight]["exp_avg"][i * 5 : i * 5 + 5], moments[t])
    run.stop([0, 2])
    assert run.active == []


def test_stacked_cnn_follows_standalone_adam_exactly(digits3: FoldData) -> None:
    folds = [0, 1, 2, 1]
    gen = torch.Generator().manual_seed(3)
    stacked = StackedCNN(len(folds), (1, 8, 8), (4, 6), 16, 10, generator=gen)
    start = [w.detach().clone() for w in stacked.parameters()]
    check_trajectory(stacked, digits3, folds, bs=128, epochs=1)
    for before, after in zip(start, stacked.parameters(), strict=True):
        assert float((before - after.detach()).abs().max()) > 1e-4


def test_init_matches_nn_linear_distribution() -> None:
    stacked = StackedMLP(64, 100, (50,), 10, generator=torch.Generator().manual_seed(0))
    w = stacked.weights[0].detach()
    bound = 1 / np.sqrt(100)
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.99 * bound
    assert abs(float(w.std()) - bound / np.sqrt(3)) < 0.01 * bound  # uniform(-b, b) std
    # members are different networks, not copies
    assert not torch.equal(stacked.weights[0][0], stacked.weights[0][1])


def test_train_trials_learns_digits(digits3: FoldData) -> None:
    cfg = TrainConfig(epochs=3, batch_size=64, lr=5e-3, seed=0)
    res = train_trials(digits3, MLPConfig((32,)), cfg, [TrialRates((0.0,)), TrialRates((0.3,))])
    assert len(res) == 2
    for r in res:
        assert len(r.fold_scores) == 3 and r.epochs_run == 3 and not r.stopped
        assert r.mean > 0.8 and r.train_seconds > 0


def test_log_loss_metric_and_bad_metric(digits3: FoldData) -> None:
    cfg = TrainConfig(epochs=2, lr=5e-3, metric="log_loss")
    (r,) = train_trials(digits3, MLPConfig((32,)), cfg, [TrialRates((0.1,))])
    assert 0 < r.mean < 1.0
    with pytest.raises(ValueError, match="metric"):
        train_trials(digits3, MLPConfig((8,)), TrainConfig(metric="f1"), [TrialRates((0.1,))])


def test_seeded_runs_are_bit_identical(digits3: FoldData) -> None:
    trials = [TrialRates((0.2, 0.4), input=0.1), TrialRates((0.5,))]
    cfg = TrainConfig(epochs=2, metric="log_loss", seed=7)
    a = train_trials(digits3, MLPConfig((32, 16)), cfg, trials, CPU)
    b = train_trials(digits3, MLPConfig((32, 16)), cfg, trials, CPU)
    c = train_trials(digits3, MLPConfig((32, 16)), TrainConfig(epochs=2, metric="log_loss"), trials)
    assert [r.fold_scores for r in a] == [r.fold_scores for r in b]
    assert [r.fold_scores for r in a] != [r.fold_scores for r in c]


def test_on_epoch_stops_a_trial_and_others_continue(digits3: FoldData) -> None:
    cfg = TrainConfig(epochs=4, metric="log_loss")
    trials = [TrialRates((0.0,)), TrialRates((0.5,)), TrialRates((0.0, 0.2))]
    calls: list[tuple[int, list[int], tuple[int, ...]]] = []

    def on_epoch(epoch: int, active: list[int], scores: np.ndarray) -> list[int]:
        calls.append((epoch, list(active), scores.shape))
        return [1] if epoch == 2 else []

    res = train_trials(digits3, MLPConfig((32, 16)), cfg, trials, CPU, on_epoch)
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    assert calls[1][1:] == ([0, 1, 2], (3, 3))
    assert calls[2][1:] == ([0, 2], (2, 3))
    assert res[1].stopped and res[1].epochs_run == 2
    assert not res[0].stopped and res[0].epochs_run == 4
    assert not res[2].stopped and res[2].epochs_run == 4
    # a dropout-free trial does not depend on its batch-mates: same as training it alone
    (alone,) = train_trials(digits3, MLPConfig((32, 16)), cfg, trials[:1], CPU)
    np.testing.assert_allclose(res[0].fold_scores, alone.fold_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "fixture", "batch_size", "metric"),
    [
        (MLPConfig((32, 16)), "digits3", 64, "log_loss"),
        (CNNConfig((4,), 16), "digits3", 64, "log_loss"),
        (MLPConfig((32, 16)), "digits5", 479, "log_loss"),
        (MLPConfig((32, 16)), "reg5", 241, "rmse"),
    ],
    ids=["mlp", "cnn", "mlp-uneven-folds", "mlp-regression-uneven-folds"],
)
def test_a_trials_scores_do_not_depend_on_its_batch_mates(
    request: pytest.FixtureRequest,
    model: MLPConfig | CNNConfig,
    fixture: str,
    batch_size: int,
    metric: str,
) -> None:
    """Masks come from per-fold draws: batch size, order and pruning of others change nothing
    (uneven: folds of 1437 and 1438 rows take 3 and 4 steps of 479, regression folds of 482 and
    483 rows 2 and 3 steps of 241, so MemberAdam runs)."""
    data: FoldData = request.getfixturevalue(fixture)
    cfg = TrainConfig(epochs=3, metric=metric, seed=3, batch_size=batch_size)
    me, other, third = TrialRates((0.3,)), TrialRates((0.5,)), TrialRates((0.1,))
    (alone,) = train_trials(data, model, cfg, [me], CPU)
    runs = {
        "first of two": train_trials(data, model, cfg, [me, other], CPU)[0],
        "second of three": train_trials(data, model, cfg, [other, me, third], CPU)[1],
        "batch-mate pruned after epoch 1": train_trials(
            data, model, cfg, [other, me], CPU, lambda e, a, s: [0] if e == 1 else []
        )[1],
    }
    for how, r in runs.items():
        np.testing.assert_allclose(r.fold_scores, alone.fold_scores, rtol=0, atol=1e-5, err_msg=how)
    (another,) = train_trials(data, model, cfg, [other], CPU)
    assert np.abs(np.subtract(another.fold_scores, alone.fold_scores)).max() > 1e-3


def test_on_epoch_can_abort_the_batch(digits3: FoldData) -> None:
    def boom(epoch: int, active: list[int], scores: np.ndarray) -> list[int]:
        raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt, match="cancelled"):
        train_trials(
            digits3, MLPConfig((8,)), TrainConfig(epochs=3), [TrialRates((0.1,))], CPU, boom
        )


def test_stopping_everyone_ends_early(digits3: FoldData) -> None:
    res = train_trials(
        digits3,
        MLPConfig((8,)),
        TrainConfig(epochs=5),
        [TrialRates((0.1,))] * 2,
        CPU,
        lambda e, active, s: active,
    )
    assert all(r.stopped and r.epochs_run == 1 for r in res)


def test_rates_per_layer_and_input_dropout_are_applied() -> None:
    torch.manual_seed(0)
    net = StackedMLP(3, 20, (400, 300), 5, generator=torch.Generator().manual_seed(0))
    net.set_rates([[0.0, 0.0], [0.5, 0.1], [0.2, 0.8]], [0.0, 0.3, 0.0])
    assert net.rates[1].tolist() == pytest.approx([0.5, 0.1])
    x = torch.randn(3, 256, 20)
    net.eval()
    e1, e2 = net(x), net(x)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)  # no dropout in eval
    for m in range(3):  # eval is the plain standalone network
        torch.testing.assert_close(net.export_member(m).eval()(x[m]), e1[m], rtol=0, atol=1e-5)
    net.train()
    t1 = net(x)
    torch.testing.assert_close(t1[0], e1[0], rtol=0, atol=1e-5)  # rate 0 member: untouched
    assert not torch.allclose(t1[1], e1[1]) and not torch.allclose(t1[2], e1[2])
    assert not torch.allclose(net(x)[1], t1[1])  # fresh masks each call


@pytest.mark.parametrize("torch_rand", [False, True], ids=["sfc64-lanes", "torch-rand"])
def test_dropout_mask_statistics(torch_rand: bool) -> None:
    """Both mask paths (numpy lanes on CPU; torch.rand, the accelerator path, forced here)."""

    def rng(seed: int, folds: int | None = None) -> MaskRNG:
        return MaskRNG(seed, folds=folds, torch_rand=torch_rand)

    x = torch.ones(4, 64, 4000)
    rates = (0.0, 0.25, 0.75, 0.5)
    h = dropout_members(x, torch.tensor(rates), rng(0))
    for m, p in enumerate(rates):
        dropped = float((h[m] == 0).float().mean())
        assert abs(dropped - p) < 0.01, (m, dropped)
        assert abs(float(h[m].mean()) - 1.0) < 0.04  # inverted scaling keeps the expectation
        kept = h[m][h[m] != 0]
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))
    # channel-wise (Dropout2d): whole [H, W] maps are kept or dropped together
    maps = dropout_members(torch.ones(2, 32, 16, 5, 5), torch.tensor([0.5, 0.5]), rng(1), True)
    per_map = maps.flatten(3)
    assert bool((per_map.amax(-1) == per_map.amin(-1)).all())
    assert 0.4 < float((per_map[..., 0] == 0).float().mean()) < 0.6
    # reproducible for a seed, different across seeds
    a = dropout_members(x[:1], torch.tensor([0.5]), rng(3))
    assert torch.equal(a, dropout_members(x[:1], torch.tensor([0.5]), rng(3)))
    assert not torch.equal(a, dropout_members(x[:1], torch.tensor([0.5]), rng(4)))
    # per-fold draws (members b*K + k): trials on a fold get nested masks, folds differ
    h = dropout_members(torch.ones(4, 64, 500), torch.tensor([0.3, 0.3, 0.6, 0.6]), rng(5, 2))
    assert bool(((h[0] == 0) <= (h[2] == 0)).all()) and bool(((h[1] == 0) <= (h[3] == 0)).all())
    assert not torch.equal(h[0] == 0, h[1] == 0)
    assert 0.55 < float((h[2] == 0).float().mean()) < 0.65


def test_cnn_rates_and_trials(digits3: FoldData) -> None:
    net = StackedCNN(2, (1, 8, 8), (4, 8), 16, 10)
    assert net.n_layers == 3
    with pytest.raises(ValueError):
        net.set_rates([[0.1, 0.2], [0.1, 0.2]])  # 2 rates for 3 layers
    net.set_rates([[0.0, 0.0, 0.0], [0.5, 0.3, 0.2]])
    x = digits3.X_std[0, :32].expand(2, 32, 64).contiguous()
    net.eval()
    e = net(x)
    net.train()
    t = net(x)
    torch.testing.assert_close(t[0], e[0], rtol=0, atol=1e-5)
    assert not torch.allclose(t[1], e[1])
    cfg = TrainConfig(epochs=2, lr=1e-2)
    res = train_trials(digits3, CNNConfig((4, 8), 16), cfg, [TrialRates((0.1, 0.2, 0.3))])
    assert res[0].mean > 0.5
    with pytest.raises(ValueError, match="input dropout"):
        train_trials(digits3, CNNConfig((4,), 8), cfg, [TrialRates((0.1,), input=0.2)])


def test_bad_rates_rejected(digits3: FoldData) -> None:
    with pytest.raises(ValueError, match="rates"):
        train_trials(
            digits3, MLPConfig((8, 8)), TrainConfig(epochs=1), [TrialRates((0.1, 0.2, 0.3))]
        )
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        train_trials(digits3, MLPConfig((8,)), TrainConfig(epochs=1), [TrialRates((1.0,))])


def test_chunked_evaluation_equals_one_shot(digits3: FoldData) -> None:
    net = StackedMLP(6, 64, (16,), 10, generator=torch.Generator().manual_seed(0))
    fold_of = torch.tensor([0, 1, 2, 0, 1, 2])
    full = evaluate(net, digits3, fold_of, "log_loss")
    chunked = evaluate(net, digits3, fold_of, "log_loss", max_rows=700)  # 1 member per chunk
    torch.testing.assert_close(full, chunked)
    acc = evaluate(net, digits3, fold_of, "accuracy")
    assert acc.shape == (6,) and bool(((acc >= 0) & (acc <= 1)).all())


def test_helpers(digits3: FoldData) -> None:
    b = auto_batch_trials(MLPConfig(), digits3, 100, CPU)
    assert 1 <= b <= 16
    assert auto_batch_trials(MLPConfig(), digits3, 3, CPU) <= 3
    cfg = TrainConfig(epochs=2)
    f = flops_per_trial(MLPConfig((10,)), digits3, cfg)
    per_sample = 2 * (64 * 10 + 10 * 10)
    assert f == pytest.approx(2 * per_sample * (3 * 2 * 1797 + 1797))
    assert flops_per_trial(CNNConfig(), digits3, cfg) > f
    with pytest.raises(ValueError, match="lives on"):
        train_trials(digits3, MLPConfig((8,)), cfg, [TrialRates((0.1,))], device="cuda")
    assert train_trials(digits3, MLPConfig((8,)), cfg, [], device="cpu:0") == []
