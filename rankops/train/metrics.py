"""Ranking metrics."""

from __future__ import annotations

import torch


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, with ties averaged."""
    scores, labels = scores.detach().double().flatten().cpu(), labels.detach().double().flatten().cpu()
    pos = labels.sum().item()
    neg = labels.numel() - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    s = scores[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    # average the ranks of tied scores
    uniq, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    if len(uniq) < len(s):
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.arange(1, len(s) + 1, dtype=torch.float64))
        ranks[order] = (sums / counts)[inverse]
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def logloss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    p = probs.detach().double().clamp(1e-7, 1 - 1e-7)
    y = labels.detach().double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def group_auc(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> float:
    """Group AUC (Zhou et al., DIN): the AUC of each group (user) with both classes, averaged with
    weights = the group's number of samples."""
    scores, labels, groups = scores.detach().flatten().cpu(), labels.detach().flatten().cpu(), groups.flatten().cpu()
    order = torch.argsort(groups, stable=True)
    g, s, y = groups[order], scores[order], labels[order]
    _, counts = torch.unique_consecutive(g, return_counts=True)
    total = weight = 0.0
    at = 0
    for c in counts.tolist():
        ys = y[at:at + c]
        pos = float(ys.sum())
        if 0 < pos < c:
            total += c * auc(s[at:at + c], ys)
            weight += c
        at += c
    return total / weight if weight else float("nan")


def calibration(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Predicted over observed positive rate (1.0 is calibrated)."""
    observed = float(labels.detach().double().mean())
    return float(probs.detach().double().mean()) / observed if observed > 0 else float("nan")


def task_metrics(preds: torch.Tensor, labels: torch.Tensor, tasks, groups: torch.Tensor | None = None) -> dict:
    """``{"<task>/<metric>": value}`` for every task: auc, logloss, calibration (and gauc with
    ``groups``) for binary tasks; mse for regression ones."""
    out = {}
    for t, task in enumerate(tasks):
        p, y = preds[:, t], labels[:, t]
        if task.kind == "binary":
            out[f"{task.name}/auc"] = auc(p, y)
            out[f"{task.name}/logloss"] = logloss(p, y)
            out[f"{task.name}/calibration"] = calibration(p, y)
            if groups is not None:
                out[f"{task.name}/gauc"] = group_auc(p, y, groups)
        else:
            out[f"{task.name}/mse"] = float((p.double() - y.double()).square().mean())
    return out
