"""The peer libraries for the patch tests: imported once, offline, with small models of each and
synthetic batches shaped the way each library feeds its models.

DeepCTR-Torch's import starts a thread that asks the package index for the latest version; offline
that fails and prints a notice, so requests.get is stubbed (answering 503) before the import.
"""

from __future__ import annotations

import importlib

import pytest
import torch


class _Offline:
    status_code = 503
    text = ""


def import_deepctr():
    requests = pytest.importorskip("requests", reason="deepctr-torch imports requests (requirements-peers.txt)")
    requests.get = lambda *a, **k: _Offline()
    return pytest.importorskip("deepctr_torch", reason="deepctr-torch is not installed (requirements-anchors.txt)")


def import_torchrec():
    pytest.importorskip("fbgemm_gpu", reason="fbgemm-gpu-cpu is not installed (requirements-anchors.txt)")
    return pytest.importorskip("torchrec", reason="torchrec is not installed (requirements-anchors.txt)")


def import_rechub():
    return pytest.importorskip("torch_rechub", reason="torch-rechub is not installed (requirements-anchors.txt)")


def module(name: str):
    return importlib.import_module(name)


# ---------------------------------------------------------------------------------------------
# comparisons


# fp32 against fp32 computed in another order: elementwise rtol, plus an atol relative to the
# tensor's largest element (a sum of many terms has an absolute error of about eps * its terms), plus
# an absolute floor for gradients that are zero up to rounding (a Linear's bias before a BatchNorm).
RTOL, ATOL, FLOOR = 1e-4, 1e-5, 1e-6


def assert_close(got, want, what: str, rtol: float = RTOL, atol: float = ATOL, floor: float = FLOOR) -> None:
    """allclose that says how many elements differ, where the worst is and by how much; ``atol``
    is relative to ``max |want|``, ``floor`` absolute."""
    got, want = torch.as_tensor(got).detach(), torch.as_tensor(want).detach()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).eq(torch.isfinite(want)).all(), f"{what}: NaN/Inf in different places"
    diff = (got.double() - want.double()).abs()
    scale = want.double().abs().max().item() if want.numel() else 0.0
    bad = diff > floor + atol * scale + rtol * want.double().abs()
    if bool(bad.any()):
        i = int(diff.argmax())
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; worst at flat index {i}: "
                             f"{got.reshape(-1)[i].item()!r} vs {want.reshape(-1)[i].item()!r} "
                             f"(|diff| {diff.reshape(-1)[i].item():.3g})")


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# DeepCTR-Torch: small models of the zoo and a batch laid out as its models read X


DEEPCTR_MODELS = ("DeepFM", "DCN", "DCN-matrix", "DCNMix", "xDeepFM", "AutoInt", "DIN", "DIN-sigmoid")


def deepctr_columns(n_sparse: int = 5, n_dense: int = 3, vocab: int = 40, dim: int = 8):
    from deepctr_torch.inputs import DenseFeat, SparseFeat

    sparse = [SparseFeat(f"C{i}", vocab + 3 * i, embedding_dim=dim) for i in range(n_sparse)]
    return sparse + [DenseFeat(f"I{i}", 1) for i in range(n_dense)]


def deepctr_din_columns(vocab: int = 30, dim: int = 8, maxlen: int = 6):
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat

    cols = [SparseFeat("user", 20, embedding_dim=dim), SparseFeat("gender", 2, embedding_dim=dim),
            SparseFeat("item_id", vocab, embedding_dim=dim), SparseFeat("cate_id", 7, embedding_dim=dim),
            DenseFeat("pay_score", 1)]
    cols += [VarLenSparseFeat(SparseFeat("hist_item_id", vocab, embedding_dim=dim, embedding_name="item_id"),
                              maxlen=maxlen, length_name="seq_length"),
             VarLenSparseFeat(SparseFeat("hist_cate_id", 7, embedding_dim=dim, embedding_name="cate_id"),
                              maxlen=maxlen, length_name="seq_length")]
    return cols


