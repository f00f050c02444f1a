"""The one training loop: every test, table, benchmark and the command line train through it.

It knows nothing of any one model: it calls ``model(batch) -> logits [B, T]``,
``model.loss(logits, labels)`` and ``model.predict(logits)``. Tables built with a fused optimizer
update inside the backward; every other parameter is stepped by ``config.optimizer``.

Checkpoints are written atomically (temporary file, fsync, rename) and hold everything an exact
resume needs: weights, the dense optimizer's state, the fused tables' state (in the model's state
dict), the position in the data (epoch, batch) and the RNG state. A resumed run ends with the same
weights as one that was never interrupted.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from rankops.data.dataset import Dataset
from rankops.ops.embedding_bag import FusedOptimizer
from rankops.train.metrics import task_metrics

OPTIMIZERS = ("adam", "adamw", "adagrad", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 1024
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    shuffle: bool = True
    device: str = "cpu"
    amp: bool = False  # bf16 autocast for the forward
    compile: bool = False  # torch.compile the model
    max_steps: int | None = None  # stop after this many steps in all
    eval_batch_size: int | None = None
    early_stopping: str | None = None  # metric name, e.g. "click/auc" ("loss" or a "/logloss" is minimised)
    patience: int = 2
    checkpoint_every: int = 0  # steps; 0: only at the end of each epoch (when out_dir is set)
    log_every: int = 200  # steps between plain log lines when stderr is not a terminal
    progress: bool = True
    curve_every: int = 20  # steps per point of the training-loss curve (Trainer.curve); 0: none
    lr_schedule: str = "constant"  # or "cosine" / "linear": decay to 0 over the run's steps
    warmup_steps: int = 0  # linear warm-up from 0 before the schedule

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for k in ("epochs", "batch_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"train: {k} must be >= 1, got {getattr(self, k)}")
        if not self.lr > 0:
            raise ValueError(f"train: lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train: lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"train: warmup_steps must be >= 0, got {self.warmup_steps}")


def lr_factor(config: TrainConfig, step: int, total: int | None) -> float:
    """The learning-rate multiplier of step ``step`` (0-based) of ``total``: a pure function of the
    step, so a resumed run follows the same schedule. Without a known total (a stream of unknown
    length and no max_steps) only the warm-up applies."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant" or not total:
        return 1.0
    t = min(max(step - config.warmup_steps, 0) / max(total - config.warmup_steps, 1), 1.0)
    return 0.5 * (1 + math.cos(math.pi * t)) if config.lr_schedule == "cosine" else 1.0 - t


def dense_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer | None:
    # TorchRec's sharded tables mark their rows _in_backward_optimizers: the fused optimizer's, not ours
    params = [p for p in model.parameters() if p.requires_grad and not hasattr(p, "_in_backward_optimizers")]
    if not params:
        return None
    kw = dict(lr=config.lr, weight_decay=config.weight_decay)
    if _fused_optim_ok(params):
        # one fused kernel over all parameters instead of a dozen small ops per parameter: at a
        # small batch the per-parameter loop costs as much as the step's GEMMs
        kw["fused"] = True
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
            "sgd": torch.optim.SGD}[config.optimizer](params, **kw)


def _fused_optim_ok(params) -> bool:
    """torch.optim's fused implementations take floating-point parameters on CPU or CUDA, all on one kind of device."""
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


