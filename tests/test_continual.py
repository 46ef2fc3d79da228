"""Continual learning: metrics, EWC, replay, LwF and one adapter per task, against hand computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18

from ftlab.continual import (
    EWC,
    AdapterPerTask,
    LwF,
    Naive,
    Replay,
    ReplayBuffer,
    Scenario,
    Task,
    adapter_model,
    average_accuracy,
    backward_transfer,
    diagonal_fisher,
    distillation_loss,
    forgetting,
    run_sequence,
)
from ftlab.multitask import Tagged


def _tiny_linear():
    """Linear(2, 2) without bias, W = 0, float64: every softmax is (1/2, 1/2)."""
    model = nn.Linear(2, 2, bias=False).double()
    nn.init.zeros_(model.weight)
    return model


def _tasks(classes_per_task=((0, 1), (2, 3)), n=16, dim=2, seed=0):
    """Synthetic tasks of ``dim``-vectors with global labels, as loaders over TensorDatasets."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for j, classes in enumerate(classes_per_task):
        x = torch.randn(n, dim, generator=g, dtype=torch.float64)
        y = torch.tensor([classes[k % len(classes)] for k in range(n)])
        data = TensorDataset(x, y)
        tasks.append(Task(f"t{j}", DataLoader(data, batch_size=4), DataLoader(data, batch_size=8), list(classes)))
    return tasks


# ---------------------------------------------------------------- metrics

def test_metrics_follow_their_written_definitions():
    R = np.array([[0.90, 0.10, 0.20],
                  [0.95, 0.80, 0.30],
                  [0.50, 0.70, 0.90]])
    assert average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.90) / 3)
    # BWT (Lopez-Paz & Ranzato): ((0.50 - 0.90) + (0.70 - 0.80)) / 2
    assert backward_transfer(R) == pytest.approx(-0.25)
    # forgetting (Chaudhry et al.): best earlier accuracy, here 0.95 after task 1, minus final
    np.testing.assert_allclose(forgetting(R), [0.95 - 0.50, 0.80 - 0.70])


def test_metrics_reject_a_matrix_that_is_not_square():
    with pytest.raises(ValueError, match="square"):
        forgetting(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="T >= 2"):
        backward_transfer(np.zeros((1, 1)))


# ---------------------------------------------------------------- EWC

# Two examples for the tiny model (W = 0, p = (1/2, 1/2)). The gradient of -log p_y is (p - e_y) x^T:
#   x1 = (1, 2), y1 = 0: p - e = (-1/2, 1/2) -> grad [[-0.5, -1], [0.5, 1]] -> squared [[0.25, 1], [0.25, 1]]
#   x2 = (2, 0), y2 = 1: p - e = (1/2, -1/2) -> grad [[1, 0], [-1, 0]]      -> squared [[1, 0], [1, 0]]
# Fisher = mean of the squares = [[0.625, 0.5], [0.625, 0.5]]. (The squared mean gradient would be
# [[0.0625, 0.25], [0.0625, 0.25]]: the Fisher needs per-example gradients.)
EXAMPLES = [(torch.tensor([[1.0, 2.0], [2.0, 0.0]], dtype=torch.float64), torch.tensor([0, 1]))]
FISHER = torch.tensor([[0.625, 0.5], [0.625, 0.5]], dtype=torch.float64)
DELTA = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # theta - theta*


def test_fisher_equals_the_hand_computation_with_per_example_gradients():
    model = _tiny_linear()
    fisher = diagonal_fisher(model, EXAMPLES)
    assert list(fisher) == ["weight"]
    torch.testing.assert_close(fisher["weight"], FISHER, rtol=0, atol=1e-15)
    assert model.weight.grad is None and model.training  # .grad untouched, train mode restored
    torch.testing.assert_close(diagonal_fisher(model, EXAMPLES, max_examples=1)["weight"],
                               torch.tensor([[0.25, 1.0], [0.25, 1.0]], dtype=torch.float64))


