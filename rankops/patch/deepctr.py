"""DeepCTR-Torch (deepctr-torch 0.3): its layers on rankops ops, on their own parameters.

  BaseModel                       the per-feature ``embedding_dict`` -> one batched lookup
                                  (``input_from_feature_columns``); the L2 on whole tables that
                                  ``fit()`` adds every step -> one pass over the stacked tables
                                  (``get_regularization_loss``)
  models.basemodel.Linear         the per-feature 1-dim tables -> one pooled bag per sample
  layers.interaction.FM           rankops.fm_interaction
  layers.interaction.CIN          rankops.cin_layer per layer (no [B, H*M, D] outer product)
  layers.interaction.CrossNet     'matrix': rankops.cross_net (the whole stack); 'vector': cross_layer_v1
  layers.interaction.CrossNetMix  the K experts' [B, N] part as one GEMM + fused epilogue
  layers.interaction.InteractingLayer  one projection GEMM + rankops.target_attention over the fields
  layers.sequence.AttentionSequencePoolingLayer  rankops.din_attention (sigmoid / PReLU units; Dice units in inference)
  layers.core.LocalActivationUnit the first layer as (Wa+Wc) q + (Wb-Wc+Wd diag q) k: no [B, T, 4E]
  layers.activation.Dice          training: rankops.dice (its BatchNorm's batch statistics, affine and
                                  running averages); inference: unchanged
  layers.core.DNN                 Linear + ReLU as one torch._addmm_activation per layer

Everything else in the model (the models' forward, PredictionLayer, the fit loop) is the library's.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rankops
from rankops.nn import mlp
from rankops.patch import _shared, _tables
from rankops.patch._core import Leave, register

P = "deepctr_torch"


def _inputs():
    from deepctr_torch import inputs

    return inputs


# ---------------------------------------------------------------------------------------------
# embeddings: the model's tables and the linear part's tables


# id(Parameter) -> the StackedTables holding it (the regulariser finds the stacks through it); weak,
# so a model dropped without unpatch() takes its stacks along.
_STACK_OF: "weakref.WeakValueDictionary[int, _tables.StackedTables]" = weakref.WeakValueDictionary()


def _stack_dict(embedding_dict: nn.ModuleDict, what: str):
    """Stack the tables of a ModuleDict {embedding_name: nn.Embedding}, one stack per (dim, dtype,
    device). Returns ({embedding_name: (stack, table index)}, undo)."""
    groups: dict[tuple, list[str]] = {}
    for name, emb in embedding_dict.items():
        _tables.check_embedding(emb, f"{what}[{name!r}]")
        w = emb.weight
        groups.setdefault((w.shape[1], w.dtype, w.device), []).append(name)
    where, stacks = {}, []
    for names in groups.values():
        st = _tables.StackedTables([embedding_dict[n].weight for n in names])
        stacks.append(st)
        for i, n in enumerate(names):
            where[n] = (st, i)
            _STACK_OF[id(st.params[i])] = st

    def undo():
        for st in stacks:
            for p in st.params:
                _STACK_OF.pop(id(p), None)
            st.unstack()

    return where, stacks, undo


class _Plan:
    """How a list of SparseFeat is looked up: per stack, the X columns, the table of each feature,
    and where each feature's [B, 1, D] goes in the returned list."""

    def __init__(self, feats, feature_index, where):
        self.groups = []  # (stack, columns, tables tensor, names, positions)
        by_stack: dict[int, list] = {}
        for pos, fc in enumerate(feats):
            start, end = feature_index[fc.name]
            if end - start != 1:
                raise Leave(f"feature {fc.name!r} spans {end - start} columns")
            st, t = where[fc.embedding_name]
            by_stack.setdefault(id(st), [st, [], [], [], []])
            g = by_stack[id(st)]
            g[1].append(start), g[2].append(t), g[3].append(fc.name), g[4].append(pos)
        for st, cols, tabs, names, pos in by_stack.values():
            contiguous = cols == list(range(cols[0], cols[0] + len(cols)))
            sel = slice(cols[0], cols[0] + len(cols)) if contiguous else torch.tensor(cols, device=st.device)
            self.groups.append((st, sel, torch.tensor(tabs, device=st.device), names, pos))
        self.n = len(feats)

    def ids(self, X: Tensor, sel) -> Tensor:
        """[B, T] int64 ids, feature-major in memory (a transposed view of a [T, B] tensor)."""
        cols = X[:, sel] if isinstance(sel, slice) else X.index_select(1, sel.to(X.device))
        return cols.t().to(torch.int64, memory_format=torch.contiguous_format).t()

    def embeddings(self, X: Tensor) -> list[Tensor]:
        """[B, 1, D] per feature, in the features' order: contiguous blocks of one [T, B, D] per stack."""
        out: list = [None] * self.n
        for st, sel, tabs, names, pos in self.groups:
            st.ensure()
            emb = _tables.lookup_by_feature(st, _tables.global_rows(st, self.ids(X, sel), tabs, names))
            for p, e in zip(pos, _tables.unstack(emb)):
                out[p] = e
        return out

    def pooled(self, X: Tensor) -> Tensor:
        """[B, D] the sum of every feature's row (the linear part, D = 1)."""
        total = None
        for st, sel, tabs, names, _ in self.groups:
            st.ensure()
            s = _tables.pooled_sum(st, _tables.global_rows(st, self.ids(X, sel), tabs, names))
            total = s if total is None else total + s
        return total


