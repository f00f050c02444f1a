"""Synthetic click data with planted structure: the built-in default data set.

Each of ``num_fields`` categorical fields draws ids from a Zipf-like distribution over its
vocabulary. The true click probability is a factorization machine over hidden per-id vectors:
``p = sigmoid(bias + sum_f w[id_f] + sum_{i<j} <v[id_i], v[id_j]>)``. A model that learns pairwise
interactions can approach the planted model's own AUC (reported as ``oracle_auc``); one that
cannot stays well below it, so the data tells interaction layers apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SyntheticCTR:
    ids: torch.Tensor  # [N, F] int64, ids local to each field
    labels: torch.Tensor  # [N] float32 in {0, 1}
    probs: torch.Tensor  # [N] the planted click probability
    vocab_sizes: list[int]

    @property
    def num_fields(self) -> int:
        return self.ids.shape[1]

    def split(self, frac: float = 0.8) -> tuple["SyntheticCTR", "SyntheticCTR"]:
        n = int(len(self.labels) * frac)
        cut = lambda s: SyntheticCTR(self.ids[s], self.labels[s], self.probs[s], self.vocab_sizes)  # noqa: E731
        return cut(slice(0, n)), cut(slice(n, None))


def make_ctr(
    num_samples: int = 200_000,
    num_fields: int = 16,
    vocab_size: int = 1000,
    latent_dim: int = 4,
    interaction_scale: float = 1.0,
    seed: int = 0,
) -> SyntheticCTR:
    if num_samples < 1 or num_fields < 2 or vocab_size < 2 or latent_dim < 1:
        raise ValueError("make_ctr: need num_samples >= 1, num_fields >= 2, vocab_size >= 2, latent_dim >= 1")
    g = torch.Generator().manual_seed(seed)
    # Zipf-like popularity: a few ids are frequent, most are rare, as in real logs.
    popularity = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64) ** 1.05
    ids = torch.multinomial(popularity, num_samples * num_fields, replacement=True, generator=g)
    ids = ids.view(num_samples, num_fields)
    w = 0.3 * torch.randn(num_fields, vocab_size, generator=g)
    v = interaction_scale * torch.randn(num_fields, vocab_size, latent_dim, generator=g) / (num_fields * latent_dim) ** 0.5
    fields = torch.arange(num_fields)
    lin = w[fields, ids].sum(1)
    emb = v[fields, ids]  # [N, F, k]
    s = emb.sum(1)
    pair = 0.5 * (s.square() - emb.square().sum(1)).sum(1)
    logit = -1.0 + lin + 2.0 * pair
    probs = torch.sigmoid(logit)
    labels = torch.bernoulli(probs, generator=g)
    return SyntheticCTR(ids, labels.float(), probs.float(), [vocab_size] * num_fields)


def random_batch(schema, batch_size: int, seed: int = 0, max_bag: int = 4) -> "Batch":
    """A batch of uniformly random features and labels that fits ``schema`` (for tests and
    benchmarks: no structure to learn). Multi-hot bags hold 0..max_bag ids, sequences 0..max_len."""
    from rankops.data.batch import Batch

    g = torch.Generator().manual_seed(seed)
    B = batch_size
    feats: dict[str, object] = {}
    for f in schema.dense:
        feats[f.name] = torch.randn(B, f.dim, generator=g)
    for f in schema.sparse:
        if f.multi_hot:
            lengths = torch.randint(0, max_bag + 1, (B,), generator=g)
            feats[f.name] = (torch.randint(0, f.vocab_size, (int(lengths.sum()),), generator=g), lengths)
        else:
            feats[f.name] = torch.randint(0, f.vocab_size, (B,), generator=g)
    for s in schema.sequences:
        vocab = schema.feature(s.target).vocab_size
        lengths = torch.randint(0, s.max_len + 1, (B,), generator=g)
        feats[s.name] = (torch.randint(0, vocab, (B, s.max_len), generator=g), lengths)
    labels = torch.empty(B, schema.num_tasks)
    for t, task in enumerate(schema.tasks):
        labels[:, t] = (torch.rand(B, generator=g) < 0.3).float() if task.kind == "binary" else torch.randn(B, generator=g)
    return Batch.from_features(schema, feats, labels)
