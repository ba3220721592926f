"""The catalogue metadata on the rows (issue 32): every write (a full publish, a live write such as the
fast path's, a delta) gives a row its item's segment and categories as the catalogue state holds them,
and a delta rewrites the items whose metadata changed since (and only those). The request equals the
one pymilvus builds (pure); the rest on the real embedded Milvus."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymilvus import DataType
from pymilvus.client.prepare import Prepare

from model.checkpoint import Checkpoint, open_checkpoint
from model.data.types import Sequences
from model.train import Trainer, train
from workers.catalogue.row_metadata import CatalogueMetadata
from workers.catalogue.store import ItemRecord, ItemStore
from workers.infra.vector_store import Rows, VectorStore, insert_request
from workers.ingest.state_reader import StateReader
from workers.refresh.delta import diff
from workers.refresh.live_writer import FAST_PATH_SLOTS, Published
from workers.refresh.worker import RefreshWorker
from workers.settings import EvalSettings, MilvusSettings, RefreshSettings, Settings

from .test_worker import MIND, TRAIN, _cluster_seqs


def _fields(dim: int) -> list[dict[str, Any]]:
    """``describe_collection``'s fields of a collection ``VectorStore.create_collection`` makes."""
    names = ["id", "item_id", "vector", "model_version", "segment", "generation", "gen_to", "categories"]
    types = [DataType.VARCHAR, DataType.INT64, DataType.FLOAT_VECTOR, DataType.VARCHAR, DataType.VARCHAR]
    types += [DataType.INT64, DataType.INT64, DataType.ARRAY]
    fields: list[dict[str, Any]] = [
        {"field_id": 100 + n, "name": name, "type": kind, "params": {}}
        for n, (name, kind) in enumerate(zip(names, types, strict=True))
    ]
    fields[0]["params"], fields[0]["is_primary"] = {"max_length": 24}, True
    fields[2]["params"] = {"dim": dim}
    fields[7].update(params={"max_length": 64, "max_capacity": 32}, element_type=DataType.VARCHAR)
    fields.append({"field_id": 108, "name": "item_segment", "type": DataType.VARCHAR, "params": {"max_length": 32}})
    return fields


@pytest.mark.parametrize("upsert", [False, True])
def test_a_request_with_the_metadata_equals_pymilvus_row_request(upsert: bool) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((4, 8)).astype(np.float32)
    columns = Rows.of(np.array([1, 2, 3, 2**63 - 1]), vectors, "v1", 2).columns("s_eu", keyed=True)
    columns["categories"] = [["Drama"], [], ["Sci-Fi & Fantasy", "Müsli"], ["a"] * 32]
    columns["item_segment"] = ["eu", "", "us", "x-y_z"]
    dicts = [{**{k: c[i] for k, c in columns.items()}, "vector": vectors[i]} for i in range(4)]
    prepare = Prepare.row_upsert_param if upsert else Prepare.row_insert_param
    theirs = prepare("coll", dicts, "s_eu", _fields(8), enable_dynamic=False, schema_timestamp=7)
    mine = insert_request("coll", "s_eu", {"fields": _fields(8)}, 7, columns, vectors, upsert=upsert)
    assert mine.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)


def test_diff_writes_the_items_whose_metadata_changed_whatever_their_vector() -> None:
    vectors = np.eye(4, dtype=np.float32) + 1.0
    published = Published.of(2, {"all": Rows.of(np.array([10, 20, 30, 40]), vectors, "v1", 0)}, 4)
    ids = np.array([10, 20, 30, 40])
    partitions = np.full(4, "all", dtype=object)
    known = np.ones(4, dtype=bool)
    assert diff(published, ids, vectors, partitions, 0.1, known).write.tolist() == []
    rewrite = np.array([False, True, False, True])
    assert diff(published, ids, vectors, partitions, 0.1, known, rewrite).write.tolist() == [1, 3]


# ------------------------------------------------------------------ on Milvus


def _segment(item: int) -> str | None:
    return ("eu", "us", None)[item % 3]


def _categories(item: int) -> tuple[str, ...]:
    return ("odd",) if item % 2 else ("even", "Comedy")


def _announce(settings: Settings, records: list[ItemRecord], offset: int) -> int:
    """Write item states into the catalogue state as the catalogue worker does; the next offset."""
    store = ItemStore.open(settings.state_dir, settings.kafka.items_topic, 0)
    store.apply(records, settings.kafka.items_topic, 0, offset + len(records) - 1)
    store.close()
    return offset + len(records)


