"""rankops.patch on the peer libraries' own models: a training step and an inference batch, patched
against unpatched, in one run.

    python -m bench patch              # every model (B=4096, 26 sparse + 13 dense features)
    python -m bench patch --quick      # B=256, a smoke run (bench/results/tmp/)
    python -m bench patch --device cuda   # on a GPU (the peer libraries must be installed there)

Providers: ``eager`` is the library's own model as it comes (eager PyTorch, unpatched); ``patched``
is an identical model (same seed, same weights) after ``rankops.patch(model)``. ``vs eager`` is
therefore the speedup the one call gives.

Models and shapes (each library's defaults except where named):
  * DeepCTR-Torch: DeepFM, DCN with ``cross_parameterization="matrix"`` (DCN-V2), DCNMix, xDeepFM
    with ``cin_layer_size=(64, 64)`` (its default (256, 128) takes ~15 s a step on 2 cores) and DIN
    (its default Dice attention). 26 sparse features of V rows x D=16, 13 dense; DIN: 24 sparse + an
    item / category pair and their behaviour sequences of 50 (lengths 1-50).
    ``step`` = the body of DeepCTR's ``fit()``: its Adam (made by ``model.compile("adam", ...)``),
    the summed binary cross-entropy and its L2 on whole embedding tables.
  * TorchRec: DLRM, DLRM_DCN and SimpleDeepFMNN on an unsharded EmbeddingBagCollection of 26 tables
    (V x 16, 1-3 ids per bag), 13 dense features; ``step`` = BCE-with-logits + Adagrad.
  * torch-rechub: DeepFM, DCNv2 (mixture of 4 experts, rank 32), DIN (sequences of 50, Dice units),
    MMOE (2 tasks, 4 experts); 26 sparse + 13 dense; ``step`` = BCE + Adam (its trainers' default).
  ``fwd`` = ``model.eval()`` and one batch under torch.no_grad.

A step's time includes the optimizer, which patch() leaves as it is: with dense Adam over
26 x V x 16 table weights (DeepCTR, torch-rechub) it is a fixed cost that grows with V.
"""

from __future__ import annotations


import torch

import rankops

B_FULL, B_QUICK = 4096, 256
F, DENSE, D, V = 26, 13, 16, 10_000
SEQ = 50


class _Offline:
    status_code = 503
    text = ""


def _import_deepctr():
    import requests

    requests.get = lambda *a, **k: _Offline()  # its import asks the package index for a newer version
    import deepctr_torch  # noqa: F401


# ---------------------------------------------------------------------------------------------
# DeepCTR-Torch


