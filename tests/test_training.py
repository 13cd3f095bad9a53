"""Objectives, scenarios, schedule and the training loop (tiny models, synthetic data)."""

import pytest
import torch
import torch.nn.functional as F

import dvn
from dvn.training import (SCENARIOS, TrainConfig, distillation_loss, get_scenario, joint_loss,
                          label_map, lr_at, sequential_loss, train)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(tasks=2, classes=5):
    return dvn.wrn(8, 1, units=2, tasks=tasks, num_classes=classes, input_sizes=16,
                   image_channels=1, backend="reference").double()


def test_distillation_is_lwf_cross_entropy():
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    p = F.softmax(t, 1) ** 0.5
    p = p / p.sum(1, keepdim=True)  # LwF: teacher probabilities ^ (1/T), renormalised
    expected = -(p * F.log_softmax(s / 2, 1)).sum(1).mean()
    assert torch.allclose(distillation_loss(s, t, 2.0), expected)
    s.requires_grad_(True)
    distillation_loss(s, s.detach()).backward()  # a student equal to the teacher is optimal
    assert s.grad.abs().max() < 1e-12
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 4))


def test_joint_loss_is_unweighted_sum_over_tasks_and_levels():
    model = tiny_model()
    batches = {j: (torch.randn(4, 1, 16, 16, dtype=torch.float64), torch.randint(0, 5, (4,)))
               for j in (1, 2)}
    configs = [(j, l) for j in (1, 2) for l in (1, 2)]
    stats = {}
    got = joint_loss(model, batches, configs, stats)
    want = sum(F.cross_entropy(model(batches[j][0], task=j, level=l), batches[j][1])
               for j, l in configs)
    assert torch.allclose(got, want)
    assert sorted(stats) == configs and all(m == 4 for _, _, m in stats.values())