def _record(item: int, ts: int, categories: tuple[str, ...] | None = None, segment: str | None = "-") -> ItemRecord:
    return ItemRecord(
        item,
        ts,
        True,
        f"Item {item}",
        _categories(item) if categories is None else categories,
        _segment(item) if segment == "-" else segment,
    )


def _expected(item: int) -> tuple[str, tuple[str, ...]]:
    return _segment(item) or "", _categories(item)


@pytest.fixture
def base(tmp_path: Path) -> tuple[Checkpoint, Sequences]:
    seqs = _cluster_seqs(np.random.default_rng(0))
    train(Trainer(seqs, MIND, TRAIN), batches=40, checkpoint_dir=tmp_path / "base")
    return open_checkpoint(tmp_path / "base", "latest"), seqs


@pytest.fixture
def settings(tmp_path: Path, milvus_uri: str) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        mind=MIND,
        train=TRAIN,
        eval=EvalSettings(top_n=5),
        milvus=MilvusSettings(uri=milvus_uri, alias=f"m_{uuid.uuid4().hex[:10]}", index_type="FLAT"),
        refresh=RefreshSettings(probe_items=5, delta_threshold=0.1, quality_users=0),
    )


@pytest.mark.integration
def test_rows_carry_the_catalogue_metadata_and_a_delta_rewrites_what_changed(
    settings: Settings, base: tuple[Checkpoint, Sequences], milvus_uri: str
) -> None:
    base_ckpt, seqs = base
    ts = int(time.time() * 1000)
    offset = _announce(settings, [_record(i, ts) for i in range(1, 41)], 0)  # items 1..40, before the build
    metadata = CatalogueMetadata.open(settings)
    with (
        VectorStore(milvus_uri, settings.milvus, metadata=metadata) as store,
        StateReader(settings.state_dir, "clicks") as reader,
    ):
        worker = RefreshWorker(settings, store, reader, replay=seqs)
        worker.bootstrap(base_ckpt)  # a full publish
        epoch = f"{settings.milvus.alias}_v1"
        assert store.has_metadata(epoch)
        assert store.metadata_where(epoch, store.visible_at(epoch, 0)) == {i: _expected(i) for i in range(1, 41)}

        # a live write (the fast path's): the new item's row takes what the catalogue says of it
        offset = _announce(settings, [_record(99, ts, ("Comedy", "new"), "eu")], offset)
        vector = np.ones((1, MIND.dim), dtype=np.float32)
        worker.writer.write(epoch, "v1", {"all": Rows.of(np.array([99]), vector, "v1", 0)}, items=[99])
        assert store.metadata_where(epoch, f"item_id == 99 and {store.visible_at(epoch, 1)}") == {
            99: ("eu", ("Comedy", "new"))
        }

        # the catalogue changes 3's categories, 4's segment, takes 5's away; 6 is re-announced unchanged
        # and 7 withdrawn (availability is not on the rows): a delta rewrites 3, 4 and 5 only
        changed = [_record(3, ts + 1, ("changed",)), _record(4, ts + 1, segment="eu"), _record(5, ts + 1, ())]
        changed += [_record(6, ts + 1), ItemRecord(7, ts + 1, False, "Item 7", _categories(7), _segment(7))]
        offset = _announce(settings, changed, offset)
        v1 = worker.registry.checkpoint("v1")
        report = worker.delta.publish(v1, epoch)
        g = 1 + FAST_PATH_SLOTS  # a delta is staged above the generations left to fast-path steps
        assert (report.generation, report.rows) == (g, 3)
        visible = store.metadata_where(epoch, store.visible_at(epoch, g))
        assert visible[3] == (_segment(3) or "", ("changed",)) and visible[4] == ("eu", _categories(4))
        assert visible[5] == (_segment(5) or "", ())
        assert {i: visible[i] for i in visible if i not in (3, 4, 5, 99)} == {
            i: _expected(i) for i in range(1, 41) if i not in (3, 4, 5)
        }
        assert store.count(epoch, generation=g) == 41  # one row per item, 99 kept
        found = store.search(
            epoch,
            np.ones((1, MIND.dim), np.float32),
            41,
            max_generation=g,
            filter='array_contains_any(categories, ["changed"])',
        )
        assert [i for i in found.ids[0].tolist() if i] == [3]  # the filters see the rewritten rows

        # nothing changed since: the next delta writes nothing
        assert worker.delta.publish(v1, epoch).rows == 0
        worker.close()
    metadata.close()
