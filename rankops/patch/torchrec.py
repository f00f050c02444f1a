"""TorchRec (torchrec 1.9): its unsharded modules on rankops ops, on their own parameters.

  modules.embedding_modules.EmbeddingBagCollection  the tables of one (dim, pooling, dtype) stacked;
                                   one rankops.batched_embedding_bag per group straight from the
                                   KeyedJaggedTensor's values / offsets (table-major, as the op takes them)
  modules.crossnet.CrossNet        rankops.cross_layer per layer
  modules.crossnet.LowRankCrossNet rankops.cross_layer_lowrank per layer
  modules.crossnet.VectorCrossNet  rankops.cross_layer_v1 per layer
  modules.crossnet.LowRankMixtureCrossNet  the K experts' [B, N] part as one GEMM + fused epilogue
  modules.deepfm.FactorizationMachine      rankops.fm_interaction over the flattened inputs
  models.dlrm.InteractionArch      rankops.dot_interaction (pairs reordered to TorchRec's triu order)

A sharded EmbeddingBagCollection (DistributedModelParallel) is another class and is not touched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import rankops
from rankops.patch import _shared, _tables
from rankops.patch._core import Leave, register

P = "torchrec"


# ---------------------------------------------------------------------------------------------
# EmbeddingBagCollection


def _check_bag(bag: nn.Module, name: str) -> None:
    if type(bag) is not nn.EmbeddingBag:
        raise Leave(f"table {name!r} is a {type(bag).__qualname__}, not an nn.EmbeddingBag")
    if bag.max_norm is not None or bag.scale_grad_by_freq or bag.sparse or bag.padding_idx is not None:
        raise Leave(f"table {name!r} uses max_norm / scale_grad_by_freq / sparse / padding_idx")
    if not bag.include_last_offset:
        raise Leave(f"table {name!r} has include_last_offset=False")


@register(f"{P}.modules.embedding_modules.EmbeddingBagCollection")
def _ebc(m):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

    configs = list(m._embedding_bag_configs)
    bags = dict(m.embedding_bags.items())
    for cfg in configs:
        if len(cfg.feature_names) != 1:
            raise Leave(f"table {cfg.name!r} serves {len(cfg.feature_names)} features")
        _check_bag(bags[cfg.name], cfg.name)
    features = [cfg.feature_names[0] for cfg in configs]
    # groups of tables one call can serve: same dim, pooling, dtype, device (in table order)
    keyed: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        w = bags[cfg.name].weight
        keyed.setdefault((w.shape[1], bags[cfg.name].mode, w.dtype, w.device), []).append(i)
    groups = []
    for (_, mode, _, _), members in keyed.items():
        groups.append((members, mode, _tables.StackedTables([bags[configs[i].name].weight for i in members])))
    single = len(groups) == 1
    original = type(m).forward

    def group_inputs(kjt, members):
        """(values, offsets [T_g*B+1], weights) of the group's features, table-major."""
        keys = kjt.keys()
        names = [features[i] for i in members]
        if keys == names:
            return kjt.values(), kjt.offsets(), kjt.weights_or_none()
        d = kjt.to_dict()
        vals, offs, ws, base = [], [], [], 0
        for n in names:
            jt = d[n]
            o = jt.offsets()
            vals.append(jt.values())
            ws.append(jt.weights_or_none())
            offs.append(o[:-1] + base)
            base += jt.values().numel()
        offs.append(torch.tensor([base], dtype=offs[0].dtype, device=offs[0].device))
        w = None if any(x is None for x in ws) else torch.cat(ws)
        return torch.cat(vals), torch.cat(offs), w

    def forward(self, features):
        if not isinstance(features, KeyedJaggedTensor) or features.inverse_indices_or_none() is not None:
            return original(self, features)
        if not set(self._embedding_names) <= set(features.keys()):
            return original(self, features)  # (the library raises its own error)
        outs: list = [None] * len(configs)
        for members, mode, st in groups:
            st.ensure()
            values, offsets, weights = group_inputs(features, members)
            g = rankops.batched_embedding_bag(st.stacked(), st.table_offsets, values, offsets,
                                              weights if self._is_weighted else None, mode).float()
            if single:
                return KeyedTensor(keys=self._embedding_names, values=g.reshape(g.shape[0], -1),
                                   length_per_key=self._lengths_per_embedding)
            for slot, i in enumerate(members):
                outs[i] = g[:, slot]
        return KeyedTensor(keys=self._embedding_names, values=torch.cat(outs, dim=1),
                           length_per_key=self._lengths_per_embedding)

    def undo():
        for _, _, st in groups:
            st.unstack()

    detail = ", ".join(f"{len(mem)} x {st.buf.shape[1]} {mode}" for mem, mode, st in groups)
    return {"forward": forward}, f"tables stacked ({detail}), one rankops.batched_embedding_bag per group", undo