@register(f"{P}.models.basemodel.BaseModel", methods=("input_from_feature_columns", "get_regularization_loss"))
def _base_model(model):
    inputs = _inputs()
    where, stacks, undo = _stack_dict(model.embedding_dict, "embedding_dict")
    plans: dict[tuple[int, int], tuple] = {}
    original = type(model).input_from_feature_columns

    def input_from_feature_columns(self, X, feature_columns, embedding_dict, support_dense=True):
        key = (id(feature_columns), id(embedding_dict))
        hit = plans.get(key)
        if hit is None or hit[0] is not feature_columns or hit[1] is not embedding_dict:
            plan = None
            if embedding_dict is self.embedding_dict:
                sparse = [fc for fc in feature_columns if isinstance(fc, inputs.SparseFeat)]
                try:
                    plan = _Plan(sparse, self.feature_index, where) if sparse else None
                except (Leave, KeyError):
                    plan = None
            hit = plans[key] = (feature_columns, embedding_dict, plan)
        plan = hit[2]
        if plan is None:
            return original(self, X, feature_columns, embedding_dict, support_dense)
        dense = [fc for fc in feature_columns if isinstance(fc, inputs.DenseFeat)]
        varlen = [fc for fc in feature_columns if isinstance(fc, inputs.VarLenSparseFeat)]
        if not support_dense and dense:
            raise ValueError("DenseFeat is not supported in dnn_feature_columns")
        sparse_list = plan.embeddings(X)
        seq = inputs.varlen_embedding_lookup(X, self.embedding_dict, self.feature_index, varlen)
        varlen_list = inputs.get_varlen_pooling_list(seq, X, self.feature_index, varlen, self.device)
        dense_list = [X[:, self.feature_index[fc.name][0]:self.feature_index[fc.name][1]] for fc in dense]
        return sparse_list + varlen_list, dense_list

    def get_regularization_loss(self):
        total = torch.zeros((1,), device=self.device)
        for weight_list, l1, l2 in self.regularization_weight:
            params = [w[1] if isinstance(w, tuple) else w for w in weight_list]
            rest = params
            if l2 > 0:
                ids = {id(p) for p in params}
                whole = {}
                for p in params:
                    st = _STACK_OF.get(id(p))
                    if st is not None and any(q is p for q in st.params) and all(id(q) in ids for q in st.params):
                        whole[id(st)] = st
                if whole:
                    inside = {id(q) for st in whole.values() for q in st.params}
                    rest = [p for p in params if id(p) not in inside]
                    for st in whole.values():
                        total = total + _tables.l2(st, l2)
                    if l1 > 0:
                        for p in params:
                            if id(p) in inside:
                                total = total + torch.sum(l1 * torch.abs(p))
            for p in rest:
                if l1 > 0:
                    total = total + torch.sum(l1 * torch.abs(p))
                if l2 > 0:
                    total = total + torch.sum(l2 * torch.square(p))
        return total

    groups = ", ".join(f"{len(st.params)} x {st.buf.shape[1]}" for st in stacks)
    detail = (f"embedding_dict: {len(where)} tables ({groups}) stacked, one rankops.batched_embedding_bag per "
              f"lookup; L2 of the stacked tables in one pass")
    return {"input_from_feature_columns": input_from_feature_columns,
            "get_regularization_loss": get_regularization_loss}, detail, undo


