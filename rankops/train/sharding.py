"""``rankops train --shard-embeddings``: a model's embedding tables sharded over the ranks by
TorchRec's ``DistributedModelParallel`` (DMP); everything else (our fused cross / FM / CIN /
attention / MLP layers) unchanged and data-parallel (DDP) over the same ranks. The one file that
knows TorchRec's sharding API.

How a step runs on W ranks, each with its b = B / W samples of the global batch B:

    ids [b] --all-to-all--> the ranks owning each table (table-wise: one rank; row-wise: rows
    split in W blocks) --fused lookup--> pooled rows --all-to-all--> [b, sum of dims] on the
    sample's own rank --> the dense layers (DDP replicas) --> loss_r = mean over its b samples

The backward sends each rank's pooled-row gradients to the tables' owners, which update the rows
inside the backward (FBGEMM's fused optimizer). Summed, those would be ``sum_r d loss_r / d w``: W
times the gradient of the global mean loss that one process (and DDP, which averages) sees;
TorchRec's all-to-all divides them by W in its backward (``comm_ops.get_gradient_division()``,
on by default, asserted here), so the tables step exactly as in one process.

Optimizers: our fused ones map one to one onto FBGEMM's (same update, same eps, same state):

    --embedding-optimizer  sgd -> EXACT_SGD   adagrad -> EXACT_ADAGRAD
                           rowwise_adagrad -> EXACT_ROWWISE_ADAGRAD   (none: rowwise_adagrad)

FBGEMM's CPU kernels have no Adam, so tables cannot follow a dense ``--optimizer adam`` here.

Memory: no rank holds a whole table at the start. The model is built with its tables on the meta
device (``rankops.nn.embedding_bag.tables_on_meta``: shapes and each collection's ``init_seed``,
no rows); DMP allocates each rank's shards; each rank fills its own rows (and, for a table held
in copies, each copy) with ``init_rows``, which gives the rows the whole table has in one process
built from the same seed. The tables' optimizer state starts at zero (FBGEMM's), as ours. The
dense layers are built alike on every rank (same seed). A model whose tables are materialised is
sharded as it is: its rows are copied in.

Checkpoints hold the gathered (unsharded) state dict under the unsharded model's names, the
tables' optimizer state included (``embedding_bags.<t>.rowwise_adagrad_sum`` as our collection
saves it), so ``rankops eval`` / ``export`` load them in one process and a resume scatters them
back into the shards (an exact resume). Those two do hold whole tables: gathering a checkpoint
builds it in rank 0's host memory, and ``--resume`` loads the whole checkpoint on every rank
before each takes its shards' rows.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import warnings
from typing import Mapping

import torch
from torch import Tensor, nn

from rankops.nn.embedding_bag import EmbeddingBagCollection, _kjt_parts, init_block_rows, init_rows

SHARDINGS = ("auto", "table_wise", "row_wise")
TABLE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
# our fused optimizer -> (FBGEMM's EmbOptimType, its state's name in our state dict; FBGEMM calls it momentum1)
_FBGEMM = {"sgd": ("EXACT_SGD", None), "adagrad": ("EXACT_ADAGRAD", "adagrad_sum"),
           "rowwise_adagrad": ("EXACT_ROWWISE_ADAGRAD", "rowwise_adagrad_sum")}


def check_available(world: int) -> None:
    """ValueError (one line) where ``--shard-embeddings`` cannot run: TorchRec absent, or one process."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except ImportError as e:
        raise ValueError(f"--shard-embeddings needs TorchRec and FBGEMM ({e}); install them with "
                         f"`pip install --no-deps torchrec` beside `pip install fbgemm-gpu-cpu` (or fbgemm-gpu on "
                         f"CUDA)") from None
    if world < 2:
        raise ValueError("--shard-embeddings shards the tables over processes: run it under torchrun "
                         "(torchrun --nproc_per_node=2 -m rankops train ...); one process holds every table anyway")