def test_ewc_penalty_and_its_gradient_equal_the_hand_computation():
    model = _tiny_linear()
    ewc = EWC(ewc_lambda=2.0)
    assert ewc.penalty(model).item() == 0.0  # no anchor yet
    ewc.consolidate(model, EXAMPLES)
    with torch.no_grad():
        model.weight += DELTA
    penalty = ewc.penalty(model)
    # 2 * (0.625 * 1^2 + 0.5 * 2^2) = 2 * 2.625
    assert penalty.item() == pytest.approx(5.25, abs=1e-12)
    penalty.backward()
    # d/dtheta lambda F (theta - theta*)^2 = 2 lambda F (theta - theta*)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[2.5, 0.0], [0.0, 4.0]], dtype=torch.float64))


def test_ewc_separate_keeps_one_term_per_task_and_online_folds_them():
    second = [(torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.tensor([0]))]  # Fisher [[0, 0.25], [0, 0.25]]
    separate, online = EWC(2.0), EWC(2.0, online=True, gamma=0.5)
    for ewc in (separate, online):
        model = _tiny_linear()
        ewc.consolidate(model, EXAMPLES)
        ewc.consolidate(model, second)
    assert len(separate.anchors) == 2 and len(online.anchors) == 1
    torch.testing.assert_close(online.anchors[0][0]["weight"],
                               torch.tensor([[0.3125, 0.5], [0.3125, 0.5]], dtype=torch.float64))  # 0.5 F1 + F2
    with torch.no_grad():
        model.weight += DELTA
    # separate: 2 * (2.625 + 0.25 * 2^2); online: 2 * (0.3125 * 1 + 0.5 * 2^2)
    assert separate.penalty(model).item() == pytest.approx(7.25, abs=1e-12)
    assert online.penalty(model).item() == pytest.approx(4.625, abs=1e-12)


@pytest.mark.parametrize("options, message", [({"ewc_lambda": -1.0}, "ewc_lambda must be a number >= 0"),
                                              ({"ewc_lambda": float("nan")}, "ewc_lambda"),
                                              ({"gamma": 0.0}, "gamma")])
def test_bad_ewc_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        EWC(**options)


# ---------------------------------------------------------------- replay

def test_replay_buffer_never_exceeds_its_size_and_stays_class_balanced():
    buffer = ReplayBuffer(23, seed=0)
    rng = np.random.default_rng(0)
    for classes in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]):  # two tasks, as in continual learning
        stream = rng.permutation(np.repeat(classes, 40))
        for n, label in enumerate(stream):
            buffer.add(("example", n), label)
            assert len(buffer) <= 23
        counts = buffer.counts()
        assert sorted(counts) == list(range(classes[-1] + 1))
        assert len(buffer) == 23 and max(counts.values()) - min(counts.values()) <= 1
    assert all(len(items) == 2 or len(items) == 3 for items in buffer.by_class.values())


def test_replay_buffer_sample_is_bounded_and_drawn_from_the_buffer():
    buffer = ReplayBuffer(6, seed=0)
    for n in range(4):
        buffer.add(n, n % 2)
    stored = {item for items in buffer.by_class.values() for item in items}
    assert len(buffer.sample(10)) == 4 and set(buffer.sample(3)) <= stored


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_replay_buffer_of_size_zero_or_less_raises(size):
    with pytest.raises(ValueError, match="at least 1"):
        ReplayBuffer(size)
    with pytest.raises(ValueError, match="at least 1"):
        Replay(buffer_size=size)


def test_replay_loss_is_the_cross_entropy_of_both_batches_together():
    tasks = _tasks()
    scenario = Scenario(tasks, "class")
    model = nn.Linear(2, 4).double()
    replay = Replay(buffer_size=8, seed=0)
    replay.after_task(model, scenario, 0)
    assert len(replay.buffer) == 8 and replay.buffer.counts() == {0: 4, 1: 4}
    batch = next(iter(tasks[1].train))
    state = replay.buffer.rng.getstate()
    loss = replay.loss(model, batch, scenario, 1)
    replay.buffer.rng.setstate(state)
    old_x, old_y = tasks[1].train.collate_fn(replay.buffer.sample(4))
    x, y = torch.cat([batch[0], old_x]), torch.cat([batch[1], old_y])
    assert old_y.max() < 2 and batch[1].min() >= 2  # replayed examples come from task 0
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))  # all 4 classes seen: nothing masked