def _deepctr(name: str, B: int, device):
    _import_deepctr()
    import deepctr_torch.models as zoo
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    dev = str(device)  # DeepCTR takes the device at construction (its regulariser allocates there)
    if name == "DIN":
        sparse = [SparseFeat(f"C{i}", V, embedding_dim=D) for i in range(F - 2)]
        sparse += [SparseFeat("item", V, embedding_dim=D), SparseFeat("cate", 100, embedding_dim=D)]
        seqs = [VarLenSparseFeat(SparseFeat("hist_item", V, embedding_dim=D, embedding_name="item"), SEQ,
                                 length_name="seq_length"),
                VarLenSparseFeat(SparseFeat("hist_cate", 100, embedding_dim=D, embedding_name="cate"), SEQ,
                                 length_name="seq_length")]
        cols = sparse + [DenseFeat(f"I{i}", 1) for i in range(DENSE)] + seqs
        make = lambda: zoo.DIN(cols, ["item", "cate"], device=dev)  # noqa: E731
    else:
        cols = [SparseFeat(f"C{i}", V, embedding_dim=D) for i in range(F)] + [DenseFeat(f"I{i}", 1) for i in range(DENSE)]
        make = {"DeepFM": lambda: zoo.DeepFM(cols, cols, device=dev),
                "DCN-V2": lambda: zoo.DCN(cols, cols, cross_parameterization="matrix", device=dev),
                "DCNMix": lambda: zoo.DCNMix(cols, cols, device=dev),
                "xDeepFM": lambda: zoo.xDeepFM(cols, cols, cin_layer_size=(64, 64), device=dev)}[name]
    ref = make()
    X = torch.zeros(B, max(e for _, e in ref.feature_index.values()))
    lengths = torch.randint(1, SEQ + 1, (B,), generator=g)
    for fc in cols:
        a, b = ref.feature_index[fc.name]
        if isinstance(fc, SparseFeat):
            X[:, a] = torch.randint(0, fc.vocabulary_size, (B,), generator=g).float()
        elif isinstance(fc, DenseFeat):
            X[:, a] = torch.rand(B, generator=g)
        else:
            ids = torch.randint(1, fc.vocabulary_size, (B, SEQ), generator=g)
            ids[torch.arange(SEQ)[None, :] >= lengths[:, None]] = 0
            X[:, a:b] = ids.float()
    if "seq_length" in ref.feature_index:
        X[:, ref.feature_index["seq_length"][0]] = lengths.float()
    y = torch.randint(0, 2, (B,), generator=g).float()
    X, y = X.to(device), y.to(device)

    def build(patched: bool):
        torch.manual_seed(0)
        m = make()
        m.compile("adam", "binary_crossentropy")
        if patched:
            rankops.patch(m)
        return m

    def step_fn(m):
        def step(X, y):  # the body of BaseModel.fit
            pred = m(X).squeeze(-1)
            m.optim.zero_grad()
            loss = m.loss_func(pred, y, reduction="sum") + m.get_regularization_loss() + m.aux_loss
            loss.backward()
            m.optim.step()
        return step

    return build, step_fn, lambda m: (lambda X, y: m(X)), (X, y)


# ---------------------------------------------------------------------------------------------
# TorchRec


def _torchrec(name: str, B: int, device):
    from torchrec.models.deepfm import SimpleDeepFMNN
    from torchrec.models.dlrm import DLRM, DLRM_DCN
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(0)
    keys = [f"f{i}" for i in range(F)]
    lengths = torch.randint(1, 4, (F * B,), generator=g)
    values = torch.randint(0, V, (int(lengths.sum()),), generator=g)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths)
    dense = torch.rand(B, DENSE, generator=g)
    y = torch.randint(0, 2, (B,), generator=g).float()
    kjt, dense, y = kjt.to(device), dense.to(device), y.to(device)

    def make():
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=f"t{i}", embedding_dim=D, num_embeddings=V,
                                                                feature_names=[k]) for i, k in enumerate(keys)])
        if name == "DLRM":
            return DLRM(ebc, DENSE, [512, 256, D], [512, 256, 1])
        if name == "DLRM_DCN":
            return DLRM_DCN(ebc, DENSE, [512, 256, D], [512, 256, 1], dcn_num_layers=3, dcn_low_rank_dim=64)
        return SimpleDeepFMNN(DENSE, ebc, hidden_layer_size=256, deep_fm_dimension=64)

    def build(patched: bool):
        torch.manual_seed(0)
        m = make().to(device)
        m.opt = torch.optim.Adagrad(m.parameters(), lr=0.01)
        if patched:
            rankops.patch(m)
        return m

    def step_fn(m):
        def step(dense, kjt, y):
            m.opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(dense, kjt).squeeze(-1), y)
            loss.backward()
            m.opt.step()
        return step

    return build, step_fn, lambda m: (lambda dense, kjt, y: m(dense, kjt)), (dense, kjt, y)


# ---------------------------------------------------------------------------------------------
# torch-rechub