# ---------------------------------------------------------------------------------------------
# cross networks (layouts: rankops.nn.convert)


@register(f"{P}.modules.crossnet.CrossNet")
def _crossnet(m):
    def forward(self, input):
        x = input
        for w, b in zip(self.kernels, self.bias):
            x = rankops.cross_layer(input, x, w, b.view(-1))
        return x

    return {"forward": forward}, f"rankops.cross_layer x {m._num_layers}", None


@register(f"{P}.modules.crossnet.LowRankCrossNet")
def _lowrank(m):
    def forward(self, input):
        x = input
        for u, v, b in zip(self.W_kernels, self.V_kernels, self.bias):
            x = rankops.cross_layer_lowrank(input, x, u, v, b.view(-1))
        return x

    return {"forward": forward}, f"rankops.cross_layer_lowrank x {m._num_layers}", None


@register(f"{P}.modules.crossnet.VectorCrossNet")
def _vector(m):
    def forward(self, input):
        x = input
        for w, b in zip(self.kernels, self.bias):
            x = rankops.cross_layer_v1(input, x, w.view(-1), b.view(-1))
        return x

    return {"forward": forward}, f"rankops.cross_layer_v1 x {m._num_layers}", None


@register(f"{P}.modules.crossnet.LowRankMixtureCrossNet")
def _mixture(m):
    _shared.check_elementwise(m._activation, "activation")

    def forward(self, input):
        gate = torch.cat([g.weight for g in self.gates], 0) if self._num_experts > 1 else None
        x = input
        for layer in range(self._num_layers):
            x = _shared.cross_mix_layer(input, x, self.V_kernels[layer], self.C_kernels[layer], self.U_kernels[layer],
                                        self.bias[layer].view(-1), gate, self._activation)
        return x

    return {"forward": forward}, f"{m._num_layers} mixture layers: experts as one GEMM + fused epilogue", None


# ---------------------------------------------------------------------------------------------
# interactions


@register(f"{P}.modules.deepfm.FactorizationMachine")
def _fm(m):
    from torchrec.modules.deepfm import _get_flatten_input

    def forward(self, embeddings):
        flat = _get_flatten_input(embeddings)  # [B, K]: TorchRec's FM crosses every scalar
        return rankops.fm_interaction(flat.unsqueeze(-1), True)

    return {"forward": forward}, "rankops.fm_interaction over the flattened inputs", None


def _triu_to_tril(F1: int, device) -> Tensor:
    """Position in rankops' row-major lower triangle (i > j) of each pair of TorchRec's row-major
    upper triangle (i < j), for F1 fields."""
    iu = torch.triu_indices(F1, F1, offset=1)
    i, j = iu[0], iu[1]  # i < j: rankops has the pair as row j, column i
    return (j * (j - 1) // 2 + i).to(device)


@register(f"{P}.models.dlrm.InteractionArch")
def _interaction_arch(m):
    perms: dict = {}

    def forward(self, dense_features, sparse_features):
        if self.F <= 0:
            return dense_features
        B, D = dense_features.shape
        combined = torch.cat((dense_features.unsqueeze(1), sparse_features), dim=1)  # [B, F+1, D]
        perm = perms.get(dense_features.device)
        if perm is None:
            perm = perms[dense_features.device] = _triu_to_tril(self.F + 1, dense_features.device)
        pairs = rankops.dot_interaction(combined).index_select(1, perm)
        return torch.cat((dense_features, pairs), dim=1)

    return {"forward": forward}, "rankops.dot_interaction (pairs in TorchRec's order)", None