# ---------------------------------------------------------------- LwF

def test_distillation_loss_equals_the_kl_formula_by_hand():
    # T = 2: old/T = (0, ln 3) -> p_old = (1/4, 3/4); new/T = (0, 0) -> p = (1/2, 1/2)
    # KL = 1/4 ln(1/4 / 1/2) + 3/4 ln(3/4 / 1/2) = 1/4 ln(1/2) + 3/4 ln(3/2), times T^2 = 4
    old = torch.tensor([[0.0, 2 * math.log(3)], [0.0, 0.0]], dtype=torch.float64)
    new = torch.zeros(2, 2, dtype=torch.float64)
    first = 4 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert distillation_loss(new, old, T=2.0).item() == pytest.approx((first + 0.0) / 2, abs=1e-14)  # batch mean
    assert first == pytest.approx(0.523248, abs=1e-6)
    with pytest.raises(ValueError, match="positive"):
        distillation_loss(new, old, T=0)


@pytest.mark.parametrize("setting", ["task", "class"])
def test_lwf_loss_is_cross_entropy_plus_alpha_times_the_kl_to_the_old_model(setting):
    tasks = _tasks(((0, 1), (2, 3), (4, 5)))
    scenario = Scenario(tasks, setting)
    torch.manual_seed(0)
    model = nn.Linear(2, 6).double()
    lwf = LwF(alpha=0.7, T=3.0)
    lwf.before_task(model, scenario, 2)
    old = model.weight.detach().clone(), model.bias.detach().clone()
    with torch.no_grad():
        model.weight.mul_(1.5).add_(0.1)  # the new model has moved away from the old one
    x, y = next(iter(tasks[2].train))
    z, z_old = model(x), F.linear(x, *old)
    allowed = torch.tensor([0, 0, 0, 0, 1, 1] if setting == "task" else [1] * 6, dtype=torch.bool)
    expected = F.cross_entropy(z.masked_fill(~allowed, float("-inf")), y)
    groups = [[0, 1], [2, 3]] if setting == "task" else [[0, 1, 2, 3]]  # one softmax per old head, or all old classes
    for g in groups:
        p_old, log_p = F.softmax(z_old[:, g] / 3, -1), F.log_softmax(z[:, g] / 3, -1)
        expected = expected + 0.7 * 9 * (p_old * (p_old.log() - log_p)).sum(-1).mean()
    torch.testing.assert_close(lwf.loss(model, (x, y), scenario, 2), expected)


# ---------------------------------------------------------------- one adapter per task

def _image_tasks():
    g = torch.Generator().manual_seed(0)
    tasks = []
    for j, classes in enumerate(([0, 1], [2, 3, 4])):
        x = torch.randn(12, 3, 32, 32, generator=g)
        y = torch.tensor([classes[k % len(classes)] for k in range(12)])
        tasks.append(Task(f"task {j}", DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True,
                                                  generator=torch.Generator().manual_seed(j)),
                          DataLoader(TensorDataset(x, y), batch_size=12), classes))
    return tasks


def test_one_adapter_per_task_leaves_earlier_logits_bit_identical():
    tasks = _image_tasks()
    torch.manual_seed(0)
    model = adapter_model(resnet18(num_classes=10), tasks, r=2, lora_alpha=4)
    scenario = Scenario(tasks, "task")
    x0 = tasks[0].test.dataset.tensors[0]
    x1 = tasks[1].test.dataset.tensors[0]
    snapshots = []

    class Probe(AdapterPerTask):  # record both tasks' logits after each task
        def after_task(self, model, scenario, i):
            model.eval()
            with torch.no_grad():
                snapshots.append((model(task="task 0", x=x0).clone(), model(task="task 1", x=x1).clone()))

    base = {k: v.clone() for k, v in model.backbone.state_dict().items() if "lora_" not in k}
    result = run_sequence(model, scenario, Probe(), num_steps=3, lr=1e-2)
    (first_after_0, second_after_0), (first_after_1, second_after_1) = snapshots
    assert torch.equal(first_after_0, first_after_1)  # bit-identical after training task 1
    assert not torch.allclose(second_after_0, second_after_1)  # task 1 did train
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # base weights and BatchNorm statistics
    assert result["forgetting"][0] == 0.0 and result["R"][1, 0] == result["R"][0, 0]