def deepctr_model(name: str, seed: int = 0, **kw):
    import deepctr_torch.models as zoo

    torch.manual_seed(seed)
    small = dict(dnn_hidden_units=(32, 16), seed=seed)
    if name.startswith("DIN"):
        cols = deepctr_din_columns()
        att = "sigmoid" if name == "DIN-sigmoid" else "Dice"
        model = zoo.DIN(cols, ["item_id", "cate_id"], att_hidden_size=(16, 8), att_activation=att, **small, **kw)
    else:
        cols = deepctr_columns()
        build = {"DeepFM": lambda: zoo.DeepFM(cols, cols, **small, **kw),
                 "DCN": lambda: zoo.DCN(cols, cols, cross_num=2, **small, **kw),
                 "DCN-matrix": lambda: zoo.DCN(cols, cols, cross_num=2, cross_parameterization="matrix", **small, **kw),
                 "DCNMix": lambda: zoo.DCNMix(cols, cols, cross_num=2, low_rank=4, num_experts=3, **small, **kw),
                 "xDeepFM": lambda: zoo.xDeepFM(cols, cols, cin_layer_size=(8, 6), **small, **kw),
                 "AutoInt": lambda: zoo.AutoInt(cols, cols, att_layer_num=2, att_head_num=2, **small, **kw)}
        model = build[name]()
    # DeepCTR starts embeddings at N(0, 1e-4): every interaction would be ~1e-8 and compare as equal
    # whatever it computed. Larger weights make the comparison mean something.
    # Its DNN weights start at N(0, 1e-4) too: give those Linears their usual 1/sqrt(fan_in) scale.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "embedding_dict" in n:
                p.normal_(0, 0.3)
            elif p.dim() == 2 and any(k in n for k in ("linears", "dnn_linear", "dense")):
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def deepctr_batch(model, B: int = 32, seed: int = 1, zero_length: bool = True):
    """(X [B, columns] as the model's forward reads it, y [B]) in feature_index order."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat

    g = torch.Generator().manual_seed(seed)
    cols = {}
    for fc in model.dnn_feature_columns + getattr(model.linear_model, "sparse_feature_columns", []):
        cols[fc.name] = fc
    X = torch.zeros(B, max(e for _, e in model.feature_index.values()))
    lengths = torch.randint(0, 7, (B,), generator=g)
    if not zero_length:
        lengths.clamp_(min=1)
    for name, (a, b) in model.feature_index.items():
        fc = cols.get(name)
        if isinstance(fc, SparseFeat):
            X[:, a] = torch.randint(0, fc.vocabulary_size, (B,), generator=g).float()
        elif isinstance(fc, VarLenSparseFeat):
            ids = torch.randint(1, fc.vocabulary_size, (B, b - a), generator=g)
            ids[torch.arange(b - a)[None, :] >= lengths[:, None]] = 0
            X[:, a:b] = ids.float()
        elif isinstance(fc, DenseFeat):
            X[:, a:b] = torch.rand(B, b - a, generator=g)
        elif name == "seq_length":
            X[:, a] = lengths.float()
    y = torch.randint(0, 2, (B,), generator=g).float()
    return X, y


def deepctr_arrays(model, X):
    """X as the dict of numpy arrays model.fit / predict take."""
    return {name: X[:, a:b].numpy() if b - a > 1 else X[:, a].numpy() for name, (a, b) in model.feature_index.items()}


# ---------------------------------------------------------------------------------------------
# TorchRec: DLRM, DLRM_DCN and SimpleDeepFMNN on a small EmbeddingBagCollection


TORCHREC_MODELS = ("DLRM", "DLRM_DCN", "SimpleDeepFMNN")
TORCHREC_TABLES = [("t0", 30), ("t1", 17), ("t2", 45), ("t3", 8)]


def torchrec_ebc(dim: int = 8, pooling: str = "SUM", tables=TORCHREC_TABLES):
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    cfgs = [EmbeddingBagConfig(name=n, embedding_dim=dim, num_embeddings=rows, feature_names=[f"f_{n}"],
                               pooling=getattr(PoolingType, pooling)) for n, rows in tables]
    return EmbeddingBagCollection(tables=cfgs, device=torch.device("cpu"))


def torchrec_model(name: str, seed: int = 0, dim: int = 8, dense_in: int = 5):
    from torchrec.models.deepfm import SimpleDeepFMNN
    from torchrec.models.dlrm import DLRM, DLRM_DCN

    torch.manual_seed(seed)
    ebc = torchrec_ebc(dim)
    if name == "DLRM":
        return DLRM(ebc, dense_in_features=dense_in, dense_arch_layer_sizes=[16, dim], over_arch_layer_sizes=[16, 1])
    if name == "DLRM_DCN":
        return DLRM_DCN(ebc, dense_in_features=dense_in, dense_arch_layer_sizes=[16, dim],
                        over_arch_layer_sizes=[16, 1], dcn_num_layers=2, dcn_low_rank_dim=4)
    return SimpleDeepFMNN(num_dense_features=dense_in, embedding_bag_collection=ebc, hidden_layer_size=16,
                          deep_fm_dimension=6)


def torchrec_kjt(B: int = 16, seed: int = 1, tables=TORCHREC_TABLES, keys=None, weighted: bool = False):
    """A KeyedJaggedTensor of 0-4 ids per bag (empty bags included) for the tables' features."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed)
    rows = dict(tables)
    keys = keys or [f"f_{n}" for n, _ in tables]
    lengths = torch.randint(0, 5, (len(keys) * B,), generator=g)
    values = torch.cat([torch.randint(0, rows[k[2:]], (int(n),), generator=g)
                        for i, k in enumerate(keys) for n in lengths[i * B:(i + 1) * B]])
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths, weights=weights)


