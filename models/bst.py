"""BST (Chen et al., DLP-KDD 2019): a transformer over [candidate, behaviour sequence] with learned
positions; the candidate's output joins the DNN's input."""

from .ranker import Ranker, needs_sequence, preset

DEFAULTS = dict(sequence_pooling="transformer", att_heads=2)


def build(schema, **config) -> Ranker:
    return preset("bst", schema, DEFAULTS, config, needs_sequence)