def test_adapters_need_the_task_incremental_setting_and_an_adapter_model():
    tasks = _image_tasks()
    with pytest.raises(ValueError, match="setting='task'"):
        run_sequence(adapter_model(resnet18(num_classes=10), tasks, r=2), Scenario(tasks, "class"),
                     AdapterPerTask(), num_steps=1)
    with pytest.raises(TypeError, match="adapter_model"):
        run_sequence(resnet18(num_classes=10), Scenario(tasks, "task"), AdapterPerTask(), num_steps=1)


# ---------------------------------------------------------------- scenarios and runs

def test_task_incremental_masks_each_example_to_its_task_and_class_incremental_to_classes_seen():
    scenario = Scenario(_tasks(((0, 1), (2, 3, 4))), "task")
    labels = torch.tensor([1, 3])
    assert scenario.mask(labels, 1).tolist() == [[True, True, False, False, False],
                                                 [False, False, True, True, True]]
    scenario.setting = "class"
    assert scenario.mask(labels, 0).tolist() == [[True, True, False, False, False]]
    assert scenario.mask(labels, 1).tolist() == [[True] * 5]


def test_accuracy_matrix_in_both_settings_with_a_model_that_always_says_class_3():
    class Always3(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            logits = torch.zeros(len(x), 4, dtype=x.dtype) + self.w
            logits[:, 3] = 5.0
            logits[:, 0] = 1.0  # second choice
            return logits

    tasks = _tasks()  # classes (0, 1) then (2, 3), labels alternate
    task_il = run_sequence(Always3(), Scenario(tasks, "task"), Naive(), num_steps=1, lr=0.0)
    class_il = run_sequence(Always3(), Scenario(tasks, "class"), Naive(), num_steps=1, lr=0.0)
    # task-incremental: task 0 only sees classes 0, 1 -> says 0 (half right); task 1 says 3 (half right)
    np.testing.assert_allclose(task_il["R"], [[0.5, 0.5], [0.5, 0.5]])
    # class-incremental: after task 0 only classes 0, 1 exist -> task 0 half right, task 1 all wrong;
    # after task 1 the model says 3 for everything
    np.testing.assert_allclose(class_il["R"], [[0.5, 0.0], [0.0, 0.5]])
    assert class_il["forgetting"][0] == pytest.approx(0.5) and class_il["bwt"] == pytest.approx(-0.5)


def test_a_naive_run_trains_each_task_and_fills_the_matrix():
    tasks = _tasks(n=32)
    torch.manual_seed(0)
    result = run_sequence(nn.Linear(2, 4).double(), Scenario(tasks, "task"), Naive(), num_steps=30, lr=0.1)
    assert result["R"].shape == (2, 2) and len(result["histories"]) == 2
    assert result["histories"][0]["loss"][-1] < result["histories"][0]["loss"][0]


def test_every_strategy_runs_a_sequence_of_text_tasks(minilm):
    from ftlab.continual import text_tasks

    model, tokenizer = minilm
    model.classifier = nn.Linear(model.config.hidden_size, 6)
    tasks = text_tasks(tokenizer, batch_size=4, sizes={"train": 8, "validation": 4, "test": 8})
    assert [t.classes for t in tasks] == [[0, 1], [2, 3, 4, 5]]
    assert next(iter(tasks[1].train))["labels"].min() >= 2
    for strategy in (EWC(1.0, max_examples=4), Replay(buffer_size=4), LwF()):
        result = run_sequence(model, Scenario(tasks, "class"), strategy, num_steps=1, lr=1e-4)
        assert result["R"].shape == (2, 2)


def test_scenario_rejects_an_empty_task_shared_classes_and_an_unknown_setting():
    tasks = _tasks()
    empty = Task("empty", [], tasks[0].test, [5])
    with pytest.raises(ValueError, match="'empty' is empty"):
        Scenario([tasks[0], empty])
    with pytest.raises(ValueError, match="reuses classes"):
        Scenario([tasks[0], Task("again", tasks[1].train, tasks[1].test, [1, 2])])
    with pytest.raises(ValueError, match="setting"):
        Scenario(tasks, "domain")
    with pytest.raises(ValueError, match="at least one task"):
        Scenario([])
    with pytest.raises(ValueError, match="no classes"):
        Scenario([Task("none", tasks[0].train, tasks[0].test, [])])


def test_an_unknown_task_id_raises_and_leaves_the_adapter_model_untouched(untouched):
    tasks = _image_tasks()
    model = adapter_model(resnet18(num_classes=10), tasks, r=2)
    check = untouched(model)
    with pytest.raises(ValueError, match="unknown task 'task 7'"):
        model(task="task 7", x=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        model(**next(iter(Tagged(tasks[0].train, "nope"))))
    check()


def test_compare_strategies_rejects_an_unknown_sequence_or_setting_before_loading_anything():
    from ftlab.continual import compare_strategies

    with pytest.raises(ValueError, match="sequence must be one of"):
        compare_strategies("letters")
    with pytest.raises(ValueError, match="setting must be one of"):
        compare_strategies("digits", "domain")


def test_compare_strategies_runs_every_strategy_per_seed_from_a_fresh_copy_and_averages_over_seeds():
    from ftlab.compare import summarize
    from ftlab.continual import compare_strategies

    replay = Replay(10)
    result = compare_strategies("digits", "class", {"naive": Naive(), "replay": replay}, num_steps=1, seeds=[0, 1])
    runs = result["runs"]
    assert list(zip(runs.strategy, runs.seed)) == [("naive", 0), ("naive", 1), ("replay", 0), ("replay", 1)]
    assert len(replay.buffer) == 0, "the strategy passed in stays pristine: each run trains a copy"
    assert list(result["summary"].columns) == ["strategy", "setting", "acc", "bwt", "forgetting", "forgetting_first",
                                               "n"]
    naive = result["summary"].iloc[0]
    assert naive["acc"] == pytest.approx(runs.acc[:2].mean()) and naive["n"] == 2
    np.testing.assert_allclose(result["R"]["naive"], (result["R_runs"]["naive", 0] + result["R_runs"]["naive", 1]) / 2)
    assert list(summarize(runs, "acc")["n"]) == [2, 2]


def test_lwf_distillation_is_zero_at_the_start_of_a_task_with_batchnorm_in_train_mode():
    # The old model must normalise like the training model: batch statistics where its BatchNorm trains.
    # A teacher with running statistics would disagree with the unchanged student before any step.
    tasks = _tasks(((0, 1), (2, 3)), dim=3)
    scenario = Scenario(tasks, "task")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).double()
    model[1].running_mean.fill_(5.0)  # running statistics far from any batch's
    model.train()
    lwf = LwF(alpha=1.0, T=2.0)
    lwf.before_task(model, scenario, 1)
    x, y = next(iter(tasks[1].train))
    running = lwf.old_model[1].running_mean.clone()
    with torch.no_grad():
        ce = scenario.cross_entropy(model(x), y, 1)
        torch.testing.assert_close(lwf.loss(model, (x, y), scenario, 1), ce, rtol=0, atol=1e-12)
    torch.testing.assert_close(lwf.old_model[1].running_mean, running, rtol=0, atol=0)  # teacher stats untouched
    model[1].eval()  # a BatchNorm frozen in the student is frozen in the teacher too
    with torch.no_grad():
        torch.testing.assert_close(lwf.loss(model, (x, y), scenario, 1), scenario.cross_entropy(model(x), y, 1),
                                   rtol=0, atol=1e-12)
