"""rankops.nn.hash_embedding: IdTable (admission, expiry, full policies, compaction) against a plain
Python dict model of the same rules on every backend; CollisionlessIds / CollisionlessEmbeddingBagCollection
remap a KeyedJaggedTensor and re-initialise the rows they hand out again; eval never inserts; state dicts."""

import pytest
import torch

import rankops
from rankops.nn import (CollisionlessEmbeddingBagCollection, CollisionlessIds, EmbeddingBagCollection,
                        EmbeddingBagConfig, HashedIds, IdTable, KeyedJaggedTensor)
from rankops.ops.embedding_bag import FusedOptimizer
from tests.utils import backend_devices, on

BACKENDS = backend_devices("reference", "cpp", "triton")


class DictTable:
    """The rules of IdTable written with dicts, one id at a time: what the hash map must amount to."""

    def __init__(self, capacity, min_count=1, ttl=None, when_full="evict"):
        self.capacity, self.min_count, self.ttl, self.when_full = capacity, min_count, ttl, when_full
        self.row, self.count, self.last = {}, {}, {}
        self.free = list(range(capacity, 0, -1))  # a stack: pop() gives the smallest row
        self.step = 0

    def _forget(self, ids):
        rows = sorted((self.row[i] for i in ids if i in self.row), reverse=True)
        self.free += rows
        for i in ids:
            self.row.pop(i, None)
            self.count.pop(i, None)

    def insert(self, ids):
        self.step += 1
        if self.ttl is not None:
            self._forget([i for i in self.count if self.step - self.last[i] > self.ttl])
        order = list(dict.fromkeys(ids))  # first appearance
        for i in order:
            self.count[i] = min(self.count.get(i, 0) + ids.count(i), self.min_count)
            self.last[i] = self.step
        new = [i for i in order if i not in self.row and self.count[i] >= self.min_count]
        short = len(new) - len(self.free)
        if short > 0:
            if self.when_full == "error":
                raise RuntimeError("full")
            if self.when_full == "evict":
                held = sorted((i for i in self.row if self.last[i] < self.step), key=lambda i: (self.last[i], self.row[i]))
                self._forget(held[:short])
            new = new[:len(self.free)]
        for i in new:
            self.row[i] = self.free.pop()
        return [self.row.get(i, 0) for i in ids]

    def lookup(self, ids):
        return [self.row.get(i, 0) for i in ids]


def _stream(steps, batch, vocab, seed=0):
    """Batches of raw ids: Zipf ranks mapped to random 64-bit ids (repeats within and across batches)."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(-2 ** 63 + 1, 2 ** 63 - 1, (vocab,), generator=g)
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    return [raw[torch.multinomial(p, batch, replacement=True, generator=g)] for _ in range(steps)]


CONFIGS = [dict(capacity=64), dict(capacity=24, min_count=2, slots=256), dict(capacity=40, ttl=2),
           dict(capacity=16, min_count=2, ttl=3, when_full="oov", slots=256), dict(capacity=20, ttl=4, slots=64)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_table_follows_the_dict_model(backend, device, config):
    table = IdTable(**config).to(device)
    model = DictTable(**{k: v for k, v in config.items() if k != "slots"})
    for ids in _stream(12, 48, 150):
        with on(backend, device):
            rows = table.insert(ids.to(device))
        assert rows.cpu().tolist() == model.insert(ids.tolist())
        assert int(table.num_keys) == int((table.keys != rankops.ops.hash_embedding.EMPTY).sum())
        # at every step: an id's row is its own, no two ids on one row
        held = {i: r for i, r in model.row.items()}
        assert len(set(held.values())) == len(held) == len(table)
        probe = torch.tensor(list(held) + [12345], dtype=torch.int64)
        with on(backend, device):
            assert table.lookup(probe.to(device)).cpu().tolist() == model.lookup(probe.tolist())


def test_many_ids_never_share_a_row():
    """100k distinct ids, many colliding under ``id % rows`` and in the hash's low bits."""
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.randint(-2 ** 62, 2 ** 62, (90_000,), generator=g), torch.arange(1, 10_001) * 131_072])
    table = IdTable(100_000)
    rows = torch.cat([table.insert(part) for part in ids.split(8192)])
    assert rows.unique().numel() == ids.unique().numel() == len(table)
    assert bool((rows > 0).all())
    assert torch.equal(table.lookup(ids), rows)
    assert torch.remainder(ids, 100_001).unique().numel() < 0.7 * ids.numel()  # the hashing trick would collide


def test_admission():
    table = IdTable(8, min_count=3)
    a, b = 2 ** 40 + 7, -99
    assert table.insert(torch.tensor([a, b])).tolist() == [0, 0]
    assert table.insert(torch.tensor([a])).tolist() == [0]
    assert table.insert(torch.tensor([a, b])).tolist() == [1, 0]  # a's third sighting admits it
    assert table.insert(torch.tensor([b, b, a])).tolist() == [2, 2, 1]  # b: 2 + 2 sightings
    assert table.lookup(torch.tensor([a, b, 5])).tolist() == [1, 2, 0]


def test_expiry_frees_and_reuses_rows():
    table = IdTable(2, ttl=2)
    assert table.insert(torch.tensor([10, 20])).tolist() == [1, 2]
    table.insert(torch.tensor([10]))  # step 2: 20 last seen at step 1
    table.insert(torch.tensor([10]))  # step 3: 20 unseen for 2 steps, still held
    assert table.lookup(torch.tensor([20])).tolist() == [2]
    assert table.insert(torch.tensor([30])).tolist() == [2]  # step 4: 20 expired, its row goes to 30
    assert table.fresh.tolist() == [2]
    assert table.lookup(torch.tensor([20, 30, 10])).tolist() == [0, 2, 1]