@register(f"{P}.models.basemodel.Linear")
def _linear(lin):
    inputs = _inputs()
    if not lin.sparse_feature_columns:
        raise Leave("no sparse features")
    where, stacks, undo = _stack_dict(lin.embedding_dict, "linear embedding_dict")
    try:
        plan = _Plan(lin.sparse_feature_columns, lin.feature_index, where)
    except (Leave, KeyError) as e:
        undo()
        raise Leave(f"sparse features not one column each ({e})") from None
    original = type(lin).forward

    def forward(self, X, sparse_feat_refine_weight=None):
        if sparse_feat_refine_weight is not None:
            return original(self, X, sparse_feat_refine_weight)
        logit = plan.pooled(X)  # [B, 1]
        if self.varlen_sparse_feature_columns:
            seq = inputs.varlen_embedding_lookup(X, self.embedding_dict, self.feature_index,
                                                 self.varlen_sparse_feature_columns)
            pooled = inputs.get_varlen_pooling_list(seq, X, self.feature_index, self.varlen_sparse_feature_columns,
                                                    self.device)
            logit = logit + torch.sum(torch.cat(pooled, dim=-1), dim=-1)
        if self.dense_feature_columns:
            dense = [X[:, self.feature_index[fc.name][0]:self.feature_index[fc.name][1]]
                     for fc in self.dense_feature_columns]
            logit = logit + torch.cat(dense, dim=-1).matmul(self.weight)
        return logit

    return {"forward": forward}, f"{len(where)} one-dim tables stacked, one pooled bag per sample", undo


# ---------------------------------------------------------------------------------------------
# interaction layers


@register(f"{P}.layers.interaction.FM")
def _fm(m):
    def forward(self, inputs):
        return rankops.fm_interaction(inputs, True)

    return {"forward": forward}, "rankops.fm_interaction", None


