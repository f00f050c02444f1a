"""EmbeddingBagCollection: many embedding tables looked up in as few calls as possible.

Tables of equal dim and pooling are stacked row-wise into one weight buffer and served by one
``rankops.batched_embedding_bag`` call; the state dict still shows one entry per table under
TorchRec's names (``embedding_bags.<table>.weight``), so TorchRec checkpoints load directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import re

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from rankops.ops.embedding_bag import (FusedOptimizer, batched_embedding_bag, fused_batched_embedding_bag)

POOLINGS = ("sum", "mean", "max")
TABLE_INITS = ("uniform", "zeros")


def _pooling_name(p) -> str:
    # accepts "sum", TorchRec's PoolingType.SUM, or anything whose name is one of POOLINGS
    name = str(getattr(p, "name", p)).lower()
    if name not in POOLINGS:
        raise ValueError(f"rankops.nn.EmbeddingBagCollection: pooling must be one of {POOLINGS}, got {p!r}")
    return name


@dataclass
class EmbeddingBagConfig:
    """One table: ``num_embeddings`` rows of ``embedding_dim``, looked up by each feature in
    ``feature_names`` (default: the table's name; several features may share one table) and pooled
    by ``pooling``. Field names follow TorchRec's EmbeddingBagConfig."""

    name: str
    num_embeddings: int
    embedding_dim: int
    pooling: str = "sum"
    feature_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.pooling = _pooling_name(self.pooling)
        self.feature_names = list(self.feature_names) or [self.name]
        if self.num_embeddings < 1 or self.embedding_dim < 1:
            raise ValueError(f"rankops.nn.EmbeddingBagCollection: table {self.name!r} needs >= 1 rows and dim, got "
                             f"{self.num_embeddings} x {self.embedding_dim}")


class KeyedJaggedTensor:
    """Sparse features laid out like TorchRec's KeyedJaggedTensor.

    ``values[nnz]`` holds the ids of every key back to back (key-major), each key's part split into
    B bags by ``lengths[K*B]`` (or ``offsets[K*B+1]``); ``weights[nnz]`` are optional per-id weights.
    Feature k, sample b: ``values[offsets[k*B+b] : offsets[k*B+b+1]]``.
    """

    def __init__(self, keys: Sequence[str], values: Tensor, lengths: Tensor | None = None,
                 offsets: Tensor | None = None, weights: Tensor | None = None):
        if (lengths is None) == (offsets is None):
            raise ValueError("KeyedJaggedTensor: give exactly one of lengths and offsets")
        self._keys = list(keys)
        self._values = values
        self._weights = weights
        if offsets is None:
            offsets = torch.zeros(lengths.numel() + 1, dtype=lengths.dtype, device=lengths.device)
            offsets[1:] = torch.cumsum(lengths, 0)
        self._offsets = offsets
        K = len(self._keys)
        if K == 0 or (offsets.numel() - 1) % K:
            raise ValueError(f"KeyedJaggedTensor: {offsets.numel() - 1} bags do not split evenly over {K} keys")

    def keys(self) -> list[str]:
        return self._keys

    def values(self) -> Tensor:
        return self._values

    def offsets(self) -> Tensor:
        return self._offsets

    def lengths(self) -> Tensor:
        return self._offsets[1:] - self._offsets[:-1]

    def weights_or_none(self) -> Tensor | None:
        return self._weights

    def stride(self) -> int:
        return (self._offsets.numel() - 1) // len(self._keys)


def _kjt_parts(kjt) -> tuple[list[str], Tensor, Tensor, Tensor | None]:
    """(keys, values, offsets [K*B+1], weights or None) from ours or TorchRec's KeyedJaggedTensor."""
    keys = list(kjt.keys())
    values = kjt.values()
    off = kjt.offsets() if hasattr(kjt, "offsets") else None
    if off is None:
        lengths = kjt.lengths()
        off = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=values.device)
        off[1:] = torch.cumsum(lengths, 0)
    weights = kjt.weights_or_none() if hasattr(kjt, "weights_or_none") else None
    return keys, values, off, weights