def _rechub(name: str, B: int, device):
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE
    from torch_rechub.models.ranking import DCNv2, DIN, DeepFM

    g = torch.Generator().manual_seed(0)
    x = {f"C{i}": torch.randint(0, V, (B,), generator=g) for i in range(F)}
    x.update({f"I{i}": torch.rand(B, generator=g) for i in range(DENSE)})
    x["item"], x["cate"] = torch.randint(0, V, (B,), generator=g), torch.randint(0, 100, (B,), generator=g)
    x["hist_item"] = torch.randint(0, V, (B, SEQ), generator=g)
    x["hist_cate"] = torch.randint(0, 100, (B, SEQ), generator=g)
    y = torch.randint(0, 2, (B,), generator=g).float()
    x, y = {k: v.to(device) for k, v in x.items()}, y.to(device)
    mlp = {"dims": [256, 128], "dropout": 0.0, "activation": "relu"}

    def make():
        sparse = [SparseFeature(f"C{i}", V, embed_dim=D) for i in range(F)]
        dense = [DenseFeature(f"I{i}") for i in range(DENSE)]
        if name == "DeepFM":
            return DeepFM(deep_features=sparse + dense, fm_features=sparse, mlp_params=mlp)
        if name == "DCNv2":
            return DCNv2(sparse + dense, n_cross_layers=3, mlp_params=mlp, use_low_rank_mixture=True, low_rank=32,
                         num_experts=4)
        if name == "DIN":
            target = [SparseFeature("item", V, embed_dim=D), SparseFeature("cate", 100, embed_dim=D)]
            hist = [SequenceFeature("hist_item", V, embed_dim=D, pooling="concat", shared_with="item"),
                    SequenceFeature("hist_cate", 100, embed_dim=D, pooling="concat", shared_with="cate")]
            return DIN(sparse[:F - 2], hist, target, mlp_params={"dims": [256, 128]},
                       attention_mlp_params={"dims": [64, 32]})
        return MMOE(sparse + dense, ["classification", "classification"], n_expert=4,
                    expert_params={"dims": [256, 128]}, tower_params_list=[{"dims": [64]}, {"dims": [64]}])

    def build(patched: bool):
        torch.manual_seed(0)
        m = make().to(device)
        m.opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-5)
        if patched:
            rankops.patch(m)
        return m

    def step_fn(m):
        def step(x, y):
            m.opt.zero_grad()
            out = m(x)
            out = out[:, 0] if out.dim() == 2 else out
            torch.nn.functional.binary_cross_entropy(out, y).backward()
            m.opt.step()
        return step

    return build, step_fn, lambda m: (lambda x, y: m(x)), (x, y)


MODELS = {
    "deepctr": (_deepctr, ("DeepFM", "DCN-V2", "DCNMix", "xDeepFM", "DIN")),
    "torchrec": (_torchrec, ("DLRM", "DLRM_DCN", "SimpleDeepFMNN")),
    "rechub": (_rechub, ("DeepFM", "DCNv2", "DIN", "MMOE")),
}


def run(bench, args):
    B = B_QUICK if bench.quick else B_FULL
    bench.note("`eager` = the library's own model, unpatched; `patched` = the same model (same seed) after "
               "rankops.patch(model). `step` = forward + loss + backward + the library's optimizer step.")
    bench.note(f"B={B}, {F} sparse features of V={V} rows x D={D}, {DENSE} dense; see bench/patch.py for each "
               f"model's configuration")
    cases = [(lib, name, mode) for lib, (_, names) in MODELS.items() for name in names for mode in ("step", "fwd")]
    for c in bench.grid(case=[f"{lib}.{name}:{mode}" for lib, name, mode in cases]):
        lib, rest = c["case"].split(".", 1)
        name, mode = rest.split(":")
        if not bench.wants(op=f"{lib}.{name}", mode=mode):
            continue
        setup = MODELS[lib][0]
        try:
            build, step_fn, infer_fn, inputs = setup(name, B, bench.device)
        except ImportError as e:
            bench.note(f"{lib}: not installed ({e}); its models are absent")
            continue
        providers = {}
        for label, patched in (("eager", False), ("patched", True)):
            m = build(patched)
            if mode == "step":
                m.train()
                providers[label] = step_fn(m)
            else:
                m.eval()
                providers[label] = infer_fn(m)
        bench.run(op=f"{lib}.{name}", case=dict(B=B, F=F, D=D, V=V), mode=mode, inputs=inputs, providers=providers,
                  dtype=torch.float32)
