"""hash_embedding family (hash_insert, hash_lookup): every backend against the reference on the map
it builds; one slot per id and one id per slot, with ids chosen to collide in the hash; lookups never
insert; a full map; op registration; bad ids."""

import pytest
import torch

import rankops
from rankops.ops.hash_embedding import EMPTY, hash_insert, hash_lookup, home_slots, reference, splitmix64
from tests.utils import backend_devices, on

BACKENDS = backend_devices("reference", "cpp", "triton")


def _colliding(num_slots: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` distinct raw ids that share one home slot in a map of ``num_slots`` slots."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randint(-2 ** 63 + 1, 2 ** 63 - 1, (count * num_slots * 4,), generator=g).unique()
    home = home_slots(pool, num_slots)
    busiest = torch.bincount(home, minlength=num_slots).argmax()
    same = pool[home == busiest]
    assert same.numel() >= count
    return same[:count]


def _ids(seed: int = 0) -> torch.Tensor:
    """Raw ids with repeats: random 64-bit ids, ids colliding in the hash, multiples of the slot
    count (which collide under ``id % slots``), the extremes, negatives."""
    g = torch.Generator().manual_seed(seed)
    rand = torch.randint(-2 ** 63 + 1, 2 ** 63 - 1, (300,), generator=g)
    extremes = torch.tensor([-2 ** 63 + 1, 2 ** 63 - 1, 0, -1, 1])
    ids = torch.cat([rand, _colliding(1024, 48), torch.arange(1, 41) * 1024, extremes])
    return torch.cat([ids, ids[torch.randint(0, ids.numel(), (200,), generator=g)]])  # repeats


def _check_map(keys: torch.Tensor, ids: torch.Tensor, slots: torch.Tensor) -> None:
    assert bool((slots >= 0).all())
    assert torch.equal(keys[slots], ids), "an id's slot must hold that id"
    uniq = ids.unique()
    assert (keys != EMPTY).sum() == uniq.numel()
    # distinct ids, distinct slots; equal ids, equal slots
    pairs = torch.unique(torch.stack([ids, slots]), dim=1)
    assert pairs.shape[1] == uniq.numel() == slots.unique().numel()


def test_hash_matches_python():
    ids = _ids()
    assert splitmix64(ids).tolist() == [(reference.splitmix64(i) ^ 2 ** 63) - 2 ** 63 for i in ids.tolist()]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_insert_one_slot_per_id(backend, device):
    ids = _ids().to(device)
    keys = torch.full((1024,), EMPTY, dtype=torch.int64, device=device)
    with on(backend, device):
        slots = hash_insert(keys, ids)
        again = hash_insert(keys, ids.flip(0))  # the same ids, in another order, find the same slots
        looked = hash_lookup(keys, ids)
    _check_map(keys.cpu(), ids.cpu(), slots.cpu())
    assert torch.equal(again.flip(0), slots) and torch.equal(looked, slots)
    # the reference builds a map with the same ids (parallel backends may order collisions differently)
    ref_keys = torch.full((1024,), EMPTY, dtype=torch.int64)
    reference.hash_insert(ref_keys, ids.cpu())
    assert torch.equal(ref_keys.sort().values, keys.cpu().sort().values)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_colliding_ids_probe_in_order(backend, device):
    """Ids sharing a home slot take the slots after it, one each, in a sequential insert the reference's."""
    ids = _colliding(256, 40, seed=3).to(device)
    keys = torch.full((256,), EMPTY, dtype=torch.int64, device=device)
    with on(backend, device):
        slots = torch.cat([hash_insert(keys, ids[i:i + 1]) for i in range(ids.numel())])
    home = int(home_slots(ids[:1].cpu(), 256))
    assert slots.cpu().tolist() == [(home + i) % 256 for i in range(40)]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_lookup_never_inserts(backend, device):
    ids = _ids(1).to(device)
    keys = torch.full((1024,), EMPTY, dtype=torch.int64, device=device)
    with on(backend, device):
        hash_insert(keys, ids[:100])
        before = keys.clone()
        slots = hash_lookup(keys, ids)
    assert torch.equal(keys, before)
    present = torch.isin(ids, ids[:100])
    assert bool((slots[~present] == -1).all()) and bool((slots[present] >= 0).all())
    assert torch.equal(keys[slots[present]], ids[present])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_full_map(backend, device):
    """16 slots, 20 distinct ids: 16 get slots of their own, 4 get -1, and a lookup of those stays -1."""
    ids = torch.randint(0, 2 ** 62, (20,), generator=torch.Generator().manual_seed(5)).to(device)
    keys = torch.full((16,), EMPTY, dtype=torch.int64, device=device)
    with on(backend, device):
        slots = hash_insert(keys, ids)
        looked = hash_lookup(keys, ids)
    ok = slots >= 0
    assert int(ok.sum()) == 16 and slots[ok].unique().numel() == 16
    assert torch.equal(keys[slots[ok]], ids[ok])
    assert torch.equal(looked, slots)


def test_empty_batch():
    keys = torch.full((16,), EMPTY, dtype=torch.int64)
    for b in ("reference", "cpp"):
        with rankops.use_backend(b):
            assert hash_insert(keys, torch.zeros(0, dtype=torch.int64)).shape == (0,)


def test_custom_ops_registered():
    keys = torch.full((64,), EMPTY, dtype=torch.int64)
    ids = torch.tensor([3, -7, 3, 2 ** 40], dtype=torch.int64)
    with rankops.use_backend("cpp"):
        torch.library.opcheck(torch.ops.rankops.hash_insert.default, (keys, ids))
        torch.library.opcheck(torch.ops.rankops.hash_lookup.default, (keys, ids))
        compiled = torch.compile(lambda k, i: hash_lookup(k, i) + 1, fullgraph=True, backend="eager")
        assert torch.equal(compiled(keys, ids), hash_lookup(keys, ids) + 1)


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(4), "int64"), (torch.zeros(4, dtype=torch.bool), "int64"), (torch.zeros(2, 2, dtype=torch.int64), "1-D"),
    (torch.tensor([1, -2 ** 63]), "reserved"), ([1, 2], "torch.Tensor")])
def test_bad_ids(bad, match):
    keys = torch.full((16,), EMPTY, dtype=torch.int64)
    for op in (hash_insert, hash_lookup):
        with pytest.raises(ValueError, match=match):
            op(keys, bad)


def test_bad_keys():
    ids = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="power of two"):
        hash_insert(torch.full((12,), EMPTY, dtype=torch.int64), ids)
    with pytest.raises(ValueError, match="keys"):
        hash_insert(torch.zeros(16, dtype=torch.int32), ids)


def test_int32_ids_widened():
    keys = torch.full((16,), EMPTY, dtype=torch.int64)
    slots = hash_insert(keys, torch.tensor([5, 6], dtype=torch.int32))
    assert torch.equal(hash_lookup(keys, torch.tensor([5, 6])), slots)


def test_triton_kernel_compiles_for_hopper_without_spills():
    """Ahead-of-time compile of both probe variants for sm_90a (the interpreter accepts kernels a real
    compile rejects): ptxas reports no spills. In a subprocess, without TRITON_INTERPRET."""
    import os
    import subprocess
    import sys

    code = """
import os, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from rankops.ops.hash_embedding.triton import aot_specs
ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
for s in aot_specs():
    src = triton.compiler.ASTSource(fn=s["fn"], signature=s["signature"], constexprs=s["constexprs"], attrs=s["attrs"])
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=s["num_warps"]))
    path = tempfile.mktemp(suffix=".ptx")
    open(path, "w").write(k.asm["ptx"])
    out = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", path, "-o", os.devnull], capture_output=True,
                         text=True, check=True).stderr
    print(s["config"], "no spills" if "0 bytes spill stores, 0 bytes spill loads" in out else out)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("no spills") == 2, out.stdout
