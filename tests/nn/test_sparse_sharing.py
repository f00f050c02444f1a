"""Sparse sharing (rankops.nn.SparseSharing): per-task masks pick each task's subnetwork, the
contrastive mask shares a conflicting weight's update by importance, alternating task updates
(rankops.train.losses.AlternatingTasks) through a model's loss()."""

import copy

import pytest
import torch

import rankops.models as zoo
from rankops.data.schema import Schema
from rankops.data.synthetic import random_batch
from rankops.nn import SparseSharing, SparseSharingLayer
from rankops.train.losses import AlternatingTasks, multitask_loss


def test_shapes_and_all_masks_on_at_start():
    torch.manual_seed(0)
    ss = SparseSharing(6, num_tasks=3, hidden_units=(5, 4))
    out = ss(torch.randn(7, 6))
    assert out.shape == (7, 3, 4)
    assert all(l.masks().all() for l in ss.layers)
    # every mask on: each task's subnetwork is the one shared MLP
    torch.testing.assert_close(out[:, 0], out[:, 1], rtol=0, atol=0)
    assert ss.sharing()["kept/all"] == 1.0


def test_a_task_mask_removes_weights_from_that_task_only():
    torch.manual_seed(0)
    layer = SparseSharingLayer(4, 3, num_tasks=2)
    x = torch.randn(5, 4)
    before = [layer(x, t).detach() for t in range(2)]
    with torch.no_grad():
        layer.scores[0, 1, :] = -1.0  # task 0 drops every weight into output unit 1
    after = [layer(x, t).detach() for t in range(2)]
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)  # task 1 unchanged
    torch.testing.assert_close(after[0][:, 1], layer.bias.detach()[1].expand(5), rtol=0, atol=0)
    torch.testing.assert_close(after[0][:, [0, 2]], before[0][:, [0, 2]], rtol=0, atol=0)


def test_mask_scores_get_the_straight_through_gradient():
    torch.manual_seed(0)
    layer = SparseSharingLayer(4, 3, num_tasks=2, score_init=0.5, temperature=2.0)
    x = torch.randn(5, 4)
    layer(x, 0).sum().backward()
    # d out / d m = W * x summed over the batch; d m / d S = sigmoid'(S / tau) / tau
    dm = layer.weight.detach() * x.sum(0)[None, :]
    sig = torch.sigmoid(torch.tensor(0.25))
    torch.testing.assert_close(layer.scores.grad[0], dm * sig * (1 - sig) / 2.0, rtol=1e-5, atol=1e-6)
    assert torch.equal(layer.scores.grad[1], torch.zeros(3, 4))


def test_contrastive_mask_shares_a_conflicting_weight_by_importance():
    layer = SparseSharingLayer(2, 1, num_tasks=2)
    with torch.no_grad():
        layer.importance[:] = torch.tensor([[[3.0, 1.0]], [[1.0, 1.0]]])
        layer.direction[:] = torch.tensor([[[1.0, 1.0]], [[-2.0, 5.0]]])  # disagree on weight 0 only
    assert layer.conflicts()[:, 0].tolist() == [[True, False], [True, False]]
    torch.testing.assert_close(layer.contrastive_mask(0), torch.tensor([[0.75, 1.0]]))
    torch.testing.assert_close(layer.contrastive_mask(1), torch.tensor([[0.25, 1.0]]))
    with torch.no_grad():
        layer.scores[1, 0, 0] = -1.0  # task 1 lets weight 0 go: no conflict left on it
    torch.testing.assert_close(layer.contrastive_mask(0), torch.tensor([[1.0, 1.0]]))


def test_backward_scales_the_weight_gradient_and_records_the_task():
    torch.manual_seed(0)
    layer = SparseSharingLayer(3, 2, num_tasks=2, momentum=0.5)
    with torch.no_grad():
        layer.importance[:] = torch.rand(2, 2, 3) + 0.1
        layer.direction[0] = 1.0
        layer.direction[1] = -1.0  # every weight in conflict
    x = torch.randn(4, 3)
    c = layer.contrastive_mask(1).clone()
    imp0, dir0 = layer.importance.clone(), layer.direction.clone()
    layer(x, 1).sum().backward()
    raw = torch.ones(4, 2).T @ x  # d sum(x W^T) / d W, every mask on
    torch.testing.assert_close(layer.weight.grad, c * raw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.direction[1], 0.5 * dir0[1] + 0.5 * raw)
    torch.testing.assert_close(layer.importance[1], 0.5 * imp0[1] + 0.5 * (layer.weight.detach() * raw).abs())
    torch.testing.assert_close(layer.importance[0], imp0[0], rtol=0, atol=0)  # task 0 not touched