@register(f"{P}.layers.interaction.CIN")
def _cin(m):
    for i, conv in enumerate(m.conv1ds):
        _shared.conv1x1_weight(conv, f"conv1ds[{i}]")
    act = m.activation

    def forward(self, inputs):
        if len(inputs.shape) != 3:
            raise ValueError("Unexpected inputs dimensions %d, expect to be 3 dimensions" % (len(inputs.shape)))
        M = inputs.shape[1]
        weights = [c.weight.view(c.out_channels, c.in_channels // M, M) for c in self.conv1ds]
        direct = _shared.cin_stack(inputs, weights, [c.bias for c in self.conv1ds],
                                   act if act is not None else (lambda x: x), self.split_half, direct_first=False)
        return torch.sum(torch.cat(direct, dim=1), -1)

    return {"forward": forward}, f"rankops.cin_layer x {len(m.conv1ds)}", None


@register(f"{P}.layers.interaction.CrossNet")
def _crossnet(m):
    if m.parameterization not in ("vector", "matrix"):
        raise Leave(f"parameterization {m.parameterization!r}")
    L, N = m.kernels.shape[0], m.kernels.shape[1]

    if m.parameterization == "matrix":
        def forward(self, inputs):
            return rankops.cross_net(inputs, self.kernels, self.bias.view(L, N))

        return {"forward": forward}, "rankops.cross_net (matrix, whole stack)", None

    def forward(self, inputs):  # noqa: F811 - the 'vector' variant
        x = inputs
        for w, b in zip(self.kernels.view(L, N).unbind(0), self.bias.view(L, N).unbind(0)):
            x = rankops.cross_layer_v1(inputs, x, w, b)
        return x

    return {"forward": forward}, f"rankops.cross_layer_v1 x {L} (vector)", None


@register(f"{P}.layers.interaction.CrossNetMix")
def _crossnetmix(m):
    L, K, N, r = m.U_list.shape

    def forward(self, inputs):
        gate = torch.cat([g.weight for g in self.gating], 0)  # [K, N]
        x = inputs
        for i in range(self.layer_num):
            x = _shared.cross_mix_layer(inputs, x, self.V_list[i].transpose(-1, -2), self.C_list[i], self.U_list[i],
                                        self.bias[i].view(N), gate, torch.tanh)
        return x.unsqueeze(2).squeeze()  # the library's x_l.squeeze() of [B, N, 1]

    return {"forward": forward}, f"{L} mixture layers: experts as one GEMM + fused epilogue", None


@register(f"{P}.layers.interaction.InteractingLayer")
def _interacting(m):
    E = m.W_Query.shape[0]
    H, d = m.head_num, m.att_embedding_size

    def forward(self, inputs):
        if len(inputs.shape) != 3:
            raise ValueError("Unexpected inputs dimensions %d, expect to be 3 dimensions" % (len(inputs.shape)))
        B, Fn, _ = inputs.shape
        ws = [self.W_Query, self.W_key, self.W_Value] + ([self.W_Res] if self.use_res else [])
        proj = torch.matmul(inputs, torch.cat(ws, 1))  # [B, F, 3E or 4E]: one GEMM
        q, k, v = (proj[..., i * E:(i + 1) * E].reshape(B, Fn, H, d).transpose(1, 2) for i in range(3))
        lengths = torch.full((B,), Fn, dtype=torch.int64, device=inputs.device)
        o = rankops.target_attention(q, k, v, lengths, scale=d ** -0.5 if self.scaling else 1.0)
        result = o.transpose(1, 2).reshape(B, Fn, E)
        if self.use_res:
            result = result + proj[..., 3 * E:]
        return F.relu(result)

    return {"forward": forward}, ("one projection GEMM + rankops.target_attention (the attention weights are "
                                  "not kept in normalized_att_scores)"), None


# ---------------------------------------------------------------------------------------------
# DIN


def _is_dice(a) -> bool:
    return type(a).__module__ == f"{P}.layers.activation" and type(a).__qualname__ == "Dice"


def _unit_activation(lau) -> tuple[str, list]:
    """('sigmoid' | 'prelu' | 'dice', per-layer PReLU / Dice modules) of a LocalActivationUnit's DNN,
    or Leave."""
    acts = list(lau.dnn.activation_layers)
    if all(type(a) is nn.Sigmoid for a in acts):
        return "sigmoid", []
    if all(type(a) is nn.PReLU for a in acts):
        return "prelu", acts
    if all(_is_dice(a) and a.dim == 3 and type(a.bn) is nn.BatchNorm1d and a.bn.track_running_stats for a in acts):
        return "dice", acts
    names = sorted({type(a).__name__ for a in acts})
    raise Leave(f"att_activation {'/'.join(names)}")


def _dice_as_stats(dice) -> tuple[Tensor, Tensor] | None:
    """DeepCTR's inference Dice, sigmoid(g (s - m) / sqrt(v + eps) + b) on running statistics, as
    din_attention's sigmoid((s - m') / sqrt(v')) (eps 0): c = sqrt(v + eps) / g, m' = m - b c, v' = c^2.
    None where a weight g is not positive (the fold would flip the gate)."""
    bn = dice.bn
    c = (bn.running_var.float() + bn.eps).sqrt()
    mean = bn.running_mean.float()
    if bn.weight is not None:
        g = bn.weight.detach().float()
        if not torch.compiler.is_compiling() and bool((g <= 0).any()):
            return None
        c = c / g
        mean = mean - bn.bias.detach().float() * c
    return mean, c * c


@register(f"{P}.layers.sequence.AttentionSequencePoolingLayer")
def _attention_pooling(m):
    lau = m.local_att
    dnn = lau.dnn
    if m.return_score:
        raise Leave("return_score=True")
    if m.supports_masking:
        raise Leave("supports_masking=True (an explicit mask, not lengths)")
    if dnn.use_bn or dnn.dropout_rate:
        raise Leave("use_bn / dropout in the attention unit")
    if len(dnn.linears) not in (1, 2):
        raise Leave(f"{len(dnn.linears)} hidden layers (rankops.din_attention takes 1 or 2)")
    kind, units = _unit_activation(lau)
    original = type(m).forward

    def forward(self, query, keys, keys_length, mask=None):
        B, T, E = keys.shape
        lengths = keys_length.reshape(-1).clamp(0, T)
        if self.weight_normalization and not torch.compiler.is_compiling() and bool((lengths == 0).any()):
            return original(self, query, keys, keys_length, mask)  # DeepCTR: a uniform softmax over padding there
        lin = self.local_att.dnn.linears
        w2, b2 = (lin[1].weight, lin[1].bias) if len(lin) == 2 else (None, None)
        stats, eps = None, 1e-8
        if kind == "dice":
            # training: BatchNorm over every padded key (not din_attention's valid-key statistics), so
            # the unit runs as DeepCTR wrote it, its Dice on rankops.dice; inference: running statistics
            if torch.is_grad_enabled() or any(a.bn.training for a in units):
                return original(self, query, keys, keys_length, mask)
            stats = tuple(_dice_as_stats(a) for a in units)
            if any(st is None for st in stats):
                return original(self, query, keys, keys_length, mask)
            stats, eps = stats + (None,) * (2 - len(stats)), 0.0
            alphas = tuple(a.alpha.reshape(-1) for a in units)
        else:
            alphas = tuple(p.weight.expand(l.out_features) for p, l in zip(units, lin)) if units else (None, None)
        out = rankops.din_attention(query.reshape(B, E), keys, lengths, lin[0].weight, lin[0].bias, w2, b2,
                                    self.local_att.dense.weight, self.local_att.dense.bias, activation=kind,
                                    normalize=self.weight_normalization, alphas=alphas, dice_stats=stats, eps=eps)
        return out.unsqueeze(1)

    detail = f"rankops.din_attention ({kind})"
    if kind == "dice":
        detail = ("inference: rankops.din_attention (Dice on its running statistics, BatchNorm's affine folded in); "
                  "training: the unit as written (its BatchNorm sees the padded keys)")
    return {"forward": forward}, detail, None


@register(f"{P}.layers.core.LocalActivationUnit")
def _local_activation_unit(m):
    dnn = m.dnn
    E = dnn.linears[0].in_features // 4
    _shared.check_din_linear(dnn.linears[0], E, "dnn.linears[0]")

    def forward(self, query, user_behavior):
        d = self.dnn
        fc = _shared.din_first_layer(query.reshape(query.shape[0], -1), user_behavior, d.linears[0])
        for i in range(len(d.linears)):
            if i:
                fc = d.linears[i](fc)
            if d.use_bn:
                fc = d.bn[i](fc)
            fc = d.dropout(d.activation_layers[i](fc))
        return self.dense(fc)

    return {"forward": forward}, "first layer without the [B, T, 4E] concatenation", None


@register(f"{P}.layers.activation.Dice")
def _dice(m):
    bn = m.bn
    if type(bn) is not nn.BatchNorm1d:
        raise Leave(f"bn is a {type(bn).__qualname__}, not a BatchNorm1d")
    original = type(m).forward

    def forward(self, x):
        bn = self.bn
        batch_stats = bn.training or bn.running_mean is None
        if not batch_stats or x.dim() != self.dim:
            return original(self, x)  # inference: BatchNorm on running statistics is elementwise already
        H = bn.num_features
        # dim 3: [B, T, H], BatchNorm1d over channels H of the transposed [B, H, T]: statistics over (B, T)
        rows = x.reshape(-1, H)
        n = rows.shape[0]
        if n <= 1:
            return original(self, x)  # torch's BatchNorm raises its own error for one value per channel
        mask = torch.ones(n, dtype=torch.bool, device=x.device)
        y, mean, var = rankops.dice(rows, mask, self.alpha.reshape(-1), bn.eps, weight=bn.weight, bias=bn.bias)
        if bn.training and bn.track_running_stats:
            with torch.no_grad():  # BatchNorm's running averages (its unbiased variance)
                bn.num_batches_tracked.add_(1)
                mom = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), mom)
                bn.running_var.lerp_((var * (n / (n - 1))).to(bn.running_var.dtype), mom)
        return y.view(x.shape)

    return {"forward": forward}, "training: rankops.dice (batch statistics, BatchNorm affine)", None