def _empty_tables(rows: int, dim: int, dtype, device) -> Tensor:
    """A group's buffer. On the CPU from transparent huge pages (rankops_C::empty_hugepage) when the
    extension is built: with 4 KiB pages nearly every lookup into tables of many MB is a TLB miss.
    Measured on the 2-core EPYC VM, 26 tables of 1M rows, one id per bag, B=4096: the lookup took
    5.0 ms (D=16) and 11.3 ms (D=64) on 4 KiB pages, 3.1 and 6.9 ms on huge pages."""
    if device is None or torch.device(device).type == "cpu":
        from rankops import backend

        if backend.extension() is not None:
            return torch.ops.rankops_C.empty_hugepage([rows, dim], dtype)
    return torch.empty(rows, dim, dtype=dtype, device=device)


# --- table init ------------------------------------------------------------------------------
# A table's rows are drawn block by block, each block from its own generator seeded from (the
# collection's seed, the table, the block): any row range can be made on its own (a shard on its
# rank) with the values the whole table has in one process. The collection draws its one seed from
# the global generator, so the dense layers built after it start alike whether or not the tables
# are materialised (tables_on_meta).
_INIT_BLOCK_ELEMENTS = 1 << 22  # a block's scratch copy stays at 16 MiB (fp32) whatever the dim
_MASK64 = (1 << 64) - 1