def test_task_argument_trains_that_subnetwork_only():
    torch.manual_seed(0)
    ss = SparseSharing(4, num_tasks=2, hidden_units=(3,))
    x = torch.randn(5, 4)
    out = ss(x, task=1)
    torch.testing.assert_close(out, ss(x), rtol=0, atol=0)  # the same values as without a task
    out[:, 0].sum().backward(retain_graph=True)  # task 0 was computed without a graph
    assert all(p.grad is None or not p.grad.any() for p in ss.parameters())
    out[:, 1].sum().backward()
    assert ss.layers[0].scores.grad[1].abs().sum() > 0
    assert torch.equal(ss.layers[0].scores.grad[0], torch.zeros(3, 4))


def test_mask_penalty_is_the_soft_kept_fraction():
    ss = SparseSharing(4, num_tasks=2, hidden_units=(3, 2), score_init=0.0)
    torch.testing.assert_close(ss.mask_penalty(), torch.tensor(0.5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="hidden widths"):
        SparseSharing(4, 2, hidden_units=())
    with pytest.raises(ValueError, match="temperature"):
        SparseSharingLayer(4, 2, 2, temperature=0.0)
    with pytest.raises(ValueError, match="task 2 outside"):
        SparseSharing(4, 2, hidden_units=(3,))(torch.randn(2, 4), task=2)


# ---------------------------------------------------------------------------------------------
# alternating task updates

SCHEMA = Schema(sparse=[{"name": "a", "vocab_size": 11, "embedding_dim": 4},
                        {"name": "b", "vocab_size": 7, "embedding_dim": 4}],
                tasks=[{"name": "x"}, {"name": "y", "kind": "regression", "weight": 0.5}])


def test_alternating_tasks_go_round_robin_and_resume():
    sched = AlternatingTasks(2)
    logits, labels = torch.randn(6, 2), torch.rand(6, 2).round()
    full = [multitask_loss(logits[:, [t]], labels[:, [t]], [SCHEMA.tasks[t]]) for t in range(2)]
    got = [sched.loss(logits, labels, SCHEMA.tasks) for _ in range(4)]
    for k, g in enumerate(got):
        torch.testing.assert_close(g, full[k % 2])
    assert sched.current == 0 and sched.step == 4
    other = AlternatingTasks(2)
    other.load_state_dict(sched.state_dict())
    assert other.step == 4
    with pytest.raises(ValueError, match="one column per task"):
        sched.loss(logits[:, :1], labels[:, :1], SCHEMA.tasks[:1])


def test_ranker_alternates_one_task_per_step_through_its_loss():
    torch.manual_seed(0)
    m = zoo.build("ranker", SCHEMA, towers="sparse_sharing", expert_hidden_units=(6,), tower_hidden_units=(4,),
                  alternate_tasks=True, mask_penalty=1e-3)
    batch = random_batch(SCHEMA, 9, seed=0)
    m.train()
    for step in range(3):
        m.zero_grad(set_to_none=True)
        loss = m.loss(m(batch), batch.labels)
        loss.backward()
        t = step % 2
        assert m.task_towers[t][1].weight.grad is not None
        assert m.task_towers[1 - t][1].weight.grad is None  # the other task took no part
    assert m.alternation.step == 3
    state = copy.deepcopy(m.state_dict())
    n = zoo.build("ranker", SCHEMA, towers="sparse_sharing", expert_hidden_units=(6,), tower_hidden_units=(4,),
                  alternate_tasks=True, mask_penalty=1e-3)
    n.load_state_dict(state)
    assert n.alternation.step == 3  # a resumed run continues the rotation
    m.eval()  # evaluation: every task, no alternation
    out = m(batch)
    torch.testing.assert_close(m.loss(out, batch.labels),
                               multitask_loss(out, batch.labels, SCHEMA.tasks) + 1e-3 * m.experts.mask_penalty())


def test_ranker_mask_init_sets_every_score():
    m = zoo.build("ranker", SCHEMA, towers="sparse_sharing", expert_hidden_units=(6, 3), mask_init=0.25)
    assert all(torch.equal(l.scores, torch.full_like(l.scores, 0.25)) for l in m.experts.layers)
    with pytest.raises(ValueError, match="mask_init"):
        zoo.build("ranker", SCHEMA, towers="sparse_sharing", mask_init=0.0)


def test_mask_penalty_needs_sparse_sharing():
    with pytest.raises(ValueError, match="mask_penalty"):
        zoo.build("ranker", SCHEMA, towers="mmoe", mask_penalty=1e-3)