class _Replicas(torch.autograd.Function):
    """``[b, k*D] -> [b, D]``: the mean of k equal copies forward; each copy gets the whole gradient
    back. With it a table of D columns (FBGEMM wants multiples of 4) is held as k = lcm(D, 4) / D
    side-by-side copies that every optimizer here steps exactly like the one table: SGD and Adagrad
    see g per copy, row-wise Adagrad the same mean over the row of g^2; the copies stay equal."""

    @staticmethod
    def forward(ctx, x: Tensor, k: int) -> Tensor:
        ctx.k = k
        return x.view(x.shape[0], k, -1).mean(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.repeat(1, ctx.k), None


def replicas(dim: int) -> int:
    """How many copies of a ``dim``-wide table make a width FBGEMM takes (a multiple of 4)."""
    return math.lcm(dim, 4) // dim


class TorchRecTables(nn.Module):
    """Our ``EmbeddingBagCollection``'s interface over TorchRec's, which DMP knows how to shard.

    ``forward(kjt) -> [B, sum of dims]`` ("concat") or ``[B, T, D]`` ("stacked"), features in table
    order (each table's ``feature_names`` in turn), as ours; ``features``, ``tables`` and ``output``
    as ours. The tables are made on the meta device: DMP allocates each rank's shards only. A
    table whose width is not a multiple of 4 (DeepFM's first-order weights: 1 per task) is held as
    ``replicas(D)`` copies side by side (``_Replicas``). ``initial_rows[t](a, b)`` gives rows
    ``[a, b)`` of table t as ``ebc`` starts (its ``init_rows``, or its rows where materialised),
    for ``ShardedModel`` to fill the shards from.
    Unpooled ``lookup`` (behaviour sequences) has no TorchRec counterpart here.
    """

    def __init__(self, ebc: EmbeddingBagCollection):
        super().__init__()
        import torchrec

        pools = {"sum": torchrec.PoolingType.SUM, "mean": torchrec.PoolingType.MEAN}
        for t in ebc.tables:
            if t.pooling not in pools:
                raise ValueError(f"--shard-embeddings: table {t.name!r} pools by {t.pooling!r}; TorchRec's "
                                 f"EmbeddingBagCollection pools by sum or mean")
        self.tables, self.features, self.output = list(ebc.tables), list(ebc.features), ebc.output
        self.replicas = {t.name: replicas(t.embedding_dim) for t in ebc.tables}
        self._copies = [self.replicas[t.name] for t in ebc.tables for _ in t.feature_names]  # per feature
        self.initial_rows = {t.name: _initial_rows(ebc, i) for i, t in enumerate(ebc.tables)}
        self.ebc = torchrec.EmbeddingBagCollection(
            [torchrec.EmbeddingBagConfig(name=t.name, num_embeddings=t.num_embeddings,
                                         embedding_dim=t.embedding_dim * self.replicas[t.name],
                                         feature_names=list(t.feature_names), pooling=pools[t.pooling])
             for t in ebc.tables], device=torch.device("meta"))

    def forward(self, features) -> Tensor:
        import torchrec

        if isinstance(features, (Mapping, list, tuple)):
            raise ValueError("--shard-embeddings: the sharded tables take the batch's KeyedJaggedTensor")
        keys, values, offsets, weights = _kjt_parts(features)
        if weights is not None:
            raise ValueError("--shard-embeddings: weighted ids are not sharded yet")
        kt = self.ebc(torchrec.KeyedJaggedTensor(keys=keys, values=values, offsets=offsets.to(values.dtype)))
        x = kt.values()  # [b, sum of widths]
        if list(kt.keys()) != self.features or any(k > 1 for k in self._copies):
            # a table-wise plan returns the features grouped by rank (f0 f2 | f1 f3): put them back in order
            d = kt.to_dict()
            x = torch.cat([_Replicas.apply(d[f], k) if k > 1 else d[f] for f, k in zip(self.features, self._copies)], 1)
        return x.view(x.shape[0], len(self.features), -1) if self.output == "stacked" else x

    def lookup(self, table, *args, **kwargs):
        raise ValueError(f"--shard-embeddings: table {table!r} is looked up unpooled (a behaviour sequence), "
                         f"which TorchRec's sharded EmbeddingBagCollection does not serve")


def _initial_rows(ebc: EmbeddingBagCollection, i: int):
    """``rows(a, b, out=None) -> [b - a, D]``: rows of ``ebc``'s table i as it starts (written into
    ``out`` when given), without materialising the table."""
    t = ebc.tables[i]
    w = ebc.table_weight(t.name)
    if w.is_meta and ebc.init == "uniform":
        return functools.partial(init_rows, ebc.init_seed, i, t.num_embeddings, t.embedding_dim, dtype=w.dtype)

    def rows(a: int, b: int, out: Tensor | None = None) -> Tensor:
        if w.is_meta:  # init "zeros"
            return torch.zeros(b - a, t.embedding_dim, dtype=w.dtype) if out is None else out.zero_()
        return w[a:b].detach() if out is None else out.copy_(w[a:b])

    return rows


def _swap_tables(model: nn.Module) -> dict[str, tuple[str, TorchRecTables]]:
    """Replace every one of our collections in ``model`` by a ``TorchRecTables``; returns, per
    sharded state-dict prefix, the unsharded one and the new module (``features.embeddings.ebc.`` ->
    ``features.embeddings.``)."""
    names = {}
    for path, m in list(model.named_modules()):
        if isinstance(m, EmbeddingBagCollection):
            parent, _, leaf = path.rpartition(".")
            tables = TorchRecTables(m)
            setattr(model.get_submodule(parent) if parent else model, leaf, tables)
            names[f"{path}.ebc."] = (f"{path}.", tables)
    if not names:
        raise ValueError("--shard-embeddings: the model has no embedding tables")
    return names


class ShardedModel:
    """``model``'s tables sharded over the process group, its other layers data-parallel.

    Args:
        model: a rankops model (its tables are our EmbeddingBagCollections, without a fused
            optimizer; built under ``tables_on_meta()`` so that no whole table is ever made);
            changed in place: its collections become ``TorchRecTables``.
        optimizer, lr, eps: the tables' fused optimizer (TABLE_OPTIMIZERS), as ``FusedOptimizer``.
        sharding: "auto" (TorchRec's planner picks table-wise or row-wise per table), or one of
            them for every table.
        device: the ranks' device (cpu: gloo; cuda: NCCL).

    ``forward`` is the DMP module (call it with a batch); ``state_dict()`` gathers the whole model
    on rank 0 (a collective: every rank calls it); ``load_state_dict(full)`` scatters a whole one
    (as saved) into the shards.
    """

    def __init__(self, model: nn.Module, *, optimizer: str = "rowwise_adagrad", lr: float = 0.01,
                 eps: float = 1e-10, sharding: str = "auto", device: torch.device | str = "cpu"):
        import torch.distributed as dist
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec.distributed.comm_ops import get_gradient_division
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

        if optimizer not in TABLE_OPTIMIZERS:
            raise ValueError(f"--shard-embeddings: the tables' optimizer must be one of {TABLE_OPTIMIZERS}, got "
                             f"{optimizer!r}")
        if sharding not in SHARDINGS:
            raise ValueError(f"--sharding must be one of {SHARDINGS}, got {sharding!r}")
        for m in model.modules():
            if isinstance(m, EmbeddingBagCollection) and m.fused_optimizer is not None:
                raise ValueError("ShardedModel: build the model without a fused optimizer; the shards bring theirs")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(device)
        self.model, self.optimizer = model, optimizer
        if not get_gradient_division():  # the tables would step W times too far (module docstring)
            raise ValueError("--shard-embeddings: TorchRec's gradient division is switched off in this process")
        self._prefixes = _swap_tables(model)
        fbgemm_name, self._state_name = _FBGEMM[optimizer]

        class Sharder(EmbeddingBagCollectionSharder):
            # TorchRec lists row-wise for CUDA only; its CPU kernels (FBGEMM's bucketize and TBE) run it,
            # and tests/train/test_sharding.py checks it against one process
            def sharding_types(self, compute_device_type: str) -> list[str]:
                types = super().sharding_types(compute_device_type)
                return types + [t for t in ("row_wise",) if t not in types]

        sharder = Sharder(fused_params={"optimizer": getattr(EmbOptimType, fbgemm_name), "learning_rate": lr,
                                        "eps": eps})
        kinds = ["table_wise", "row_wise"] if sharding == "auto" else [sharding]
        tables = [t for m in model.modules() if isinstance(m, TorchRecTables) for t in m.tables]
        # keyed by table name alone (DeepFM's linear part names its tables as the embeddings do): one for all
        constraints = {t.name: ParameterConstraints(sharding_types=kinds, compute_kernels=["fused"]) for t in tables}
        with _quiet():
            planner = EmbeddingShardingPlanner(
                topology=Topology(world_size=self.world, local_world_size=self.world, compute_device=self.device.type),
                constraints=constraints)
            self.plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
            self.dmp = DistributedModelParallel(model, plan=self.plan, sharders=[sharder], device=self.device)
        self._fill_shards()
        # TorchRec's steps call torch.distributed collectives torch deprecates (a FutureWarning on every
        # rank) and ask is_fx_tracing (a logged warning): noise to a user of the command line
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed.c10d_logger")
        import logging

        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

    # -----------------------------------------------------------------------------------------

    def __call__(self, batch):
        return self.dmp(batch)

    def describe(self) -> dict[str, str]:
        """``{"features.embeddings.f0": "table_wise on rank 1", ...}`` from the plan."""
        out = {}
        for path, module_plan in self.plan.plan.items():
            for table, p in module_plan.items():
                ranks = sorted(set(p.ranks or []))
                where = f"{self._unsharded(path + '.')}{table}"
                out[where] = f"{p.sharding_type} on rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}"
        return out

    def fused_optimizers(self):
        return [self.dmp.fused_optimizer]

    def _unsharded(self, key: str) -> str:
        for sharded, (plain, _) in self._prefixes.items():
            if key.startswith(sharded):
                return plain + key[len(sharded):]
        return key

    def _copies(self, key: str) -> int:
        """The side-by-side copies (``replicas``) the table of unsharded ``...embedding_bags.<t>.*`` is held in."""
        for plain, tables in self._prefixes.values():
            head = f"{plain}embedding_bags."
            if key.startswith(head):
                return tables.replicas[key[len(head):].split(".")[0]]
        return 1

    def _sharded_tensors(self) -> dict[str, object]:
        """``{unsharded key: ShardedTensor}``: the tables' weights and their optimizer state."""
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        out = {self._unsharded(k): v for k, v in self.model.state_dict().items() if isinstance(v, ShardedTensor)}
        if self._state_name:
            # {"<prefix>embedding_bags.<t>.weight": {"<t>.momentum1": ShardedTensor}}
            for key, state in self.dmp.fused_optimizer.state_dict()["state"].items():
                for name, st in state.items():
                    if name.endswith(".momentum1") and isinstance(st, ShardedTensor):
                        out[self._unsharded(key)[:-len("weight")] + self._state_name] = st
        return out

    @torch.no_grad()
    def _fill_shards(self) -> None:
        """Each local shard's rows (and columns) of its table as the unsharded model starts, made a
        block of init rows at a time: this rank never holds more than its shards and one block."""
        with _quiet():  # ShardedTensor's deprecation warning on every access
            sharded = self._sharded_tensors()
            for plain, tables in self._prefixes.values():
                for name, rows in tables.initial_rows.items():
                    st, copies = sharded[f"{plain}embedding_bags.{name}.weight"], tables.replicas[name]
                    width = st.size(1)
                    step = init_block_rows(width // copies)
                    for shard in st.local_shards():
                        (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                        # chunks on init-block edges: each block drawn once, a block's worth made on the side at most
                        edges = [r0, *range((r0 // step + 1) * step, r0 + nr, step), r0 + nr]
                        for a, b in zip(edges, edges[1:]):
                            dst = shard.tensor[a - r0:b - r0]
                            if copies == 1 and nc == width:
                                rows(a, b, out=dst)
                            else:
                                dst.copy_(rows(a, b).repeat(1, copies)[:, c0:c0 + nc])
                tables.initial_rows = {}  # a materialised collection's tables are free to go

    def state_dict(self) -> dict[str, Tensor]:
        """The whole model's state dict under the unsharded model's names on rank 0 (empty on the
        others). A collective: every rank must call it; each sends its shards to rank 0."""
        with _quiet():
            return self._gather()

    def _gather(self) -> dict[str, Tensor]:
        import torch.distributed as dist

        sharded = self._sharded_tensors()  # this rank's: table-wise, a table's optimizer state lives on its owner only
        local = [(k, tuple(st.size()), tuple(sh.metadata.shard_offsets), sh.tensor.detach().cpu())
                 for k, st in sharded.items() for sh in st.local_shards()]
        parts = [None] * self.world if self.rank == 0 else None
        dist.gather_object(local, parts, dst=0)
        if self.rank != 0:
            return {}
        sd = {k: v for k, v in self.model.state_dict().items() if self._unsharded(k) not in sharded
              and not k.startswith(tuple(self._prefixes))}
        full: dict[str, Tensor] = {}
        for k, size, offsets, t in (entry for part in parts for entry in part):
            dst = full.setdefault(k, torch.empty(size, dtype=t.dtype))
            dst[tuple(slice(o, o + n) for o, n in zip(offsets, t.shape))] = t
        for k in sorted(full):
            c = self._copies(k)
            sd[k] = full[k] if c == 1 or full[k].dim() == 1 else full[k].view(full[k].shape[0], c, -1)[:, 0].clone()
        return sd

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Copy a whole (unsharded) state dict in: each rank takes its shards' rows and columns."""
        with _quiet():
            sharded = self._sharded_tensors()
        for k, st in sharded.items():
            if k not in state:
                if self._state_name and k.endswith(f".{self._state_name}"):
                    continue  # a checkpoint of a run whose tables' optimizer keeps no state (sgd): it starts at zero
                raise ValueError(f"checkpoint: no {k!r} for the sharded tables")
            src = state[k]
            if self._copies(k) > 1 and src.dim() == 2:
                src = src.repeat(1, self._copies(k))
            if tuple(src.shape) != tuple(st.size()):
                raise ValueError(f"checkpoint: {k} is {tuple(src.shape)}, the sharded table {tuple(st.size())}")
            for shard in st.local_shards():
                index = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
                shard.tensor.copy_(src[index])
        own = self.model.state_dict()  # the dense layers' tensors (shared with the model) and the tables'
        dense = [k for k in own if self._unsharded(k) not in sharded]
        missing = [k for k in dense if k not in state]
        unexpected = [k for k in state if k not in sharded and k not in own and not _is_table_state(k)]
        if missing or unexpected:
            raise ValueError(f"checkpoint: does not fit the model (missing {missing[:4]}, unexpected {unexpected[:4]})")
        for k in dense:
            own[k].copy_(state[k])


@contextlib.contextmanager
def _quiet():
    """TorchRec's planner warns about how a Topology is built, and ShardedTensor about its deprecation
    (for DTensor), on every rank: noise to a user of the command line."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torchrec.distributed.planner.types",
                                              "torchrec.distributed.planner.storage_reservations")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torchrec")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _is_table_state(key: str) -> bool:
    return key.endswith("_sum") and ".embedding_bags." in key


def print_plan(sharded: ShardedModel, file=sys.stderr) -> None:
    """One line on rank 0: the tables by how they are sharded (named where few; metrics.json lists each)."""
    if sharded.rank == 0:
        groups: dict[str, list[str]] = {}
        for t, how in sharded.describe().items():
            groups.setdefault(how, []).append(t)
        parts = [f"{how}: {', '.join(ts)}" if len(ts) <= 4 else f"{how}: {len(ts)} tables ({ts[0]} ... {ts[-1]})"
                 for how, ts in groups.items()]
        print(f"rankops train: TorchRec's plan over {sharded.world} processes: {'; '.join(parts)}", file=file,
              flush=True)
