"""Every recipe, as every zoo model, runs under torch.compile(fullgraph=True) and matches eager."""

import pytest
import torch

from rankops.models import recipes
from tests.recipes.common import build, planted_draw, recipe_yaml


@pytest.mark.parametrize("name", recipes.names())
def test_compile_fullgraph_matches_eager(name):
    cfg = recipe_yaml(name)
    data = planted_draw(cfg, 200)
    data = getattr(data, "train", data)
    model = build(cfg, data.schema).eval()
    batch = next(iter(data.batches(64)))
    torch._dynamo.reset()  # recipes share layers' forwards: start each from a clean cache
    with torch.no_grad():
        eager = model(batch)
        compiled = torch.compile(model, fullgraph=True)(batch)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
