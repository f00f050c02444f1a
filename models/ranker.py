"""The configurable pointwise ranking model: the one data flow every named architecture presets.

    batch -> embeddings (one EmbeddingBagCollection) -> pooling of each behaviour sequence against
    its target (mean / DIN / target attention / transformer) -> interaction (FM / cross / CIN /
    AutoInt) -> deep part (MLP, or shared-bottom / MMoE / PLE experts with one tower per task)
    -> one logit per task, plus the additive terms (first-order linear, FM, CIN) where configured.

Argument names follow DeepCTR-Torch / FuxiCTR (``dnn_hidden_units``, ``cross_num``, ``cin_layer_size``,
``num_experts``...). Every layer is a rankops layer on the fused ops.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from rankops.data.batch import Batch
from rankops.data.schema import Schema
from rankops.nn import CIN, CrossNet, FactorizationMachine
from rankops.nn.bias_tower import BiasTower
from rankops.nn.experts import MMoE, PLE
from rankops.nn.mlp import MLP
from rankops.nn.self_attention import InteractingLayer
from rankops.nn.sparse_sharing import SparseSharing
from rankops.ops.embedding_bag import FusedOptimizer
from rankops.train.losses import AlternatingTasks

from .base import RankingModel
from .features import SEQUENCE_POOLINGS, FeatureArch, embedding_collection

INTERACTIONS = (None, "fm", "cross", "cin", "autoint")
TOWERS = (None, "shared_bottom", "mmoe", "ple", "sparse_sharing")


class Ranker(RankingModel):
    """The pointwise ranking model, configured by keyword (defaults: a DNN over the embeddings).

    Args (beside ``schema``):
        use_linear: a first-order term: one weight per id and task plus a linear map of the dense
            features, added to the logits (LR, FM, Wide & Deep, DeepFM, xDeepFM).
        use_dnn: the MLP ``dnn_hidden_units`` over all fields (or over the cross output when
            ``interaction_mode="stacked"``).
        interaction: ``None``, ``"fm"`` (logit += FM term), ``"cross"`` (CrossNet of ``cross_num``
            layers, ``cross_variant`` v1 / v2 / lowrank / mix), ``"cin"`` (logit += linear(CIN)),
            ``"autoint"`` (``att_layer_num`` interacting layers). ``cin_activation``: ``None`` (linear
            maps) by default, the xDeepFM paper's CIN (its official code's and FuxiCTR's); ``"relu"`` is
            DeepCTR-Torch's, which learns planted third-order crosses far worse (bench/results/learning-*).
        interaction_mode: ``"parallel"`` (the interaction output beside the DNN's, DCN) or
            ``"stacked"`` (the DNN runs on the interaction output, DCN-V2's stacked form).
        sequence_pooling: how each behaviour sequence becomes one field: ``"mean"``, ``"din"``
            (DIN's activation unit), ``"attention"`` (multi-head target attention) or
            ``"transformer"`` (BST: self-attention over [target, sequence], the target's output).
        towers: ``None`` (one linear head per task on the DNN), ``"shared_bottom"`` (the DNN is the
            shared bottom, one ``tower_hidden_units`` MLP per task), ``"mmoe"`` or ``"ple"`` (experts
            of ``expert_hidden_units`` instead of the DNN, then the towers), ``"sparse_sharing"``
            (CSRec: one shared MLP of ``expert_hidden_units`` in which each task runs a subnetwork
            picked by a learned mask, with the contrastive mask on conflicting weights:
            ``rankops.nn.SparseSharing``; ``mask_penalty`` weighs the masks' sparsity in the loss,
            ``mask_init`` is every mask score's start: positive, every weight on, and the nearer 0
            the sooner a task can drop one).
        alternate_tasks: train one task per optimiser step, round robin (``loss()`` returns the
            current task's loss in training mode; ``rankops.train.losses.AlternatingTasks``).
        bias_features: one-hot sparse features that cause selection bias (position, device), read
            only by a shallow ``rankops.nn.BiasTower`` (``bias_hidden_units``, ``bias_embedding_dim``,
            ``bias_dropout``) whose logit is added to every binary task's in training and dropped
            at serving (eval mode, or ``forward(batch, with_bias=False)``); the main model never
            sees them (YouTube, Zhao et al. 2019).
        embedding_optimizer: a ``rankops.FusedOptimizer`` to train the tables inside the backward
            (the tables then take no part in the dense optimizer).
    """

    def __init__(self, schema: Schema, *, name: str = "ranker", use_linear: bool = False, use_dnn: bool = True,
                 dnn_hidden_units: Sequence[int] = (256, 128), dnn_activation: str = "relu",
                 dnn_dropout: float = 0.0, dnn_norm: str | None = None,
                 interaction: str | None = None, interaction_mode: str = "parallel",
                 cross_num: int = 3, cross_variant: str = "v2", low_rank: int | None = None,
                 num_cross_experts: int = 4, cin_layer_size: Sequence[int] = (128, 128), cin_split_half: bool = True,
                 cin_activation: str | None = None,
                 att_layer_num: int = 3, att_embedding_size: int = 8, att_head_num: int = 2, att_res: bool = True,
                 sequence_pooling: str = "mean", att_hidden_units: Sequence[int] = (80, 40),
                 att_activation: str = "dice", att_heads: int = 1, transformer_layers: int = 1,
                 transformer_dropout: float = 0.1,
                 towers: str | None = None, num_experts: int = 4, expert_hidden_units: Sequence[int] = (256, 128),
                 tower_hidden_units: Sequence[int] = (64,), num_levels: int = 2, num_specific_experts: int = 1,
                 num_shared_experts: int = 1, mask_penalty: float = 0.0, mask_init: float = 1.0,
                 alternate_tasks: bool = False,
                 bias_features: Sequence[str] = (), bias_hidden_units: Sequence[int] = (16,),
                 bias_embedding_dim: int = 8, bias_dropout: float = 0.0,
                 embedding_optimizer: FusedOptimizer | None = None):
        super().__init__(schema, name)
        self._config = {k: v for k, v in locals().items() if k not in ("self", "schema", "__class__")
                        and not isinstance(v, FusedOptimizer)}
        err = lambda msg: ValueError(f"rankops.models.{name}: {msg}")  # noqa: E731
        if interaction not in INTERACTIONS:
            raise err(f"interaction must be one of {INTERACTIONS}, got {interaction!r}")
        if interaction_mode not in ("parallel", "stacked"):
            raise err(f"interaction_mode must be 'parallel' or 'stacked', got {interaction_mode!r}")
        if sequence_pooling not in SEQUENCE_POOLINGS:
            raise err(f"sequence_pooling must be one of {SEQUENCE_POOLINGS}, got {sequence_pooling!r}")
        if towers not in TOWERS:
            raise err(f"towers must be one of {TOWERS}, got {towers!r}")
        if not schema.sparse:
            raise err("the schema has no sparse feature; every model here embeds at least one")
        bias_features = list(bias_features)
        for f in bias_features:
            if f not in [s.name for s in schema.sparse] or schema.feature(f).multi_hot:
                raise err(f"bias feature {f!r} must be a one-hot sparse feature of the schema (sparse: "
                          f"{[s.name for s in schema.sparse if not s.multi_hot]})")
            if f in [s.target for s in schema.sequences]:
                raise err(f"bias feature {f!r} is the target of a behaviour sequence; a bias feature is read by "
                          f"the bias tower alone")
        if bias_features and not any(t.kind == "binary" for t in schema.tasks):
            raise err("bias_features need a binary task for the bias tower's logit to be added to")
        if mask_penalty < 0:
            raise err(f"mask_penalty must be >= 0, got {mask_penalty}")
        if not mask_init > 0:
            raise err(f"mask_init must be > 0 (every weight on at the start), got {mask_init}")
        if mask_penalty and towers != "sparse_sharing":
            raise err("mask_penalty weighs the masks of towers='sparse_sharing'")
        if towers in ("mmoe", "ple", "sparse_sharing") and schema.num_tasks < 2:
            raise err(f"towers={towers!r} mixes experts across tasks and needs at least 2 tasks; the schema has "
                      f"{[t.name for t in schema.tasks]}")
        if bias_features and len(set(bias_features)) == len(schema.sparse):
            raise err("every sparse feature is a bias feature; the main model needs at least one")
        main = schema.subset(drop=bias_features) if bias_features else schema  # what the main model reads
        dims = main.embedding_dims()
        if (interaction in ("fm", "cin", "autoint") or main.sequences) and len(dims) != 1:
            what = f"interaction={interaction!r}" if interaction in ("fm", "cin", "autoint") else "sequence pooling"
            raise err(f"{what} needs every sparse feature to have one embedding_dim; the schema has "
                      f"{sorted(dims)} ({[(f.name, f.embedding_dim) for f in main.sparse]})")
        if not (use_dnn or use_linear or interaction or towers):
            raise err("nothing to compute: enable use_dnn, use_linear, an interaction or towers")
        T = schema.num_tasks
        self.use_dnn, self.interaction, self.interaction_mode = use_dnn, interaction, interaction_mode
        self.sequence_pooling, self.towers = sequence_pooling, towers
        self.mask_penalty = mask_penalty
        self.alternation = AlternatingTasks(T) if alternate_tasks else None

        # the shallow bias tower reads the bias features; everything below is built on the rest
        self.bias_tower = None
        if bias_features:
            binary = [t for t, task in enumerate(schema.tasks) if task.kind == "binary"]
            self.bias_tower = BiasTower([(f, schema.feature(f).vocab_size) for f in bias_features], len(binary),
                                        bias_embedding_dim, bias_hidden_units, dnn_activation, bias_dropout)
            self.register_buffer("_bias_to_tasks", torch.eye(T)[binary], persistent=False)  # [binary, T]
        schema = main

        # embeddings and sequence pooling: one field per sparse feature and per sequence (none for
        # a model made of the first-order term alone: LR)
        self.features = None if not (use_dnn or interaction or towers) else FeatureArch(schema, sequence_pooling=sequence_pooling, att_hidden_units=att_hidden_units,
                                    att_activation=att_activation, att_heads=att_heads,
                                    transformer_layers=transformer_layers, transformer_dropout=transformer_dropout,
                                    embedding_optimizer=embedding_optimizer)
        D = schema.sparse[0].embedding_dim
        num_fields = self.features.num_fields if self.features is not None else 0
        flat_dim = (self.features.output_dim if self.features is not None else 0) + schema.dense_dim

        # first-order term
        self.linear = None
        if use_linear:
            # zeros said to the collection, not done to its weights: a sharded run fills the tables shard by shard
            self.linear, _ = embedding_collection(schema, dim=T, fused_optimizer=embedding_optimizer,
                                                  init="zeros")
            self.linear_dense = nn.Linear(schema.dense_dim, T) if schema.dense_dim else None

        # interaction
        self.fm = FactorizationMachine() if interaction == "fm" else None
        self.cross = None
        self.cin = None
        self.autoint = None
        deep_in, side_dim = flat_dim, 0  # what the DNN reads; what sits beside its output
        if interaction == "cross":
            self.cross = CrossNet(flat_dim, cross_num, variant=cross_variant, low_rank=low_rank,
                                  num_experts=num_cross_experts)
            if interaction_mode == "parallel":
                side_dim = flat_dim
        elif interaction == "cin":
            self.cin = CIN(num_fields, cin_layer_size, split_half=cin_split_half, activation=cin_activation)
            self.cin_head = nn.Linear(self.cin.output_dim, T)
        elif interaction == "autoint":
            layers, width = [], D
            for _ in range(att_layer_num):
                layers.append(InteractingLayer(width, att_embedding_size, att_head_num, use_res=att_res))
                width = layers[-1].output_dim
            self.autoint = nn.Sequential(*layers)
            if interaction_mode == "parallel":
                side_dim = num_fields * width
            else:
                deep_in = num_fields * width

        # deep part and heads
        self.dnn = None
        self.experts = None
        self.task_towers = None
        self.head = None
        if towers is None:
            if use_dnn:
                self.dnn = MLP(deep_in, dnn_hidden_units, dnn_activation, dnn_dropout, dnn_norm)
            head_in = (self.dnn.output_dim if self.dnn is not None else 0) + side_dim
            if self.dnn is None and interaction in ("cross", "autoint") and interaction_mode == "stacked":
                head_in = deep_in
            if head_in:
                self.head = nn.Linear(head_in, T)
        else:
            if towers == "shared_bottom":
                self.dnn = MLP(deep_in + side_dim, dnn_hidden_units, dnn_activation, dnn_dropout, dnn_norm)
                tower_in = self.dnn.output_dim
            elif towers == "mmoe":
                self.experts = MMoE(deep_in + side_dim, T, num_experts, expert_hidden_units, dnn_activation,
                                    dnn_dropout, dnn_norm)
                tower_in = self.experts.output_dim
            elif towers == "sparse_sharing":
                self.experts = SparseSharing(deep_in + side_dim, T, expert_hidden_units, dnn_activation,
                                             score_init=mask_init)
                tower_in = self.experts.output_dim
            else:
                self.experts = PLE(deep_in + side_dim, T, num_levels, num_specific_experts, num_shared_experts,
                                   expert_hidden_units, dnn_activation, dnn_dropout, dnn_norm)
                tower_in = self.experts.output_dim
            self.task_towers = nn.ModuleList(
                nn.Sequential(MLP(tower_in, tower_hidden_units, dnn_activation, dnn_dropout, dnn_norm),
                              nn.Linear(tower_hidden_units[-1] if tower_hidden_units else tower_in, 1))
                for _ in range(T))
        self.bias = nn.Parameter(torch.zeros(T))

    # -----------------------------------------------------------------------------------------

    def forward(self, batch: Batch, with_bias: bool | None = None) -> Tensor:
        """``[B, T]`` logits. ``with_bias``: add the bias tower's logit (default: in training only,
        so evaluation and serving score every item as if shown without bias)."""
        logits = self._logits(batch)
        if self.bias_tower is not None and (self.training if with_bias is None else with_bias):
            logits = logits + self.bias_tower(batch.sparse) @ self._bias_to_tasks
        return logits

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The task-weighted loss (in training with ``alternate_tasks``: the current task's alone),
        plus ``mask_penalty`` times the sparse-sharing masks' kept fraction."""
        if self.alternation is not None and self.training:
            loss = self.alternation.loss(logits, labels, self.schema.tasks)
        else:
            loss = super().loss(logits, labels)
        if self.mask_penalty:
            loss = loss + self.mask_penalty * self.experts.mask_penalty()
        return loss

    def _logits(self, batch: Batch) -> Tensor:
        B = batch.size
        logits = self.bias.expand(B, -1)
        if self.linear is not None:
            logits = logits + self.linear(batch.sparse).view(B, len(self.linear.features), -1).sum(1)
            if self.linear_dense is not None:
                logits = logits + self.linear_dense(batch.dense)
        if self.features is None:
            return logits
        x = self.features(batch)  # [B, F, D], or [B, sum of widths] when they differ
        stack = x if x.dim() == 3 else None
        flat = x.flatten(1)
        if self.schema.dense_dim:
            flat = torch.cat([flat, batch.dense], 1)
        if self.fm is not None:
            logits = logits + self.fm(stack)
        if self.cin is not None:
            logits = logits + self.cin_head(self.cin(stack))
        deep, side = flat, None
        if self.cross is not None:
            crossed = self.cross(flat)
            if self.interaction_mode == "stacked":
                deep = crossed
            else:
                side = crossed
        elif self.autoint is not None:
            att = self.autoint(stack).flatten(1)
            if self.interaction_mode == "stacked":
                deep = att
            else:
                side = att
        if self.task_towers is None:
            outs = []
            if self.dnn is not None:
                outs.append(self.dnn(deep))
            elif self.interaction_mode == "stacked" and (self.cross is not None or self.autoint is not None):
                outs.append(deep)
            if side is not None:
                outs.append(side)
            if self.head is not None:
                logits = logits + self.head(torch.cat(outs, 1) if len(outs) > 1 else outs[0])
            return logits
        shared_in = deep if side is None else torch.cat([deep, side], 1)
        # alternating updates: only this step's task builds a graph past the shared input
        train_task = self.alternation.current if self.alternation is not None and self.training else None
        if self.dnn is not None:  # shared bottom: every task reads the same representation
            h = self.dnn(shared_in)
            per_task = [h] * self.schema.num_tasks
        elif self.towers == "sparse_sharing":
            per_task = self.experts(shared_in, task=train_task).unbind(1)
        else:
            mixed = self.experts(shared_in)  # [B, T, H]
            per_task = mixed.unbind(1)
        tower_logits = []
        for t, (tower, x) in enumerate(zip(self.task_towers, per_task)):
            with torch.set_grad_enabled(torch.is_grad_enabled() and train_task in (None, t)):
                tower_logits.append(tower(x))
        tower_logits = torch.cat(tower_logits, 1)
        return logits + tower_logits


def options(cls=Ranker) -> list[str]:
    """The keyword options a model built on ``cls`` takes."""
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "schema", "name")]


def preset(name: str, schema: Schema, defaults: dict, config: dict, requires: Callable[[Schema], str | None] = None,
           cls=Ranker) -> RankingModel:
    """``cls(schema, name=name, **defaults, **config)`` with the model's own checks: unknown options
    and schemas the model cannot use raise one ValueError naming the model."""
    unknown = sorted(set(config) - set(options(cls)))
    if unknown:
        raise ValueError(f"rankops.models.{name}: unknown option(s) {unknown}; options: {options(cls)}")
    missing = requires(schema) if requires else None
    if missing:
        raise ValueError(f"rankops.models.{name}: {missing}")
    return cls(schema, name=name, **{**defaults, **config})


def needs_sequence(schema: Schema) -> str | None:
    if not schema.sequences:
        return ("needs a behaviour sequence in the schema (sequences: [{name: hist_item, target: item, "
                "max_len: 50}]); it has none")
    return None


def needs_tasks(n: int):
    def check(schema: Schema) -> str | None:
        if schema.num_tasks < n:
            return f"is a multi-task model and needs at least {n} tasks; the schema has {[t.name for t in schema.tasks]}"
        return None
    return check


def build(schema: Schema, **config) -> Ranker:
    return preset("ranker", schema, {}, config)