def test_full_policies():
    ids = torch.tensor([1, 2, 3])
    with pytest.raises(RuntimeError, match="when_full='error'"):
        IdTable(2, when_full="error").insert(ids)
    assert IdTable(2, when_full="oov").insert(ids).tolist() == [1, 2, 0]
    lru = IdTable(2)
    lru.insert(torch.tensor([1, 2]))
    lru.insert(torch.tensor([2]))
    assert lru.insert(torch.tensor([3])).tolist() == [1]  # 1 was seen least recently
    with pytest.raises(RuntimeError, match="slots hold live ids"):  # pending ids fill the map
        IdTable(4, min_count=5, slots=16).insert(torch.arange(20))


def test_compaction_keeps_the_map():
    """A churning stream with a ttl: expired keys are dropped when the map fills; rows stay right."""
    table, model = IdTable(32, ttl=1, slots=64), DictTable(32, ttl=1)
    for step, ids in enumerate(_stream(40, 24, 5000, seed=4)):
        assert table.insert(ids).tolist() == model.insert(ids.tolist()), step
    assert int(table.num_keys) == int((table.keys != rankops.ops.hash_embedding.EMPTY).sum()) < 64


def test_eval_never_inserts_and_state_dict_round_trip():
    ids = CollisionlessIds({"user": 50, "item": 30}, min_count=2, ttl=5)
    kjt = lambda u, i: KeyedJaggedTensor(["user", "item", "ctx"], torch.cat([u, i, torch.tensor([3, 4])]),  # noqa: E731
                                         lengths=torch.ones(6, dtype=torch.int64))
    for u, i in zip(_stream(6, 2, 40, seed=2), _stream(6, 2, 20, seed=3)):
        ids(kjt(u, i))
    state = {k: v.clone() for k, v in ids.state_dict().items()}
    ids.eval()
    unseen = ids(kjt(torch.tensor([777, 888]), torch.tensor([999, 2 ** 62])))
    assert unseen.values().tolist() == [0, 0, 0, 0, 3, 4]  # unseen ids read OOV; ctx untouched
    assert all(torch.equal(v, ids.state_dict()[k]) for k, v in state.items())

    again = CollisionlessIds({"user": 50, "item": 30}, min_count=2, ttl=5, slots=16 * 50)  # other slots: resized
    again.load_state_dict(state)
    probe = kjt(*[torch.cat(s) for s in (_stream(6, 2, 40, seed=2)[-1:], _stream(6, 2, 20, seed=3)[-1:])])
    again.eval()
    assert torch.equal(again(probe).values(), ids(probe).values())
    ids.train(), again.train()
    nxt = kjt(torch.tensor([5, 6]), torch.tensor([7, 8]))
    for _ in range(2):
        assert torch.equal(ids(nxt).values(), again(nxt).values())


def test_collisionless_ebc_resets_reused_rows():
    ebc = EmbeddingBagCollection([EmbeddingBagConfig("user", 3, 4)], fused_optimizer=FusedOptimizer("adagrad", 0.5))
    model = CollisionlessEmbeddingBagCollection(ebc, CollisionlessIds({"user": 2}, ttl=1))
    kjt = lambda ids: KeyedJaggedTensor(["user"], torch.tensor(ids), lengths=torch.ones(len(ids), dtype=torch.int64))  # noqa: E731
    model(kjt([11, 22])).sum().backward()  # rows 1, 2 trained: weights and Adagrad sums move
    trained = ebc.table_weight("user")[2].clone()
    assert float(ebc.table_state("user")[2].abs().sum()) > 0
    model(kjt([11])).sum().backward()
    model(kjt([11])).sum().backward()  # 22 expires at the next step (unseen for 2 > ttl)
    out = model(kjt([33]))  # 33 takes row 2 with fresh weights and zero optimizer state
    assert model.ids.tables["user"].fresh.tolist() == [2]
    assert not torch.equal(ebc.table_weight("user")[2], trained)
    assert torch.equal(out[0], ebc.table_weight("user")[2])
    assert float(ebc.table_state("user")[2].abs().sum()) == 0
    assert float(ebc.table_weight("user")[2].abs().max()) <= 3 ** -0.5


def test_hashed_ids_collide():
    kjt = KeyedJaggedTensor(["f"], torch.tensor([5, 15, -5]), lengths=torch.ones(3, dtype=torch.int64))
    assert HashedIds({"f": 10})(kjt).values().tolist() == [5, 5, 5]


def test_bad_input():
    table = IdTable(4)
    for bad in (torch.zeros(3), torch.zeros(2, 2, dtype=torch.int64), torch.zeros(3, dtype=torch.bool)):
        with pytest.raises(ValueError):
            table.insert(bad)
        with pytest.raises(ValueError):
            table.lookup(bad)
    for kw in (dict(capacity=0), dict(capacity=4, min_count=0), dict(capacity=4, ttl=0),
               dict(capacity=4, when_full="drop"), dict(capacity=64, slots=16)):
        with pytest.raises(ValueError):
            IdTable(**kw)
    ebc = EmbeddingBagCollection([EmbeddingBagConfig("user", 4, 4)])
    with pytest.raises(ValueError, match="capacity \\+ 1"):
        CollisionlessEmbeddingBagCollection(ebc, CollisionlessIds({"user": 4}))


def test_kjt_with_float_ids_raises():
    kjt = KeyedJaggedTensor(["user"], torch.tensor([1.0, 2.0]), lengths=torch.ones(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        CollisionlessIds({"user": 4})(kjt)
    with pytest.raises(ValueError, match="missing"):
        CollisionlessIds({"item": 4})(kjt)
