"""A short demo on the built-in synthetic data: a DeepFM-style model (embeddings -> FM +
linear + MLP) trained with rankops' fused FM layer, checked against the planted model's AUC,
then the same training step timed with each backend available here.

    python -m rankops.demo [--samples N] [--epochs E]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

import rankops
from rankops.data.synthetic import make_ctr
from rankops.nn import FactorizationMachine
from rankops.train.metrics import auc, logloss

try:
    from tqdm import tqdm
except ImportError:  # progress bars are a nicety
    tqdm = None


class DeepFMLite(nn.Module):
    def __init__(self, num_fields: int, vocab_size: int, dim: int = 16):
        super().__init__()
        self.offsets = nn.Buffer(torch.arange(num_fields) * vocab_size)
        self.embedding = nn.Embedding(num_fields * vocab_size, dim)
        self.linear = nn.Embedding(num_fields * vocab_size, 1)
        nn.init.normal_(self.embedding.weight, std=0.01)
        nn.init.zeros_(self.linear.weight)
        self.fm = FactorizationMachine()
        self.mlp = nn.Sequential(nn.Linear(num_fields * dim, 64), nn.ReLU(), nn.Linear(64, 1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids + self.offsets
        x = self.embedding(flat)  # [B, F, D]
        logit = self.bias + self.linear(flat).sum(1) + self.fm(x) + self.mlp(x.flatten(1))
        return logit.squeeze(1)


def train(data, epochs: int, batch_size: int, lr: float, seed: int = 0):
    torch.manual_seed(seed)
    train_set, test_set = data.split(0.8)
    model = DeepFMLite(data.num_fields, data.vocab_sizes[0])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    n = len(train_set.labels)
    for epoch in range(epochs):
        perm = torch.randperm(n)
        batches = range(0, n, batch_size)
        show = tqdm is not None and sys.stderr.isatty()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False) if show else batches
        for start in bar:
            idx = perm[start : start + batch_size]
            loss = loss_fn(model(train_set.ids[idx]), train_set.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            p = torch.sigmoid(model(test_set.ids))
        print(f"epoch {epoch + 1}: test AUC {auc(p, test_set.labels):.4f}  logloss {logloss(p, test_set.labels):.4f}")
    return model, test_set


def time_steps(data, backends: list[str], batch_size: int, reps: int = 30) -> dict[str, float]:
    """Median ms of a training step per backend: one model each (same initial weights), the
    backends taking turns step by step so that machine noise hits them alike."""
    ids, y = data.ids[:batch_size], data.labels[:batch_size]
    runs = {}
    for b in backends:
        torch.manual_seed(0)
        model = DeepFMLite(data.num_fields, data.vocab_sizes[0])
        runs[b] = (model, torch.optim.SGD(model.parameters(), lr=0.01), [])
    for i in range(reps + 5):
        for b, (model, opt, times) in runs.items():
            with rankops.use_backend(b):
                t0 = time.perf_counter()
                loss = nn.functional.binary_cross_entropy_with_logits(model(ids), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i >= 5:
                    times.append(time.perf_counter() - t0)
    return {b: sorted(t)[len(t) // 2] * 1e3 for b, (_, _, t) in runs.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=100, help="ids per field")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args(argv)

    rankops.info()
    data = make_ctr(num_samples=args.samples, vocab_size=args.vocab)
    _, test_set = data.split(0.8)
    print(f"\nsynthetic CTR: {args.samples} samples, {data.num_fields} fields, click rate {data.labels.mean():.3f}, "
          f"planted-model (oracle) test AUC {auc(test_set.probs, test_set.labels):.4f}")
    train(data, args.epochs, args.batch_size, args.lr)

    print("\ntraining step of the same model (only the FM term changes backend), median ms (B=4096):")
    backends = ["reference"] + [b for b in ("cpp", "cuda", "triton") if rankops.backend.why_unavailable(b, "cpu") is None
                                and not rankops.backend.triton_interpreting()]
    ms = time_steps(data, backends, 4096)
    for b in backends:
        print(f"  {b:9s}  {ms[b]:7.2f} ms  ({ms['reference'] / ms[b]:.2f}x)")


if __name__ == "__main__":
    main()