def torchrec_batch(B: int = 16, seed: int = 1, dense_in: int = 5):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.rand(B, dense_in, generator=g), torchrec_kjt(B, seed), torch.randint(0, 2, (B,), generator=g).float()


# ---------------------------------------------------------------------------------------------
# torch-rechub: DeepFM, DCNv2 (mixture and full rank), DIN, MMOE; batches are {feature: tensor}


RECHUB_MODELS = ("DeepFM", "DCNv2", "DCNv2-mix", "DIN", "MMOE")
_RECHUB_VOCAB = [23, 40, 17, 9, 31]


def rechub_features(dim: int = 8):
    from torch_rechub.basic.features import DenseFeature, SparseFeature

    sparse = [SparseFeature(f"C{i}", v, embed_dim=dim) for i, v in enumerate(_RECHUB_VOCAB)]
    return sparse, [DenseFeature(f"I{i}") for i in range(3)]


def rechub_model(name: str, seed: int = 0, dim: int = 8):
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE
    from torch_rechub.models.ranking import DCNv2, DIN, DeepFM

    torch.manual_seed(seed)
    sparse, dense = rechub_features(dim)
    mlp = {"dims": [16, 8], "dropout": 0.0, "activation": "relu"}
    if name == "DeepFM":
        model = DeepFM(deep_features=sparse + dense, fm_features=sparse, mlp_params=mlp)
    elif name.startswith("DCNv2"):
        model = DCNv2(sparse + dense, n_cross_layers=2, mlp_params=mlp, model_structure="parallel",
                      use_low_rank_mixture=name == "DCNv2-mix", low_rank=4, num_experts=3)
    elif name == "DIN":
        target = [SparseFeature("item", 30, embed_dim=dim), SparseFeature("cate", 7, embed_dim=dim)]
        hist = [SequenceFeature("hist_item", 30, embed_dim=dim, pooling="concat", shared_with="item"),
                SequenceFeature("hist_cate", 7, embed_dim=dim, pooling="concat", shared_with="cate")]
        model = DIN(features=sparse, history_features=hist, target_features=target,
                    mlp_params={"dims": [16, 8], "dropout": 0.0},
                    attention_mlp_params={"dims": [12, 6], "activation": "dice", "use_softmax": False})
    else:
        model = MMOE(sparse + dense, task_types=["classification", "classification"], n_expert=3,
                     expert_params={"dims": [16]}, tower_params_list=[{"dims": [8]}, {"dims": [8]}])
    with torch.no_grad():  # rechub starts tables at N(0, 1e-4): see deepctr_model
        for n, p in model.named_parameters():
            if "embed_dict" in n:
                p.normal_(0, 0.3)
    return model


def rechub_batch(B: int = 24, seed: int = 1, L: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = {f"C{i}": torch.randint(0, v, (B,), generator=g) for i, v in enumerate(_RECHUB_VOCAB)}
    x.update({f"I{i}": torch.rand(B, generator=g) for i in range(3)})
    x["item"], x["cate"] = torch.randint(0, 30, (B,), generator=g), torch.randint(0, 7, (B,), generator=g)
    x["hist_item"], x["hist_cate"] = torch.randint(0, 30, (B, L), generator=g), torch.randint(0, 7, (B, L), generator=g)
    y = torch.randint(0, 2, (B,), generator=g).float()
    return x, y


# ---------------------------------------------------------------------------------------------
# backends


BACKENDS = ["reference", "cpp", "triton"]


def batch_size(backend: str, default: int) -> int:
    """Triton runs under its interpreter here (about 0.5 ms a program): a batch of 4 keeps the grids
    tiny. On a GPU machine Triton serves CUDA tensors, not these CPU models: tests/patch/test_gpu.py."""
    if backend == "triton":
        from rankops import backend as _backend

        why = _backend.why_unavailable("triton", "cpu")
        if why:
            pytest.skip(f"triton on CPU tensors: {why} (the CUDA run is tests/patch/test_gpu.py)")
        return 4
    return default
