"""Feature schema, batches, data sets and readers (Criteo TSV, CSV / Parquet, UCI Adult, synthetic)."""

from rankops.data.batch import Batch
from rankops.data.dataset import Dataset, InMemoryDataset
from rankops.data.schema import DenseFeature, Schema, SequenceFeature, SparseFeature, Task

__all__ = ["Batch", "Dataset", "DenseFeature", "InMemoryDataset", "Schema", "SequenceFeature", "SparseFeature", "Task"]