# ---------------------------------------------------------------------------------------------
# DNN


@register(f"{P}.layers.core.DNN")
def _dnn(m):
    if m.use_bn:
        raise Leave("use_bn=True: a BatchNorm sits between each Linear and its activation, nothing to fuse")
    acts = list(m.activation_layers)
    if not all(type(a) is nn.ReLU for a in acts):
        names = sorted({type(a).__name__ for a in acts})
        raise Leave(f"activation {'/'.join(names)}: only Linear + ReLU is fused")
    if any(lin.bias is None for lin in m.linears):
        raise Leave("a Linear without bias")

    def forward(self, inputs):
        x = inputs
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        fused = not (torch.is_grad_enabled() and (x.requires_grad or self.linears[0].weight.requires_grad))
        for i, lin in enumerate(self.linears):
            if fused:  # (no autograd formula: inference only)
                x = torch._addmm_activation(lin.bias, x, lin.weight.t())
            elif i == 0:  # an input of odd width (429 Criteo features): its gradient into aligned rows
                x = mlp.linear(x, lin.weight, lin.bias).relu_()
            else:
                x = torch.addmm(lin.bias, x, lin.weight.t()).relu_()
            x = self.dropout(x)
        return x.reshape(*lead, x.shape[-1])

    return {"forward": forward}, (f"inference: Linear + ReLU as one torch._addmm_activation x {len(m.linears)} "
                                  f"(the ReLU in the GEMM epilogue on CUDA); training: unchanged math, the first "
                                  f"layer's input gradient into cache-line-padded rows"), None
