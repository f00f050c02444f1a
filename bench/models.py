"""One training step of the zoo's models at realistic shapes, fused against eager and torch.compile.

    python -m bench models              # DCN-V2, DeepFM, xDeepFM, DLRM, DIN, MMoE at B=4096
    python -m bench models --quick      # B=512, small tables (smoke)

The data: 13 dense and 26 one-hot sparse features (vocabulary 100k each; DLRM: 4 of them 1M), D=16
(DLRM: D=64; 26 tables of 1M x 64 would be 6.6 GB a copy, and the four providers hold a copy each), one click task (MMoE: click and a second task), DIN: plus a candidate item and a behaviour
sequence of 100 items (lengths uniform in [1, 100]) sharing the item table. Every provider trains
the same model from the same weights: Adam (lr 1e-3) on the dense parameters, row-wise Adagrad
(lr 0.01) on the tables.

  eager          the model on the reference backend (every rankops op as its PyTorch reference,
                 the tables' update included)
  compile        torch.compile of that model with every declared op's reference traced through
                 (rankops.ops._declare.tracing_reference): what compiling the model written in plain
                 PyTorch gives; the tables' fused update stays an opaque op
  fused          the model on rankops' default backend (auto: per op the fastest kernel for the
                 device, cpp on CPU), the tables updated inside the backward
  compile-fused  torch.compile of the fused model

The floor of a step: the bytes it must move at the measured bandwidth plus its FLOPs at the
measured peak (FLOPs counted with every op's PyTorch reference inline, so that the products inside
cross, CIN and attention count). Bytes: each lookup's row read (nnz D 4), each unique row's weights and state read
and written (U (2 D 4 + 8)), every activation the backward keeps written once and read once (2 x
the saved tensors' bytes, counted on the eager step), and the dense parameters' Adam step
(7 x 4 bytes a parameter: p, g, m, v read, p, m, v written). FLOPs: torch's FlopCounterMode over
the eager step (matrix products and convolutions, forward and backward).
"""

from __future__ import annotations

import copy

import torch

import rankops
import rankops.models as zoo
from rankops.data.schema import Schema
from rankops.data.synthetic import random_batch
from rankops.ops._declare import inline_reference, tracing_reference
from rankops.ops.embedding_bag import FusedOptimizer

MODELS = {
    "dcnv2": dict(dnn_hidden_units=(512, 256), cross_num=3),
    "deepfm": dict(dnn_hidden_units=(400, 400, 400)),
    "xdeepfm": dict(dnn_hidden_units=(400, 400), cin_layer_size=(200, 200, 200)),
    "dlrm": dict(bottom_mlp=(512, 256), dnn_hidden_units=(1024, 1024, 512, 256)),
    "din": dict(dnn_hidden_units=(200, 80), att_hidden_units=(80, 40)),
    "mmoe": dict(num_experts=4, expert_hidden_units=(256, 128), tower_hidden_units=(64,)),
}
LR, TABLE_LR = 1e-3, 0.01


LARGE_TABLES = 4  # DLRM: this many tables of 10x the vocabulary (Criteo's few huge tables beside many small)


def schema_for(name: str, vocab: int, dim: int, max_len: int) -> Schema:
    sizes = [vocab * 10 if name == "dlrm" and i < LARGE_TABLES else vocab for i in range(26)]
    sparse = [{"name": f"c{i}", "vocab_size": sizes[i], "embedding_dim": dim} for i in range(26)]
    d = {"dense": [{"name": f"i{i}"} for i in range(13)], "sparse": sparse, "tasks": [{"name": "click"}]}
    if name == "din":
        d["sparse"] = sparse + [{"name": "item", "vocab_size": vocab, "embedding_dim": dim}]
        d["sequences"] = [{"name": "hist_item", "target": "item", "max_len": max_len}]
    if name == "mmoe":
        d["tasks"] = [{"name": "click"}, {"name": "like"}]
    return Schema.from_dict(d)


class Step:
    """forward + loss + backward + Adam on the dense parameters (the tables update in the backward)."""

    def __init__(self, model, backend: str | None, compiled: bool):
        self.model, self.backend = model, backend
        self.forward = torch.compile(model) if compiled else model
        self.opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)

    def __call__(self, batch):
        if self.backend == "reference" and self.forward is not self.model:
            ctx = tracing_reference()  # compile sees the ops' PyTorch code, not opaque custom ops
        else:
            ctx = rankops.use_backend(self.backend)
        with ctx:
            loss = self.model.loss(self.forward(batch), batch.labels)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


def step_floor(model, batch, bench) -> tuple[float, float]:
    """(bytes, flops) a step must move and compute (see the module docstring), from one eager step."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model)
    saved: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with rankops.use_backend("reference"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = m.loss(m(batch), batch.labels)
        loss.backward()
    # FLOPs from a second step with every op's reference inline: a dispatch mode sees a custom op
    # as one opaque call, so the products inside cross / CIN / attention would go uncounted
    counter = FlopCounterMode(display=False)
    with rankops.use_backend("reference"), inline_reference(), counter:
        loss = m.loss(m(batch), batch.labels)
        loss.backward()
    dense = sum(p.numel() for p in m.parameters() if p.requires_grad)
    tables = list(m.features.embeddings.weights)
    table_ptrs = {w.untyped_storage().data_ptr() for w in tables}
    activations = sum(v for k, v in saved.items() if k not in table_ptrs)
    D = tables[0].shape[1]
    ids = batch.sparse.values()
    nnz = ids.numel() + sum(i.numel() for i, _ in batch.sequences.values())
    unique = nnz  # upper bound without a sort; tables of 100k+ rows make repeats rare at B=4096
    byts = nnz * D * 4 + unique * (2 * D * 4 + 8) + 2 * activations + 7 * 4 * dense
    return float(byts), float(counter.get_total_flops())


def run(bench, args):
    B = 512 if bench.quick else 4096
    vocab = 10_000 if bench.quick else 100_000
    names = list(MODELS)
    bench.note("step = forward + backward + Adam (dense, lr 1e-3) + row-wise Adagrad (tables, lr 0.01, fused into "
               "the backward for the fused providers, the reference update for eager / compile); same weights for all")
    for c in bench.grid(model=names, mode=["step"]):
        name = c["model"]
        V, D = vocab, (64 if name == "dlrm" else 16)
        schema = schema_for(name, V, D, max_len=100)
        batch = random_batch(schema, B, seed=0).to(bench.device)
        torch.manual_seed(0)
        model = zoo.build(name, schema, embedding_optimizer=FusedOptimizer("rowwise_adagrad", TABLE_LR),
                          **MODELS[name]).to(bench.device)
        byts, flops = step_floor(model, batch, bench)
        provs = {"eager": Step(copy.deepcopy(model), "reference", False),
                 "compile": Step(copy.deepcopy(model), "reference", True)}
        provs["fused"] = Step(copy.deepcopy(model), "auto", False)
        provs["compile-fused"] = Step(copy.deepcopy(model), "auto", True)
        floor_ms = 1e3 * (byts / (bench.bandwidth * 1e9) + flops / (bench.peak * 1e12))
        bench.note(f"{name}: floor {floor_ms:.2f} ms = {byts / 1e6:.0f} MB at {bench.bandwidth:.0f} GB/s + "
                   f"{flops / 1e9:.1f} GFLOP at {bench.peak:.2f} TFLOP/s")
        bench.run(op="train_step", case=dict(model=name, B=B, V=V, D=D), mode="step", inputs=(batch,),
                  providers=provs, bytes=byts, flops=flops)
