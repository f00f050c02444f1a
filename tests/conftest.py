"""Test set-up: without a GPU, Triton kernels run under the interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton is first imported; rankops imports triton lazily, so
setting it here (before any test module runs) is early enough.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: runs in the GPU suite (bash scripts/gpu_suite.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
