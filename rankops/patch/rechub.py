"""torch-rechub (torch-rechub 0.9): its layers on rankops ops, on their own parameters.

  basic.layers.EmbeddingLayer  the per-feature tables stacked; sparse features, and sequences with
                               sum / mean / concat pooling, as one rankops.batched_embedding_bag per call
  basic.layers.FM              rankops.fm_interaction
  basic.layers.CIN             rankops.cin_layer per layer (no [B, M*H, D] outer product)
  basic.layers.CrossNetwork    rankops.cross_layer_v1 per layer (DCN)
  basic.layers.CrossNetV2      rankops.cross_layer per layer (its bias sits outside the product:
                               ``x0 * W x + b + x``, so the op runs bias-free and b is added)
  basic.layers.CrossNetMix     the K experts' [B, N] part as one GEMM + fused epilogue
  models.ranking.din.ActivationUnit  the first layer without the [B, L, 4E] concatenation
  basic.activation.Dice        its per-row statistics as torch's fused layer_norm: four ops, not twelve
  basic.layers.MLP             inference: each BatchNorm folded into its Linear (training: unchanged)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rankops
from rankops.patch import _shared, _tables
from rankops.patch._core import Leave, register

P = "torch_rechub"


# ---------------------------------------------------------------------------------------------
# EmbeddingLayer


@register(f"{P}.basic.layers.EmbeddingLayer")
def _embedding_layer(m):
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature

    groups: dict[tuple, list[str]] = {}
    for name, emb in m.embed_dict.items():
        _tables.check_embedding(emb, f"embed_dict[{name!r}]")
        w = emb.weight
        groups.setdefault((w.shape[1], w.dtype, w.device), []).append(name)
    where, stacks = {}, []
    for names in groups.values():
        st = _tables.StackedTables([m.embed_dict[n].weight for n in names])
        stacks.append(st)
        for i, n in enumerate(names):
            where[n] = (st, i)
    plans: dict[int, tuple] = {}
    original = type(m).forward

    def plan_for(features):
        """(kind, stack, tables tensor, names) when one call can serve every non-dense feature:
        kind 'one' (sparse: one id per bag), 'concat' (sequences, every id its own row), 'sum' /
        'mean' (sequences pooled); None otherwise."""
        hit = plans.get(id(features))
        if hit is not None and hit[0] is features:
            return hit[1]
        plan = None
        emb = [f for f in features if not isinstance(f, DenseFeature)]
        kinds = {"one" if isinstance(f, SparseFeature) else getattr(f, "pooling", None) for f in emb}
        if emb and len(kinds) == 1 and kinds <= {"one", "concat", "sum", "mean"} and all(
                isinstance(f, (SparseFeature, SequenceFeature)) for f in emb):
            owners = [where.get(f.shared_with if f.shared_with is not None else f.name) for f in emb]
            if all(o is not None for o in owners) and len({id(o[0]) for o in owners}) == 1:
                st = owners[0][0]
                plan = (kinds.pop(), st, torch.tensor([o[1] for o in owners], device=st.device),
                        [f.name for f in emb], emb)
        plans[id(features)] = (features, plan)
        return plan

    def forward(self, x, features, squeeze_dim=False):
        plan = plan_for(features)
        if plan is None:
            return original(self, x, features, squeeze_dim)
        kind, st, tabs, names, emb = plan
        st.ensure()
        ids = torch.stack([x[f.name].long() for f in emb], 1)  # [B, T] or [B, T, L]
        B, T = ids.shape[:2]
        if kind == "one":
            sparse = _tables.lookup(st, _tables.global_rows(st, ids, tabs, names))  # [B, T, D]
        else:
            L = ids.shape[2]
            rows = _tables.global_rows(st, ids.reshape(B, T * L), tabs.repeat_interleave(L),
                                       [n for n in names for _ in range(L)])
            if kind == "concat":
                sparse = _tables.lookup(st, rows).view(B, T, L, -1)
            else:
                w = st.stacked()
                bags = rankops.batched_embedding_bag(w, _tables._arange(1, st.num_rows, st.device), rows.reshape(-1),
                                                     _tables._arange(B * T, L, st.device), None, kind)
                sparse = bags.view(B, T, -1)
        dense = [x[f.name].float() if x[f.name].float().dim() > 1 else x[f.name].float().unsqueeze(1)
                 for f in features if isinstance(f, DenseFeature)]
        if squeeze_dim:
            flat = sparse.flatten(start_dim=1)
            return torch.cat((flat, torch.cat(dense, dim=1)), dim=1) if dense else flat
        return sparse

    def undo():
        for st in stacks:
            st.unstack()

    desc = ", ".join(f"{len(st.params)} x {st.buf.shape[1]}" for st in stacks)
    return {"forward": forward}, f"{len(where)} tables ({desc}) stacked, one rankops.batched_embedding_bag per call", undo


# ---------------------------------------------------------------------------------------------
# interactions


@register(f"{P}.basic.layers.FM")
def _fm(m):
    def forward(self, x):
        return rankops.fm_interaction(x, self.reduce_sum)

    return {"forward": forward}, "rankops.fm_interaction", None


@register(f"{P}.basic.layers.CIN")
def _cin(m):
    for i, conv in enumerate(m.conv_layers):
        _shared.conv1x1_weight(conv, f"conv_layers[{i}]")

    def forward(self, x):
        M = x.shape[1]
        # rechub's channel index is m*H + h (x0 outer h); cin_layer's weight is [Hn, H, M]
        weights = [c.weight.view(c.out_channels, M, c.in_channels // M).transpose(1, 2).contiguous()
                   for c in self.conv_layers]
        direct = _shared.cin_stack(x, weights, [c.bias for c in self.conv_layers], F.relu, self.split_half,
                                   direct_first=True)
        return self.fc(torch.sum(torch.cat(direct, dim=1), 2))

    return {"forward": forward}, f"rankops.cin_layer x {len(m.conv_layers)}", None


@register(f"{P}.basic.layers.CrossNetwork")
def _crossnetwork(m):
    def forward(self, x):
        if x.dim() != 2:
            return type(self).forward(self, x)
        x0 = x
        for lin, b in zip(self.w, self.b):
            x = rankops.cross_layer_v1(x0, x, lin.weight.view(-1), b)
        return x

    return {"forward": forward}, f"rankops.cross_layer_v1 x {m.num_layers}", None


@register(f"{P}.basic.layers.CrossNetV2")
def _crossnetv2(m):
    def forward(self, x):
        if x.dim() != 2:
            return type(self).forward(self, x)
        x0, zero = x, x.new_zeros(x.shape[1])
        for lin, b in zip(self.w, self.b):
            x = rankops.cross_layer(x0, x, lin.weight, zero) + b
        return x

    return {"forward": forward}, f"rankops.cross_layer x {m.num_layers} (bias added after: x0 * Wx + b + x)", None


@register(f"{P}.basic.layers.CrossNetMix")
def _crossnetmix(m):
    def forward(self, x):
        gate = torch.cat([g.weight for g in self.gating], 0)
        x0, N = x, x.shape[1]
        for i in range(self.num_layers):
            x = _shared.cross_mix_layer(x0, x, self.v_list[i].transpose(-1, -2), self.c_list[i], self.u_list[i],
                                        self.bias[i].view(N), gate, torch.tanh)
        return x.unsqueeze(2).squeeze()  # the library's x_l.squeeze() of [B, N, 1]

    return {"forward": forward}, f"{m.num_layers} mixture layers: experts as one GEMM + fused epilogue", None


# ---------------------------------------------------------------------------------------------
# DIN


@register(f"{P}.models.ranking.din.ActivationUnit")
def _activation_unit(m):
    mlp = m.attention.mlp
    _shared.check_din_linear(mlp[0], m.emb_dim, "attention.mlp[0]")

    def forward(self, history, target):
        B, L, E = history.shape
        layers = self.attention.mlp
        h = _shared.din_first_layer(target, history, layers[0]).reshape(B * L, -1)
        for layer in layers[1:]:
            h = layer(h)
        att = h.view(-1, L)
        if self.use_softmax:
            att = att.softmax(dim=-1)
        return torch.bmm(att.unsqueeze(1), history).squeeze(1)

    return {"forward": forward}, "first layer without the [B, L, 4E] concatenation", None


@register(f"{P}.basic.activation.Dice")
def _dice(m):
    # rechub's Dice normalises each row over its H units, its eps inside a sum over them:
    # (x - mean) / sqrt(sum((x - mean)^2 + eps)) = layer_norm(x, eps) / sqrt(H)
    if m.alpha.numel() != 1:
        raise Leave(f"alpha of {m.alpha.numel()} values (rechub's is one)")
    original = type(m).forward

    def forward(self, x):
        if x.dim() != 2:
            return original(self, x)
        H = x.shape[1]
        scale = torch.full((H,), H ** -0.5, dtype=x.dtype, device=x.device)
        p = torch.sigmoid(F.layer_norm(x, (H,), weight=scale, eps=self.epsilon))
        return x * torch.addcmul(self.alpha, p, 1 - self.alpha)  # x (p + (1 - p) alpha)

    return {"forward": forward}, "torch.layer_norm for the per-row statistics (four fused ops)", None


# ---------------------------------------------------------------------------------------------
# MLP


def _fold(lin: nn.Linear, bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """(W', b') with ``lin_{W',b'}(x) == bn(lin(x))`` for a BatchNorm in eval mode."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    b = lin.bias if lin.bias is not None else torch.zeros_like(bn.running_mean)
    shift = (b - bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return lin.weight * scale[:, None], shift


@register(f"{P}.basic.layers.MLP")
def _mlp(m):
    seq = list(m.mlp)
    blocks, i = [], 0
    while i + 1 < len(seq) and type(seq[i]) is nn.Linear and type(seq[i + 1]) is nn.BatchNorm1d:
        if not seq[i + 1].track_running_stats:
            raise Leave("a BatchNorm1d without running statistics (no inference form to fold)")
        blocks.append((seq[i], seq[i + 1], seq[i + 2:i + 4]))  # Linear, BatchNorm, (activation, Dropout)
        i += 4
    tail = seq[i:]
    if not blocks or not all(type(t) is nn.Linear for t in tail):
        raise Leave("not the Linear -> BatchNorm1d -> activation -> Dropout blocks of rechub's MLP")
    original = type(m).forward

    def forward(self, x):
        if self.training or torch.is_grad_enabled() or x.dim() != 2:  # (the fold has no autograd formula)
            return original(self, x)
        for lin, bn, rest in blocks:
            w, b = _fold(lin, bn)
            act = rest[0] if len(rest) else None
            if type(act) is nn.ReLU:
                x = torch._addmm_activation(b, x, w.t())
            else:
                x = torch.addmm(b, x, w.t())
                for r in rest:
                    x = r(x)
        for lin in tail:
            x = lin(x)
        return x

    return {"forward": forward}, (f"inference: {len(blocks)} BatchNorm folded into their Linear (+ ReLU in the "
                                  f"GEMM epilogue); training: the library's layers"), None