def test_sequential_loss_distils_every_old_level_on_new_data():
    model, teacher = tiny_model(), tiny_model()
    x, y = torch.randn(4, 1, 16, 16, dtype=torch.float64), torch.randint(0, 5, (4,))
    got = sequential_loss(model, lambda x, j: teacher(x, task=j, level=2), (x, y), [1], 2, 2)
    t = teacher(x, task=1, level=2)
    want = sum(distillation_loss(model(x, task=1, level=l), t) for l in (1, 2)) + \
        sum(F.cross_entropy(model(x, task=2, level=l), y) for l in (1, 2))
    assert torch.allclose(got, want)
    got.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_label_map_of_a_hierarchy():
    fine = torch.tensor([0, 1, 2, 3, 3, 0])
    assert label_map(fine // 2, fine, 4).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="not a hierarchy"):
        label_map(torch.tensor([0, 1, 0, 0, 0, 1]), fine, 4)


def test_paper_scenarios():
    s = SCENARIOS
    assert (s["J1"].arch, s["J1"].depth, s["J1"].width, s["J1"].units) == ("wrn", 32, 4, 2)
    assert (s["J2"].arch, s["J2"].depth, s["J2"].units, len(s["J2"].tasks)) == ("resnet", 42, 4, 4)
    assert s["J3"].input_sizes == (64, 32, 96)
    assert s["H1"].kind == "hierarchical" and s["S1"].kind == s["S2"].kind == "sequential"
    assert s["S2"].width == 8
    for sc in s.values():  # the paper's schedule
        assert (sc.lr, sc.momentum, sc.weight_decay, sc.milestones) == (0.1, 0.9, 1e-4,
                                                                       (0.5, 0.75))
    assert get_scenario("J2", "small").depth == 10  # presets fit each backbone
    for bad, match in [(("nope",), "scenario"), (("J1", "huge"), "preset")]:
        with pytest.raises(ValueError, match=match):
            get_scenario(*bad)


def test_schedule_decays_at_half_and_three_quarters():
    s = get_scenario("J1")
    assert [lr_at(s, i, 100) for i in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_linear_schedule_warms_up_then_decays_to_zero():
    s = get_scenario("J1").replace(schedule="linear", warmup=0.1)
    assert [lr_at(s, i, 100) for i in (0, 9, 10, 55, 99)] == pytest.approx(
        [0.01, 0.1, 0.1, 0.05, 0.1 / 90])
    for bad, match in [(dict(schedule="cosine"), "schedule"), (dict(warmup=1.0), "warmup"),
                       (dict(lwf_warmup=-0.1), "lwf_warmup"), (dict(arch="vgg"), "arch")]:
        with pytest.raises(ValueError, match=match):
            s.replace(**bad)


@pytest.mark.parametrize("name", ["fmnist-joint", "fmnist-hier"])
def test_training_lowers_the_loss(synthetic, tmp_path, name):
    s = get_scenario(name, "tiny", epochs=3)
    out = train(TrainConfig(s, "tiny", str(tmp_path / "run"), backend="cpu"), quiet=True)
    losses = [h["loss"] for h in out["history"]]
    assert losses[-1] < losses[0]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    model = dvn.load(tmp_path / "run" / "checkpoint.pt")  # a training checkpoint is a dvn file
    assert model.networks.tasks == 2


def test_sequential_needs_a_matching_teacher(synthetic, tmp_path):
    s = get_scenario("fmnist-seq", "tiny", epochs=1)
    with pytest.raises(ValueError, match="teacher"):
        train(TrainConfig(s, "tiny", str(tmp_path / "a")), quiet=True)
    old = train(TrainConfig(s, "tiny", str(tmp_path / "old"), only=((1, 2),)), quiet=True)
    new = train(TrainConfig(s, "tiny", str(tmp_path / "new"), teacher=str(tmp_path / "old")),
                quiet=True)
    assert sorted(new["configs"]) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # the student starts from the old network: its old-task head is the teacher's
    assert new["model"].heads.heads["t1_l2"].weight.shape == \
        old["model"].heads.heads["t1_l2"].weight.shape
    assert old["parameters"] == {"t1_l2": new["parameters"]["t1_l2"]}
    other = get_scenario("fmnist-seq", "tiny", epochs=1).replace(width=2)
    with pytest.raises(ValueError, match="teacher"):
        train(TrainConfig(other, "tiny", str(tmp_path / "x"), teacher=str(tmp_path / "old")),
              quiet=True)


def test_divergence_stops_and_keeps_the_last_checkpoint(synthetic, tmp_path):
    s = get_scenario("fmnist-joint", "tiny", epochs=2, lr=1e12)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(TrainConfig(s, "tiny", str(tmp_path / "run"), backend="cpu"), quiet=True)


def test_sequential_keeps_the_old_tasks_batch_norm_statistics(synthetic, tmp_path):
    """The new task's images must not overwrite the old task's statistics (every level), while
    the new task's own statistics do move; a teacher trained with another backend is accepted."""
    s = get_scenario("fmnist-seq", "tiny", epochs=1)
    old = train(TrainConfig(s, "tiny", str(tmp_path / "old"), only=((1, 1), (1, 2)),
                            backend="reference"), quiet=True)
    new = train(TrainConfig(s, "tiny", str(tmp_path / "new"), teacher=str(tmp_path / "old"),
                            backend="cpu"), quiet=True)
    before, after = old["model"].state_dict(), new["model"].state_dict()
    stats = [k for k in after if k.endswith("running_mean")]
    assert any(".t1_l1." in k for k in stats) and any(".t2_l2." in k for k in stats)
    for k in stats:
        if ".t1_" in k:
            torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    assert any(not torch.equal(after[k], before[k]) for k in stats if ".t2_" in k)


def test_lwf_warmup_trains_only_the_new_tasks_own_parameters(synthetic, tmp_path):
    """During the warm-up (here the first of two epochs) the shared convolutions and the old
    task's parameters stay the old network's; the new task's stem, norms and heads move."""
    s = get_scenario("fmnist-seq", "tiny", epochs=2).replace(lwf_warmup=0.5)
    old = train(TrainConfig(s, "tiny", str(tmp_path / "old"), only=((1, 1), (1, 2)),
                            backend="cpu"), quiet=True)
    new = train(TrainConfig(s, "tiny", str(tmp_path / "new"), teacher=str(tmp_path / "old"),
                            backend="cpu"), quiet=True, stop_after=1)
    before, after = old["model"].state_dict(), new["model"].state_dict()
    params = dict(new["model"].named_parameters())
    own = [k for k in params if k.startswith("stems.t2") or ".t2_" in k]
    assert own and all(not torch.equal(after[k], before[k]) for k in own if "stems" not in k)
    for k in params:
        if k not in own:
            torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    assert sorted(k for k in new["history"][0] if k.startswith("t")) == ["t2_l1", "t2_l2"]
    resumed = train(TrainConfig(s, "tiny", str(tmp_path / "new"), teacher=str(tmp_path / "old"),
                                backend="cpu"), quiet=True, resume=True)
    conv = "blocks.0.conv1.weight"  # then everything trains, with the distillation
    assert not torch.equal(resumed["model"].state_dict()[conv], before[conv])
    assert "t1_l2" in resumed["history"][1]