class Progress:
    """tqdm on a terminal; on a pipe or a log file, one plain line every ``every`` steps."""

    def __init__(self, total: int | None, desc: str, every: int, enabled: bool = True):
        self.desc, self.every, self.total, self.n = desc, every, total, 0
        self.t0 = time.perf_counter()
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, samples: int, **stats) -> None:
        """One more batch, ``samples`` seen so far; ``stats`` (tensors or floats) are read (a device
        sync) only when shown."""
        self.n += 1
        if self.bar is not None:
            if self.n % 10 == 1:
                self.bar.set_postfix({k: f"{float(v):.4g}" for k, v in stats.items()}, refresh=False)
            self.bar.update(1)
            return
        if self.enabled and self.every and self.n % self.every == 0:
            dt = time.perf_counter() - self.t0
            eta = "" if not self.total else f", eta {dt / self.n * (self.total - self.n):.0f}s"
            shown = " ".join(f"{k} {float(v):.4g}" for k, v in stats.items())
            print(f"[{self.desc}] {self.n}/{self.total or '?'} batches, {samples / max(dt, 1e-9):,.0f} samples/s, "
                  f"{shown}{eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, fsync, rename: a crash mid-write leaves the
    previous file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class Position:
    epoch: int = 0
    batch: int = 0  # batches of this epoch already trained
    step: int = 0  # batches trained in all
    samples: int = 0


@dataclass
class Trainer:
    model: nn.Module
    config: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str | Path | None = None
    on_epoch_end: Callable[[dict], None] | None = None
    # the model's tables sharded over the ranks (rankops.train.sharding.ShardedModel): steps run
    # through it, checkpoints hold its gathered state (every rank saves, a collective; rank 0 writes)
    sharded: object | None = None

    def __post_init__(self):
        self.device = torch.device(self.config.device)
        self.model.to(self.device)
        self.optimizer = dense_optimizer(self.model, self.config)
        self.position = Position()
        self.history: list[dict] = []
        self.curve: list[tuple[int, float]] = []  # (step, mean training loss of the last curve_every steps)
        self.best: tuple[float, int] | None = None  # (score, epoch)
        self._forward = torch.compile(self.model) if self.config.compile else self.model
        if self.sharded is not None:
            self._forward = self.sharded
        # the learning rates the schedule scales: the dense optimizer's groups and the fused tables'
        self._base_lrs = [g["lr"] for g in self.optimizer.param_groups] if self.optimizer is not None else []
        self._fused = [m.fused_optimizer for m in self.model.modules()
                       if isinstance(getattr(m, "fused_optimizer", None), FusedOptimizer)]
        self._fused_lrs = [f.lr for f in self._fused]
        # a sharded model's fused optimizers are torch-style (param groups); they take a new lr on step(),
        # which updates nothing else (the rows were updated in the backward)
        self._sharded_optims = self.sharded.fused_optimizers() if self.sharded is not None else []
        self._sharded_lrs = [[g["lr"] for g in o.param_groups] for o in self._sharded_optims]
        self.total_steps: int | None = None  # set by fit() from the data's length (or max_steps)
        self.batches_per_epoch: int | None = None  # the training data's, once known
        torch.manual_seed(self.config.seed)

    # -----------------------------------------------------------------------------------------
    # steps

    def _batch(self, batch):
        if self.device.type == "cpu":
            return batch
        return batch.to(self.device, non_blocking=True)

    def step(self, batch) -> torch.Tensor:
        """One optimisation step; returns the loss (detached, not synced)."""
        if not self.model.training:  # train() walks every module: 0.2 ms a step at B=256
            self.model.train()
        batch = self._batch(batch)
        if self.config.lr_schedule != "constant" or self.config.warmup_steps:
            self._set_lr(lr_factor(self.config, self.position.step, self.total_steps))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp):
            logits = self._forward(batch)
        loss = self.model.loss(logits.float(), batch.labels)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        return loss.detach()

    def _set_lr(self, factor: float) -> None:
        if self.optimizer is not None:
            for g, base in zip(self.optimizer.param_groups, self._base_lrs):
                g["lr"] = base * factor
        for f, base in zip(self._fused, self._fused_lrs):
            f.lr = base * factor
        for o, bases in zip(self._sharded_optims, self._sharded_lrs):
            for g, base in zip(o.param_groups, bases):
                g["lr"] = base * factor
            o.step()

    @torch.no_grad()
    def predict(self, data: Dataset) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(predictions [N, T], labels [N, T] or None)`` over one ordered pass of ``data``."""
        self.model.eval()
        preds, labels = [], []
        bs = self.config.eval_batch_size or max(self.config.batch_size, 4096)
        bar = Progress(data.num_batches(bs), "predict", self.config.log_every, self.config.progress)
        for batch in data.batches(bs):
            batch = self._batch(batch)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp):
                logits = self._forward(batch)
            preds.append(self.model.predict(logits.float()).cpu())
            if batch.labels is not None:
                labels.append(batch.labels.cpu())
            bar.update(batch.size)
        bar.close()
        return torch.cat(preds), (torch.cat(labels) if labels else None)

    def evaluate(self, data: Dataset, groups: torch.Tensor | None = None) -> dict:
        """Per-task metrics over ``data``; group AUC too when ``groups`` is given or the data carries
        a user column (``extra["group"]`` of an InMemoryDataset, ``groups()`` of a stream)."""
        preds, labels = self.predict(data)
        if labels is None:
            raise ValueError("evaluate: the data has no labels")
        if groups is None:
            groups = dataset_groups(data)
        if groups is not None and groups.numel() != preds.shape[0]:
            groups = None
        return task_metrics(preds, labels, self.model.schema.tasks, groups)

    # -----------------------------------------------------------------------------------------
    # the loop

    def fit(self, train: Dataset, valid: Dataset | None = None) -> list[dict]:
        cfg = self.config
        pos = self.position
        # the schedule's length, from the config and the data's batches per epoch: a stream of unknown
        # length learns that at the end of its first pass, and a resumed run reads it from its checkpoint
        self.batches_per_epoch = train.num_batches(cfg.batch_size) or self.batches_per_epoch
        self.total_steps = self._total_steps(self.batches_per_epoch)
        while pos.epoch < cfg.epochs:
            t0 = time.perf_counter()
            bar = Progress(train.num_batches(cfg.batch_size), f"epoch {pos.epoch + 1}/{cfg.epochs}", cfg.log_every,
                           cfg.progress)
            loss_sum, loss_n, samples0 = torch.zeros((), device=self.device), 0, pos.samples
            window, window_n = torch.zeros((), device=self.device), 0
            stopped = False
            for batch in train.batches(cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed, epoch=pos.epoch,
                                       start=pos.batch):
                loss = self.step(batch)
                loss_sum += loss
                loss_n += 1
                pos.batch += 1
                pos.step += 1
                pos.samples += batch.size
                bar.update(pos.samples - samples0, loss=loss)
                if cfg.curve_every:
                    window += loss
                    window_n += 1
                    if window_n == cfg.curve_every:
                        self.curve.append((pos.step, float(window) / window_n))
                        window, window_n = torch.zeros((), device=self.device), 0
                if self.out_dir and cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if cfg.max_steps and pos.step >= cfg.max_steps:
                    stopped = True
                    break
            bar.close()
            total = train.num_batches(cfg.batch_size)  # a stream knows its length after a first pass
            if self.batches_per_epoch is None and total is not None:
                self.batches_per_epoch, self.total_steps = total, self._total_steps(total)
            if stopped and (total is None or pos.batch < total):
                # max_steps inside an epoch: the position stays there (no epoch record), so that a
                # resume finishes this epoch exactly as an uninterrupted run would
                if self.out_dir:
                    self.save_checkpoint()
                break
            seconds = time.perf_counter() - t0
            record = {"epoch": pos.epoch + 1, "step": pos.step, "train_loss": float(loss_sum) / max(loss_n, 1),
                      "seconds": seconds, "samples_per_s": (pos.samples - samples0) / max(seconds, 1e-9)}
            if valid is not None:
                record.update({f"valid/{k}": v for k, v in self.evaluate(valid).items()})
            self.history.append(record)
            pos.epoch += 1
            pos.batch = 0
            stop = self._early_stop(record)
            if self.out_dir:
                self.save_checkpoint()
            if self.on_epoch_end:
                self.on_epoch_end(record)
            if stop or (cfg.max_steps and pos.step >= cfg.max_steps):
                break
        return self.history

    def _total_steps(self, per_epoch: int | None) -> int | None:
        """The run's steps from the data's batches per epoch (None: unknown) and max_steps."""
        bounds = [n for n in (self.config.max_steps, per_epoch and per_epoch * self.config.epochs) if n]
        return min(bounds) if bounds else None

    def _early_stop(self, record: dict) -> bool:
        metric = self.config.early_stopping
        if not metric:
            return False
        key = metric if metric in record else f"valid/{metric}"
        if key not in record:
            raise ValueError(f"train: early-stopping metric {metric!r} is not computed; have {sorted(record)}")
        value = record[key]
        score = -value if ("loss" in key or "mse" in key) else value
        if self.best is None or score > self.best[0]:
            self.best = (score, record["epoch"])
            if self.out_dir:
                self.save_checkpoint(Path(self.out_dir) / "best.pt")
            return False
        return record["epoch"] - self.best[1] >= self.config.patience

    # -----------------------------------------------------------------------------------------
    # checkpoints

    def state_dict(self) -> dict:
        return {"model": (self.sharded or self.model).state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
                "position": asdict(self.position), "batches_per_epoch": self.batches_per_epoch,
                "history": self.history, "best": self.best, "curve": self.curve,
                "rng": torch.get_rng_state(), "config": asdict(self.config),
                "model_name": getattr(self.model, "name", type(self.model).__name__)}

    def load_state_dict(self, state: dict) -> None:
        name = getattr(self.model, "name", type(self.model).__name__)
        if state.get("model_name") not in (None, name):
            raise ValueError(f"checkpoint: it holds a {state['model_name']!r} model, this is {name!r}")
        (self.sharded or self.model).load_state_dict(state["model"])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.position = Position(**state["position"])
        self.batches_per_epoch = state.get("batches_per_epoch")
        self.history = list(state["history"])
        self.best = state["best"]
        self.curve = list(state.get("curve", []))
        torch.set_rng_state(state["rng"])

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path else Path(self.out_dir) / "checkpoint.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        if self.sharded is None or self.sharded.rank == 0:
            atomic_save(state, path)
        return path

    def resume(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint: no file {str(path)!r}")
        self.load_state_dict(torch.load(path, weights_only=False, map_location="cpu"))


def dataset_groups(data) -> torch.Tensor | None:
    """The per-sample group (user) ids a data set carries, in pass order, or None."""
    extra = getattr(data, "extra", None)
    if isinstance(extra, dict) and "group" in extra:
        return extra["group"]
    fn = getattr(data, "groups", None)
    return fn() if callable(fn) else None


def train(model: nn.Module, train_data: Dataset, valid_data: Dataset | None = None, **config) -> Trainer:
    """Train ``model`` on ``train_data`` with ``TrainConfig(**config)``; returns the trainer (its
    ``history`` holds one record per epoch)."""
    trainer = Trainer(model, TrainConfig(**config))
    trainer.fit(train_data, valid_data)
    return trainer
