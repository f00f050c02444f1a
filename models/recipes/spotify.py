"""Spotify, multi-task learning over graph-based inductive representations (Saravanou et al.,
ISMIR 2021): precomputed node / content embeddings enter as dense vector features (``DenseFeature``
of ``dim`` numbers, not ids), beside the id embeddings, into MMoE experts with one tower per task.
Items the model never saw are scored from their vectors: the representation is inductive.

Planted data: ``dense_vectors`` (``rankops.data.synthetic_mtl.make_dense_vectors``).
"""

from ..ranker import Ranker, needs_tasks, preset

DEFAULTS = dict(towers="mmoe", num_experts=4, expert_hidden_units=(64, 32), tower_hidden_units=(16,))


def build(schema, **config) -> Ranker:
    def requires(s):
        if not any(f.dim > 1 for f in s.dense):
            return ("reads precomputed vector features (dense: [{name: item_vec, dim: 32}]); the schema has "
                    f"no dense feature of dim > 1 ({[(f.name, f.dim) for f in s.dense]})")
        return needs_tasks(2)(s)

    return preset("spotify", schema, DEFAULTS, config, requires)
