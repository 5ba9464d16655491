"""The shard layout of the vector store (adapters/vectors.py), on a real embedded Chroma, with random
vectors and no model: which shard an id lives in, that a purge rebuilds only the shards that had a
deletion (also after a reopen), that an erased vector's bytes leave every file, that a search asking every
shard for all it holds gives one collection's exact ranking (a smaller top k is HNSW's approximate answer),
and that a store from before the layout is split without losing a vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from personavlm_cli.adapters import vectors as vmod
from personavlm_cli.adapters.vectors import VectorIndex
from personavlm_cli.core.errors import StoreError

DIM = 384


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(index: VectorIndex, vecs: np.ndarray, start: int = 0, batch: int = 64, name: str = "memories") -> list[str]:
    ids = [f"m_{i:05d}" for i in range(start, start + len(vecs))]
    for k in range(0, len(ids), batch):
        index.upsert(name, ids[k:k + batch], vecs[k:k + batch],
                     metadatas=[{"type": "turn" if (start + k + j) % 2 else "semantic", "current": True}
                                for j in range(len(ids[k:k + batch]))])
    return ids


def collection_ids(index: VectorIndex, name: str = "memories") -> list[str]:
    """Chroma's own id of each shard's collection: a rebuilt shard gets a new one."""
    return [str(c.id) for c in index._shards(name)]


def files_holding(root: Path, vector: np.ndarray) -> list[str]:
    """Files under ``root`` holding ``vector`` as float32 at any byte alignment (first 16 components, to
    1e-5: Chroma's HNSW stores the normalised form, which may differ in the last bit)."""
    hits = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for off in range(4):
            usable = (len(data) - off) // 4
            if usable < 16:
                continue
            arr = np.frombuffer(data, dtype=np.float32, count=usable, offset=off)
            with np.errstate(invalid="ignore", over="ignore"):
                starts = np.flatnonzero(np.abs(arr - vector[0]) <= 1e-5 * max(abs(float(vector[0])), 1e-3))
            if any(at + 16 <= len(arr) and np.allclose(arr[at:at + 16], vector[:16], rtol=1e-5, atol=1e-7)
                   for at in starts):
                hits.append(str(path.relative_to(root)))
                break
    return hits


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(vmod, "SHARD_SIZE", 50)


def test_new_ids_fill_the_last_shard_then_a_new_one_and_an_update_stays_in_its_shard(tmp_path, small_shards):
    rng = np.random.default_rng(1)
    index = VectorIndex(path=tmp_path / "chroma")
    ids = fill(index, unit(rng, 120), batch=35)
    assert [index.shard_of("memories", i) for i in (ids[0], ids[49], ids[50], ids[99], ids[100], ids[119])] == \
        [0, 0, 1, 1, 2, 2]
    assert [c.count() for c in index._shards("memories")] == [50, 50, 20]
    names = sorted(c.name for c in index.client.list_collections())
    assert names == ["memories", "memories_1", "memories_2"], "shard 0 keeps the collection's name"

    new = unit(rng, 1)
    index.upsert("memories", [ids[7], "m_new"], np.vstack([new, new]))
    assert index.shard_of("memories", ids[7]) == 0, "an update is written where the id lives"
    assert index.shard_of("memories", "m_new") == 2
    assert index.count("memories") == 121 and index.ids("memories") == {*ids, "m_new"}
    assert np.allclose(index.get_embeddings("memories", [ids[7]])[ids[7]], new[0], atol=1e-6)

    reopened = VectorIndex(path=tmp_path / "chroma")
    assert reopened.shard_of("memories", ids[119]) == 2 and reopened.count("memories") == 121


def test_a_purge_rebuilds_only_the_shards_that_had_a_deletion_also_after_a_reopen(tmp_path, small_shards):
    rng = np.random.default_rng(2)
    index = VectorIndex(path=tmp_path / "chroma")
    ids = fill(index, unit(rng, 140))
    before = collection_ids(index)
    assert index.dirty_shards("memories") == []

    index.delete("memories", [ids[60]])
    assert index.dirty_shards("memories") == [1]
    index.purge(["memories"])
    after = collection_ids(index)
    assert [a != b for a, b in zip(before, after)] == [False, True, False], "only shard 1 was rebuilt"
    assert index.dirty_shards("memories") == [] and index.count("memories") == 139

    # Deleted without a purge (the update stage), then the process ends: the mark outlives it, and a
    # delete in a new process marks its shard too; the next purge rebuilds both and nothing else.
    index.delete("memories", [ids[10]])
    again = VectorIndex(path=tmp_path / "chroma")
    again.delete("memories", [ids[130], "m_unknown"])
    assert again.dirty_shards("memories") == [0, 2]
    mid = collection_ids(again)
    again.purge(["memories"])
    assert [a != b for a, b in zip(mid, collection_ids(again))] == [True, False, True]
    assert again.ids("memories") == set(ids) - {ids[60], ids[10], ids[130]}

    # A delete that finds nothing (a replayed job whose vectors are already gone) marks nothing.
    again.delete("memories", [ids[60]])
    assert again.dirty_shards("memories") == []


def test_an_emptied_last_shard_is_dropped_and_the_next_ids_fill_the_shard_before_it(tmp_path, small_shards):
    rng = np.random.default_rng(3)
    index = VectorIndex(path=tmp_path / "chroma")
    ids = fill(index, unit(rng, 110))
    index.delete("memories", ids[50:])
    index.purge(["memories"])
    assert [c.count() for c in index._shards("memories")] == [50], "shards 1 and 2 were emptied and dropped"
    assert sorted(c.name for c in index.client.list_collections()) == ["memories", "memories_dirty"]
    fill(index, unit(rng, 5), start=500)
    assert index.shard_of("memories", "m_00500") == 1
    index.delete("memories", ids)
    index.purge(["memories"])
    assert [c.count() for c in VectorIndex(path=tmp_path / "chroma")._shards("memories")] == [0, 5]


def test_an_erased_vector_leaves_every_file_and_the_other_shards_are_untouched(tmp_path, monkeypatch):
    # Shards past Chroma's HNSW sync threshold (1000), so that their index files are on disk too.
    monkeypatch.setattr(vmod, "SHARD_SIZE", 1100)
    rng = np.random.default_rng(4)
    root = tmp_path / "chroma"
    index = VectorIndex(path=root)
    vecs = unit(rng, 2300)
    ids = fill(index, vecs, batch=500)
    erased, kept_same_shard, kept_other = 1500, 1501, 20
    assert index.shard_of("memories", ids[erased]) == 1 and index.shard_of("memories", ids[kept_other]) == 0
    held = files_holding(root, vecs[erased])
    assert "chroma.sqlite3" in held and any("/" in h for h in held), f"in the log and an index file: {held}"
    first = collection_ids(index)[0]

    index.delete("memories", [ids[erased]])
    assert files_holding(root, vecs[erased]), "a deletion alone only marks (why the purge exists)"
    index.purge(["memories"])
    assert files_holding(root, vecs[erased]) == [], "the erased vector is in no file of the store"
    assert files_holding(root, vecs[kept_same_shard]) and files_holding(root, vecs[kept_other])
    assert collection_ids(index)[0] == first, "shard 0 was not rebuilt"
    hits = VectorIndex(path=root).query("memories", vecs[kept_same_shard], 3000)  # all it holds: exact
    assert hits[0][0] == ids[kept_same_shard] and hits[0][1] > 0.999
    assert ids[erased] not in {i for i, _ in VectorIndex(path=root).query("memories", vecs[erased], 50)}


def test_search_over_shards_gives_what_one_collection_gives(tmp_path, monkeypatch):
    """What is guaranteed (adapters/vectors.py): a shard asked for at least all it holds is read whole and
    ranked exactly, so a search that asks every shard for all it holds gives the exact ranking, sharded or
    not; a smaller ``k`` is HNSW's answer (ef_search 200), which may miss a node of a small graph: there the
    test asserts only what holds whatever HNSW does (true scores, best first, the share asked again)."""
    rng = np.random.default_rng(5)
    vecs = unit(rng, 600)
    # 40 near copies of one vector, all written to the first shard: a query near them finds its whole
    # top 30 in one shard, more than the share each shard is asked for first.
    vecs[:40] = vecs[0] + 0.05 * unit(rng, 40)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    monkeypatch.setattr(vmod, "SHARD_SIZE", 10 ** 9)
    one = VectorIndex(path=tmp_path / "one")
    ids = fill(one, vecs, batch=200)
    monkeypatch.setattr(vmod, "SHARD_SIZE", 70)
    sharded = VectorIndex(path=tmp_path / "sharded")
    fill(sharded, vecs, batch=200)
    assert len(one._shards("memories")) == 1 and len(sharded._shards("memories")) == 9
    turns = [j for j in range(600) if j % 2]

    queries = vecs[:20] * 0.3 + unit(rng, 20)
    for q in queries:
        q = q / np.linalg.norm(q)
        sims = vecs @ q
        exact = [ids[j] for j in np.argsort(-sims)]
        # Every shard asked for all it holds: the exact ranking, one collection or nine shards, filtered too.
        a, b = one.query("memories", q, 1000), sharded.query("memories", q, 1000)
        assert [i for i, _ in a] == [i for i, _ in b] == exact
        assert np.allclose([s for _, s in b], np.sort(sims)[::-1], atol=1e-5)
        turns_b = sharded.query("memories", q, 1000, where={"type": "turn"})
        assert [i for i, _ in turns_b] == [ids[j] for j in sorted(turns, key=lambda j: -sims[j])]
        assert [i for i, _ in one.query("memories", q, 1000, where={"type": "turn"})] == [i for i, _ in turns_b]
        # A top 10 (HNSW's answer): ten distinct ids with their true similarity, best first, filter kept.
        for index in (one, sharded):
            for where in (None, {"type": "turn"}):
                top = index.query("memories", q, 10, where=where)
                assert len(top) == 10 == len({i for i, _ in top})
                assert np.allclose([s for _, s in top], [sims[int(i[2:])] for i, _ in top], atol=1e-5)
                assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
                assert where is None or all(int(i[2:]) % 2 for i, _ in top)
    # The share asked again: the top 30 of a query at the near copies are all in shard 0, more than the
    # 16 each shard is asked for first; shard 0's last result makes the top 30, so it is asked for 30.
    exact = np.argsort(-(vecs @ vecs[0]))[:30]
    assert set(int(i) for i in exact) <= set(range(40)), "the top 30 are near copies, in shard 0"
    got = sharded.query("memories", vecs[0], 30)
    assert len(got) == 30 and all(int(i[2:]) < 40 for i, _ in got), "all from shard 0's near copies"
    assert np.allclose([s for _, s in got], [vecs[int(i[2:])] @ vecs[0] for i, _ in got], atol=1e-5)


def test_a_store_from_before_the_shards_is_split_at_its_first_write_resumably(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    root = tmp_path / "chroma"
    vecs = unit(rng, 260)
    monkeypatch.setattr(vmod, "SHARD_SIZE", 10 ** 9)
    ids = fill(VectorIndex(path=root), vecs, batch=130)  # one collection, as before the layout
    monkeypatch.setattr(vmod, "SHARD_SIZE", 100)
    monkeypatch.setattr(vmod, "PAGE", 40)

    old = VectorIndex(path=root)
    assert old.count("memories") == 260 and old.query("memories", vecs[200], 1000)[0][0] == ids[200], \
        "a store not yet split reads as before"

    # Killed part-way: the first pages are copied (and some dropped from shard 0), then it stops.
    calls = {"n": 0}
    real_mark = VectorIndex._mark

    def stop_at_second_page(self, name, shards):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real_mark(self, name, shards)

    monkeypatch.setattr(VectorIndex, "_mark", stop_at_second_page)
    with pytest.raises(StoreError, match="split collection"):
        old.upsert("memories", ["m_new"], unit(rng, 1))
    monkeypatch.setattr(VectorIndex, "_mark", real_mark)
    assert VectorIndex(path=root).ids("memories") == set(ids), "no vector lost by the interruption"

    index = VectorIndex(path=root)
    new = unit(rng, 1)
    index.upsert("memories", ["m_new"], new)
    assert [c.count() for c in index._shards("memories")] == [100, 100, 61]
    assert index.ids("memories") == {*ids, "m_new"} and index.count("memories") == 261, "each id in one shard"
    got = index.get_embeddings("memories", ids)
    assert all(np.allclose(got[i], v, atol=1e-6) for i, v in zip(ids, vecs)), "every vector kept as it was"
    assert index.dirty_shards("memories") == [0], "shard 0 is shrunk at the next purge"
    first = collection_ids(index)
    index.purge(["memories"])
    assert [a != b for a, b in zip(first, collection_ids(index))] == [True, False, False]
    # Asked for all they hold, the shards are ranked exactly (a top 1 is HNSW's answer, which may miss).
    assert index.query("memories", vecs[250], 1000)[0][0] == ids[250]
    assert index.query("memories", new[0], 1000)[0][0] == "m_new"


def test_drop_removes_every_shard_and_the_marks(tmp_path, small_shards):
    rng = np.random.default_rng(7)
    index = VectorIndex(path=tmp_path / "chroma")
    ids = fill(index, unit(rng, 120))
    fill(index, unit(rng, 3), name="images")
    index.delete("memories", ids[:1])
    index.drop(["memories"])
    assert sorted(c.name for c in index.client.list_collections()) == ["images"]
    assert VectorIndex(path=tmp_path / "chroma").count("memories") == 0