def init_block_rows(dim: int) -> int:
    """Rows per init block of a ``dim``-wide table (65536 at D=64); ``init_rows`` over ranges that
    start on these boundaries draws each row once."""
    return max(1, _INIT_BLOCK_ELEMENTS // dim)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _block_generator(seed: int, table: int, block: int) -> torch.Generator:
    # torch's CPU generator (mt19937) keeps 32 bits of its seed: two of a model's few thousand blocks
    # share a stream with odds ~ blocks^2 / 2^33, a harmless repeat of values
    return torch.Generator().manual_seed(_splitmix64(_splitmix64(_splitmix64(seed) ^ table) ^ block))


def init_rows(seed: int, table: int, num_embeddings: int, dim: int, row_start: int, row_end: int,
              dtype: torch.dtype = torch.float32, *, out: Tensor | None = None) -> Tensor:
    """Rows ``[row_start, row_end)`` of table number ``table`` of a collection seeded ``seed``:
    ``uniform(-b, b)``, ``b = sqrt(1 / num_embeddings)`` (TorchRec's default init), equal to those
    rows of the whole table however the range is cut. Drawn in fp32 on the CPU (the same values on
    every device and in every dtype, rounded), written into ``out`` (``[row_end - row_start, dim]``,
    any device, dtype and layout) when given, else into a new CPU tensor of ``dtype``. A range
    starting inside a block also draws (and drops) that block's rows before it."""
    if not 0 <= row_start <= row_end <= num_embeddings:
        raise ValueError(f"init_rows: rows [{row_start}, {row_end}) are not within the table's {num_embeddings}")
    n = row_end - row_start
    if out is None:
        out = torch.empty(n, dim, dtype=dtype)
    elif tuple(out.shape) != (n, dim):
        raise ValueError(f"init_rows: out is {tuple(out.shape)}, rows [{row_start}, {row_end}) are {(n, dim)}")
    bound = (1.0 / num_embeddings) ** 0.5
    in_place = out.device.type == "cpu" and out.dtype == torch.float32 and out.is_contiguous()
    step = init_block_rows(dim)
    with torch.no_grad():
        for block in range(row_start // step, -(-row_end // step)):
            first = block * step
            lo, hi = max(row_start, first), min(row_end, first + step)
            g = _block_generator(seed, table, block)
            _discard(g, (lo - first) * dim)  # a block entered past its first row
            dst = out[lo - row_start:hi - row_start]
            if in_place:
                dst.uniform_(-bound, bound, generator=g)
            else:
                dst.copy_(torch.empty(hi - lo, dim).uniform_(-bound, bound, generator=g))
    return out


def _discard(g: torch.Generator, n: int) -> None:
    """Advance ``g`` past ``n`` fp32 uniforms. The CPU kernel draws one 32-bit number per element,
    one element after another, so n draws in small pieces leave g where one of n would (mt19937
    has no skip-ahead), without a scratch tensor the size of a block."""
    scratch = torch.empty(min(n, 1 << 16))
    while n > 0:
        k = min(n, scratch.numel())
        scratch[:k].uniform_(generator=g)
        n -= k


_TABLES_ON_META: contextvars.ContextVar[bool] = contextvars.ContextVar("rankops_tables_on_meta", default=False)


@contextlib.contextmanager
def tables_on_meta(enabled: bool = True):
    """EmbeddingBagCollections built inside hold their tables on the meta device: no memory and no
    values, only shapes and ``init_seed`` (drawn as when materialised, so the rest of the model
    starts alike). For tables that ``init_rows`` fills later, piece by piece (sharding): what a
    model does to its tables' weights after construction is lost (say it through ``init``)."""
    token = _TABLES_ON_META.set(bool(enabled))
    try:
        yield
    finally:
        _TABLES_ON_META.reset(token)


class EmbeddingBagCollection(nn.Module):
    """Pooled embeddings of many sparse features.

    ``out[b, cols(f)] = pool_t(rows of table t(f) named by feature f's ids for sample b)``, features
    in table order (each table's ``feature_names`` in turn), ``cols(f)`` the feature's slice of the
    concatenated dims. A table listing several features (``item`` and ``hist_item``) is one set of
    rows that each of them looks up.

    Args:
        tables: the tables (``EmbeddingBagConfig``; each has its own rows, dim and pooling).
        fused_optimizer: train the tables with the update fused into the backward (SGD, Adagrad or
            row-wise Adagrad; ``rankops.FusedOptimizer``). The tables then take no part in a
            torch optimizer and their optimizer state is saved in the state dict.
        output: "concat" (``[B, sum of dims]``) or "stacked" (``[B, T, D]``, all dims equal).
        sparse: sparse COO gradients for the tables (for torch.optim.SparseAdam / SGD).
        init: how the tables start: "uniform" (``init_rows(init_seed, table's index, ...)`` over
            all their rows, TorchRec's default; ``init_seed`` is drawn from torch's global generator
            at construction) or "zeros" (e.g. a first-order part that starts at nothing). Said here
            rather than done to the weights after construction, so that tables built on the meta
            device (``tables_on_meta``) and filled later start the same.
        dtype, device: of the tables (the meta device under ``tables_on_meta()``).
    Input (``forward``): a KeyedJaggedTensor (ours or TorchRec's; keys any order containing the
    features), a dict ``{feature: (indices, offsets[B+1])}``, or a list of ``(indices, offsets)``
    in table order; optional per-sample weights via the KJT's weights or a third tuple element.

    Example::

        ebc = EmbeddingBagCollection([EmbeddingBagConfig("user", 1000, 16),
                                      EmbeddingBagConfig("item", 500, 16, pooling="mean")])
        out = ebc({"user": (ids_u, offs_u), "item": (ids_i, offs_i)})   # [B, 32]
    """

    def __init__(self, tables: Sequence[EmbeddingBagConfig], *, fused_optimizer: FusedOptimizer | None = None,
                 output: str = "concat", sparse: bool = False, init: str = "uniform",
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        if not tables:
            raise ValueError("rankops.nn.EmbeddingBagCollection: needs at least one table")
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"rankops.nn.EmbeddingBagCollection: table names must be unique, got {names}")
        if output not in ("concat", "stacked"):
            raise ValueError(f"rankops.nn.EmbeddingBagCollection: output must be 'concat' or 'stacked', got {output!r}")
        if output == "stacked" and len({t.embedding_dim for t in tables}) != 1:
            raise ValueError("rankops.nn.EmbeddingBagCollection: output='stacked' needs tables of one dim")
        if init not in TABLE_INITS:
            raise ValueError(f"rankops.nn.EmbeddingBagCollection: init must be one of {TABLE_INITS}, got {init!r}")
        if fused_optimizer is not None and sparse:
            raise ValueError("rankops.nn.EmbeddingBagCollection: fused_optimizer and sparse exclude each other")
        self.tables = list(tables)
        # every feature, table by table; the first feature of each table rides the batched call,
        # the others (a table shared by several features) are looked up on their own (lookup()).
        self.features = [f for t in tables for f in t.feature_names]
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"rankops.nn.EmbeddingBagCollection: a feature may be listed by one table only, got "
                             f"{self.features}")
        self._primary = [t.feature_names[0] for t in tables]
        self._extra = [(f, i) for i, t in enumerate(tables) for f in t.feature_names[1:]]
        self.output = output
        self.sparse = sparse
        self.fused_optimizer = fused_optimizer
        self.init = init
        self.init_seed = int(torch.randint(2**63 - 1, ()))  # the global CPU generator: one draw, materialised or not
        if _TABLES_ON_META.get():
            device = torch.device("meta")
        # Groups: tables of one (dim, pooling), in first-appearance order; each is one buffer.
        groups: dict[tuple[int, str], list[int]] = {}
        for i, t in enumerate(tables):
            groups.setdefault((t.embedding_dim, t.pooling), []).append(i)
        self._groups = list(groups.values())
        self._group_mode = [tables[g[0]].pooling for g in self._groups]
        self._where: dict[int, tuple[int, int, int]] = {}  # table -> (group, slot, first row)
        self.weights = nn.ParameterList()
        for gi, members in enumerate(self._groups):
            rows = [tables[i].num_embeddings for i in members]
            to = torch.zeros(len(rows) + 1, dtype=torch.int64)
            to[1:] = torch.cumsum(torch.tensor(rows), 0)
            dim = tables[members[0]].embedding_dim
            w = _empty_tables(int(to[-1]), dim, dtype, device)
            for slot, i in enumerate(members):
                self._where[i] = (gi, slot, int(to[slot]))
                rows = w[int(to[slot]):int(to[slot + 1])]
                if w.is_meta:
                    continue
                if init == "zeros":
                    rows.zero_()
                else:
                    init_rows(self.init_seed, i, tables[i].num_embeddings, dim, 0, tables[i].num_embeddings, out=rows)
            self.weights.append(nn.Parameter(w, requires_grad=fused_optimizer is None))
            self.register_buffer(f"_table_offsets_{gi}", to.to(device), persistent=False)
            if fused_optimizer is not None:
                self.register_buffer(f"_state_{gi}", fused_optimizer.init_state(w), persistent=False)
        self._register_state_dict_hook(EmbeddingBagCollection._per_table_state_dict)
        self._register_load_state_dict_pre_hook(EmbeddingBagCollection._load_per_table, with_module=True)

    # -----------------------------------------------------------------------------------------
    # state dict: one entry per table under TorchRec's names

    def _state_name(self) -> str | None:
        if self.fused_optimizer is None or self.fused_optimizer.name == "sgd":
            return None
        return {"adagrad": "adagrad_sum", "rowwise_adagrad": "rowwise_adagrad_sum"}[self.fused_optimizer.name]

    def table_weight(self, name: str) -> Tensor:
        """The rows of table ``name`` (a view into its group's buffer)."""
        i = [t.name for t in self.tables].index(name)
        gi, _, r0 = self._where[i]
        return self.weights[gi][r0:r0 + self.tables[i].num_embeddings]

    def table_state(self, name: str) -> Tensor | None:
        i = [t.name for t in self.tables].index(name)
        gi, _, r0 = self._where[i]
        if self._state_name() is None:
            return None
        return getattr(self, f"_state_{gi}")[r0:r0 + self.tables[i].num_embeddings]

    @staticmethod
    def _per_table_state_dict(module, state_dict, prefix, local_metadata):
        for k in [k for k in state_dict if k.startswith(prefix + "weights.")]:
            del state_dict[k]
        state = module._state_name()
        for t in module.tables:
            state_dict[f"{prefix}embedding_bags.{t.name}.weight"] = module.table_weight(t.name).detach()
            if state is not None:
                state_dict[f"{prefix}embedding_bags.{t.name}.{state}"] = module.table_state(t.name).detach()
        return state_dict

    def _load_per_table(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        state = self._state_name()
        with torch.no_grad():
            for t in self.tables:
                key = f"{prefix}embedding_bags.{t.name}.weight"
                if key not in state_dict:
                    missing_keys.append(key)
                    continue
                src = state_dict.pop(key)
                dst = self.table_weight(t.name)
                if tuple(src.shape) != tuple(dst.shape):
                    error_msgs.append(f"size mismatch for {key}: copying {tuple(src.shape)} into {tuple(dst.shape)}")
                    continue
                dst.copy_(src)
                if state is not None:
                    skey = f"{prefix}embedding_bags.{t.name}.{state}"
                    if skey in state_dict:
                        self.table_state(t.name).copy_(state_dict.pop(skey))
                    else:
                        missing_keys.append(skey)
        # the group buffers were filled above; keep nn.Module from asking for them
        for gi in range(len(self._groups)):
            state_dict[f"{prefix}weights.{gi}"] = self.weights[gi].detach()

    # -----------------------------------------------------------------------------------------
    # construction from torch / TorchRec

    @classmethod
    def from_embedding_bags(cls, bags: Sequence[nn.EmbeddingBag], names: Sequence[str] | None = None,
                            **kwargs) -> "EmbeddingBagCollection":
        """One table per ``nn.EmbeddingBag`` (its weight, dim and mode), named ``names`` or t0, t1, ..."""
        names = list(names) if names is not None else [f"t{i}" for i in range(len(bags))]
        tables = [EmbeddingBagConfig(n, b.num_embeddings, b.embedding_dim, b.mode) for n, b in zip(names, bags)]
        kwargs.setdefault("dtype", bags[0].weight.dtype)
        kwargs.setdefault("device", bags[0].weight.device)
        ebc = cls(tables, **kwargs)
        with torch.no_grad():
            for n, b in zip(names, bags):
                ebc.table_weight(n).copy_(b.weight)
        return ebc

    @classmethod
    def from_torchrec_state_dict(cls, state_dict: Mapping[str, Tensor], pooling: str | Mapping[str, str] = "sum",
                                 prefix: str = "", **kwargs) -> "EmbeddingBagCollection":
        """From the state dict of TorchRec's EmbeddingBagCollection (keys
        ``<prefix>embedding_bags.<table>.weight``); sizes come from the weights, ``pooling`` (one
        for all, or per table) from the caller since a state dict does not carry it."""
        head = prefix + "embedding_bags."
        weights = {k[len(head):-len(".weight")]: v for k, v in state_dict.items()
                   if k.startswith(head) and k.endswith(".weight")}
        if not weights:
            raise ValueError(f"rankops.nn.EmbeddingBagCollection: no '{head}<table>.weight' keys in the state dict")
        tables = [EmbeddingBagConfig(n, w.shape[0], w.shape[1],
                                     pooling if isinstance(pooling, str) else pooling.get(n, "sum"))
                  for n, w in weights.items()]
        first = next(iter(weights.values()))
        kwargs.setdefault("dtype", first.dtype)
        kwargs.setdefault("device", first.device)
        ebc = cls(tables, **kwargs)
        with torch.no_grad():
            for n, w in weights.items():
                ebc.table_weight(n).copy_(w)
        return ebc

    # -----------------------------------------------------------------------------------------
    # forward

    def _per_feature_inputs(self, features) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
        """{feature: (indices, offsets [B+1], per-sample weights or None)} for every feature."""
        if isinstance(features, Mapping):
            items = []
            for f in self.features:
                if f not in features:
                    raise ValueError(f"rankops.nn.EmbeddingBagCollection: feature {f!r} missing from the input")
                items.append(features[f])
        elif isinstance(features, (list, tuple)):
            if len(features) != len(self.features):
                raise ValueError(f"rankops.nn.EmbeddingBagCollection: {len(features)} inputs for "
                                 f"{len(self.features)} features")
            items = list(features)
        else:
            keys, values, off, weights = _kjt_parts(features)
            K = len(keys)
            B = (off.numel() - 1) // K
            items = []
            for f in self.features:
                if f not in keys:
                    raise ValueError(f"rankops.nn.EmbeddingBagCollection: feature {f!r} missing from the "
                                     f"KeyedJaggedTensor (keys {keys})")
                k = keys.index(f)
                o = off[k * B:(k + 1) * B + 1]
                a, b = int(o[0]), int(o[-1])
                items.append((values[a:b], o - a, None if weights is None else weights[a:b]))
        out = {}
        for f, it in zip(self.features, items):
            idx, off = it[0], it[1]
            psw = it[2] if len(it) > 2 else None
            if off.dim() != 1 or off.numel() != items[0][1].numel():
                raise ValueError(f"rankops.nn.EmbeddingBagCollection: feature {f!r} has offsets of shape "
                                 f"{tuple(off.shape)}; every feature needs B+1 = {items[0][1].numel()} offsets "
                                 f"(as feature {self.features[0]!r})")
            out[f] = (idx, off, psw)
        return out

    def _group_call(self, gi: int, parts):
        """One batched call for group gi from its tables' (indices, offsets, psw)."""
        B = parts[0][1].numel() - 1
        for i, (idx, off, _) in enumerate(parts):
            if off.numel() - 1 != B:
                raise ValueError(f"rankops.nn.EmbeddingBagCollection: feature "
                                 f"{self._primary[self._groups[gi][i]]!r} has {off.numel() - 1} bags, "
                                 f"the first has {B}")
        if len(parts) == 1:
            idx, off, psw = parts[0]
        else:
            idx = torch.cat([p[0] for p in parts])
            base = 0
            offs = []
            for p in parts:
                offs.append(p[1][:-1].to(torch.int64) + base)
                base += p[0].numel()
            offs.append(torch.tensor([base], dtype=torch.int64, device=idx.device))
            off = torch.cat(offs).to(idx.dtype)
            pws = [p[2] for p in parts]
            if all(p is None for p in pws):
                psw = None
            else:
                psw = torch.cat([p if p is not None else torch.ones(q[0].numel(), dtype=self.weights[gi].dtype,
                                                                    device=idx.device) for p, q in zip(pws, parts)])
        to = getattr(self, f"_table_offsets_{gi}")
        mode = self._group_mode[gi]
        w = self.weights[gi]
        try:
            if self.fused_optimizer is not None:
                state = getattr(self, f"_state_{gi}")
                return fused_batched_embedding_bag(w, state, to, idx, off, psw, mode, optimizer=self.fused_optimizer)
            return batched_embedding_bag(w, to, idx, off, psw, mode, sparse=self.sparse)
        except (IndexError, ValueError) as e:
            raise type(e)(self._name_tables(str(e), gi)) from e

    def _name_tables(self, msg: str, gi: int) -> str:
        """The op numbers tables within its call; say which of ours that is."""
        m = re.search(r"table (\d+)", msg)
        members = self._groups[gi]
        if m and int(m.group(1)) < len(members):
            t = self.tables[members[int(m.group(1))]]
            return f"{msg} [table {m.group(1)} of this call is {t.name!r}, feature {t.feature_names[0]!r}]"
        return f"{msg} [tables of this call: {[self.tables[i].name for i in members]}]"

    def lookup(self, table: str, indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None = None,
               mode: str | None = None) -> Tensor:
        """Pool bags of table ``table``'s rows: ``[offsets.numel() - 1, D]``, with the table's pooling
        unless ``mode`` is given. Serves the extra features of a shared table and the unpooled
        behaviour sequences of a model (one id per bag); trains like the rest of the table (the
        fused optimizer included)."""
        names = [t.name for t in self.tables]
        if table not in names:
            raise KeyError(f"rankops.nn.EmbeddingBagCollection: no table {table!r} (tables {names})")
        i = names.index(table)
        gi, _, r0 = self._where[i]
        rows = self.tables[i].num_embeddings
        if indices.is_floating_point():
            raise TypeError(f"rankops.nn.EmbeddingBagCollection: indices of table {table!r} must be integers, "
                            f"got {indices.dtype}")
        if not torch.compiler.is_compiling() and indices.numel():
            lo, hi = torch.aminmax(indices)
            if int(lo) < 0 or int(hi) >= rows:
                bad = int(lo) if int(lo) < 0 else int(hi)
                raise IndexError(f"rankops.nn.EmbeddingBagCollection: index {bad} is out of range for table "
                                 f"{table!r} with {rows} rows")
        w = self.weights[gi]
        whole = torch.tensor([0, w.shape[0]], dtype=torch.int64, device=w.device)  # the group as one table
        idx = indices.to(torch.int64) + r0
        off = offsets.to(torch.int64)
        mode = mode or self.tables[i].pooling
        if self.fused_optimizer is not None:
            g = fused_batched_embedding_bag(w, getattr(self, f"_state_{gi}"), whole, idx, off, per_sample_weights,
                                            mode, optimizer=self.fused_optimizer)
        else:
            g = batched_embedding_bag(w, whole, idx, off, per_sample_weights, mode, sparse=self.sparse)
        return g[:, 0]

    def forward(self, features) -> Tensor:
        if not self._extra and len(self._groups) == 1 and not isinstance(features, (Mapping, list, tuple)):
            keys, values, off, weights = _kjt_parts(features)
            if keys == self.features:  # already table-major in table order: no copy at all
                to = getattr(self, "_table_offsets_0")
                w, mode = self.weights[0], self._group_mode[0]
                if self.fused_optimizer is not None:
                    g = fused_batched_embedding_bag(w, getattr(self, "_state_0"), to, values, off, weights, mode,
                                                    optimizer=self.fused_optimizer)
                else:
                    g = batched_embedding_bag(w, to, values, off, weights, mode, sparse=self.sparse)
                return g if self.output == "stacked" else g.reshape(g.shape[0], -1)
        parts = self._per_feature_inputs(features)
        outs: dict[str, Tensor] = {}
        for gi, members in enumerate(self._groups):
            g = self._group_call(gi, [parts[self._primary[i]] for i in members])  # [B, T_g, D]
            if len(self._groups) == 1 and not self._extra:
                return g if self.output == "stacked" else g.reshape(g.shape[0], -1)
            for slot, i in enumerate(members):
                outs[self._primary[i]] = g[:, slot]
        for f, i in self._extra:
            outs[f] = self.lookup(self.tables[i].name, *parts[f])
        ordered = [outs[f] for f in self.features]
        if self.output == "stacked":
            return torch.stack(ordered, 1)
        return torch.cat(ordered, 1)

    def extra_repr(self) -> str:
        tabs = ", ".join(f"{t.name}:{t.num_embeddings}x{t.embedding_dim}/{t.pooling}" for t in self.tables)
        fused = f", fused_optimizer={self.fused_optimizer}" if self.fused_optimizer else ""
        return f"tables=[{tabs}], groups={len(self._groups)}, output={self.output}{fused}"


__all__ = ["EmbeddingBagCollection", "EmbeddingBagConfig", "KeyedJaggedTensor", "init_block_rows", "init_rows",
           "tables_on_meta"]
