"""What the recipe tests share: a recipe's YAML, a small draw of its planted set, the model built
from both, and the checks every recipe passes (training lowers the loss; same outputs and gradients
under the reference backend)."""

import copy

import torch
import yaml

import rankops
import rankops.models as zoo
from rankops.data import planted
from rankops.models import recipes
from rankops.models.base import RankingModel
from rankops.train.loop import TrainConfig, Trainer


def recipe_yaml(name: str) -> dict:
    return yaml.safe_load(recipes.yaml_path(name).read_text())


def planted_draw(cfg: dict, num_samples: int, seed: int = 0):
    """The recipe's planted set (its YAML's data_config) at ``num_samples`` rows."""
    return planted.make(cfg["data"].partition(":")[2], **{**cfg.get("data_config", {}), "num_samples": num_samples},
                        seed=seed)


def build(cfg: dict, schema, seed: int = 0, **override):
    torch.manual_seed(seed)
    return zoo.build(cfg["model"], schema, **{**cfg.get("model_config", {}), **override})


def assert_yaml_and_module(names) -> None:
    for name in names:
        cfg = recipe_yaml(name)
        assert cfg["model"] == name and name in recipes.RECIPES
        assert cfg["data"].startswith("synthetic:") and cfg["data"].partition(":")[2] in planted.sets()
        assert {"epochs", "batch_size", "lr", "seed", "model_config", "data_config"} <= set(cfg)


def assert_training_lowers_loss(model, data, lr: float, probe_rows: int, max_steps: int) -> None:
    """A few Trainer steps lower every task's loss (no alternation) on the first ``probe_rows`` rows."""
    probe = data.take(torch.arange(probe_rows))
    model.eval()
    with torch.no_grad():
        before = RankingModel.loss(model, model(probe), probe.labels)
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=64, lr=lr, seed=0, max_steps=max_steps, progress=False))
    trainer.fit(data)
    model.eval()
    with torch.no_grad():
        out = model(probe)
        after = RankingModel.loss(model, out, probe.labels)
    assert out.shape == (probe_rows, data.schema.num_tasks) and torch.isfinite(out).all()
    assert after < before, (float(before), float(after))


def _grads(model, batch, state, **kw):
    model.load_state_dict(state)  # the same weights (and any running statistics) for each backend
    model.zero_grad(set_to_none=True)
    out = model(batch, **kw)
    model.loss(out, batch.labels).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def fused_and_reference(model, batch, **kw):
    """``model``'s outputs and gradients on ``batch`` under the fused default and the reference
    backend, from the same weights: ``((out, grads), (ref_out, ref_grads))``."""
    state = copy.deepcopy(model.state_dict())
    fused = _grads(model, batch, state, **kw)
    with rankops.use_backend("reference"):
        ref = _grads(model, batch, state, **kw)
    return fused, ref
