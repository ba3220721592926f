"""The catalogue state on real SQLite files: newest ts wins, tombstones, the position, and what readers see
(``CatalogueReader``, ``CatalogueView``) while the writer goes on."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model.data.items import ItemCatalogue
from schemas.messages import RecallFilters
from workers.catalogue.reader import CatalogueReader, Cursor
from workers.catalogue.store import SCHEMA_VERSION, ItemRecord, ItemStore, Tombstone, partition_path
from workers.catalogue.view import CatalogueView

TOPIC = "items"


def rec(
    item: int,
    ts: int,
    available: bool = True,
    *,
    title: str | None = None,
    categories: tuple[str, ...] = (),
    segment: str | None = None,
) -> ItemRecord:
    return ItemRecord(item, ts, available, title, categories, segment)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ItemStore]:
    s = ItemStore.open(tmp_path, TOPIC, 0)
    yield s
    s.close()


def test_newest_ts_wins_ties_go_to_the_later_record(store: ItemStore) -> None:
    result = store.apply(
        [rec(1, 10, title="a"), rec(1, 5, False), rec(2, 7, categories=("x",)), rec(2, 7, False, segment="de")],
        TOPIC,
        0,
        3,
    )
    assert (result.changed, result.stale) == (3, 1)
    assert store.get(1) == rec(1, 10, title="a")  # the older (ts 5) withdrawal came late: ignored
    assert store.get(2) == rec(2, 7, False, segment="de")  # same ts: the later record, whole
    assert store.last_offset(TOPIC, 0) == 3
    again = store.apply([rec(1, 5, False)], TOPIC, 0, 4)
    assert (again.changed, again.stale) == (0, 1) and store.get(1) == rec(1, 10, title="a")


def test_an_event_is_the_items_whole_state(store: ItemStore) -> None:
    store.apply([rec(3, 1, title="t", categories=("a", "b"), segment="de")], TOPIC, 0, 0)
    store.apply([rec(3, 2)], TOPIC, 0, 1)
    assert store.get(3) == rec(3, 2)  # title, categories, segment gone: the newer event had none


def test_a_tombstone_withdraws_and_forgets_until_a_newer_event(store: ItemStore) -> None:
    store.apply([rec(4, 100, title="t", categories=("a",))], TOPIC, 0, 0)
    result = store.apply([Tombstone(4, 50)], TOPIC, 0, 1)  # its Kafka time may be older: it still applies
    assert result.changed == 1 and result.stale == 0
    assert store.get(4) == rec(4, 100, False)
    store.apply([rec(4, 99)], TOPIC, 0, 2)  # older than the state: ignored
    assert store.get(4) == rec(4, 100, False)
    store.apply([rec(4, 101, title="back")], TOPIC, 0, 3)
    assert store.get(4) == rec(4, 101, title="back")
    store.apply([Tombstone(5, 0)], TOPIC, 0, 4)  # an item never announced: known as deleted
    assert store.get(5) == rec(5, 0, False)
    assert store.counts() == (2, 1)


def test_a_failed_batch_leaves_the_file_as_it_was(store: ItemStore) -> None:
    store.apply([rec(1, 1)], TOPIC, 0, 0)
    with pytest.raises(sqlite3.Error):
        store.apply([rec(2, 1), rec(3, 1, title=object())], TOPIC, 0, 9)  # type: ignore[arg-type]
    assert store.get(2) is None and store.last_offset(TOPIC, 0) == 0


def test_reopen_keeps_items_and_position(tmp_path: Path) -> None:
    first = ItemStore.open(tmp_path, TOPIC, 2)
    first.apply([rec(1, 1, False, categories=("Children's",))], TOPIC, 2, 41)
    first.close()
    again = ItemStore.open(tmp_path, TOPIC, 2)
    try:
        assert again.last_offset(TOPIC, 2) == 41 and again.get(1) == rec(1, 1, False, categories=("Children's",))
    finally:
        again.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = partition_path(tmp_path, TOPIC, 0)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="catalogue schema"):
        ItemStore(path)


def test_reader_follows_the_writer(store: ItemStore, tmp_path: Path) -> None:
    with CatalogueReader(tmp_path, TOPIC) as reader:
        assert reader.unavailable_ids() == set() and reader.changed_since(Cursor()) == ([], Cursor())
        store.apply([rec(n, 1, available=n % 3 != 0, title=f"t{n}") for n in range(1, 11)], TOPIC, 0, 9)
        assert reader.unavailable_ids() == {3, 6, 9}
        first, cursor = reader.changed_since(Cursor(), limit=4)
        rest, cursor = reader.changed_since(cursor)
        assert [r.item_id for r in first + rest] == list(range(1, 11))
        store.apply([rec(3, 2, title="back"), rec(10, 2, False)], TOPIC, 0, 11)
        changed, cursor = reader.changed_since(cursor)
        assert changed == [rec(3, 2, title="back"), rec(10, 2, False)]
        assert reader.changed_since(cursor)[0] == []
        assert reader.unavailable_ids() == {6, 9, 10}
        meta = reader.metadata([3, 4, 999, 3])
        assert set(meta) == {3, 4} and meta[4].title == "t4"
        assert reader.counts() == (10, 3)


def test_reader_takes_the_newest_row_across_partition_files(tmp_path: Path) -> None:
    """The topic's partitions were increased: an item's newer state can sit in another file."""
    a, b = ItemStore.open(tmp_path, TOPIC, 0), ItemStore.open(tmp_path, TOPIC, 1)
    try:
        a.apply([rec(1, 10, False), rec(2, 10, False), rec(3, 10, title="old")], TOPIC, 0, 2)
        b.apply([rec(1, 20, title="again"), rec(2, 5), rec(3, 30, False)], TOPIC, 1, 2)
        with CatalogueReader(tmp_path, TOPIC) as reader:
            assert reader.unavailable_ids() == {2, 3}
            meta = reader.metadata([1, 2, 3])
            assert meta[1] == rec(1, 20, title="again") and not meta[2].available and not meta[3].available
            view = CatalogueView(reader, batch=2)
            assert view.refresh() == 6
            assert view.unavailable == frozenset({2, 3})
    finally:
        a.close()
        b.close()


def test_metadata_of_many_ids_is_chunked(store: ItemStore, tmp_path: Path) -> None:
    store.apply([rec(n, 1) for n in range(1, 2001)], TOPIC, 0, 1999)
    with CatalogueReader(tmp_path, TOPIC) as reader:
        assert len(reader.metadata(range(1, 3001))) == 2000


def test_view_snapshots_filters_and_versions(store: ItemStore, tmp_path: Path) -> None:
    with CatalogueReader(tmp_path, TOPIC) as reader:
        view = CatalogueView(reader, batch=3)
        assert view.refresh() == 0 and view.version == 0
        store.apply(
            [
                rec(1, 1, categories=("Comedy",), segment="de"),
                rec(2, 1, categories=("Horror",), segment="de"),
                rec(3, 1, False, categories=("Comedy",), segment="de"),
                rec(4, 1, segment="fr"),
            ],
            TOPIC,
            0,
            3,
        )
        before = view.unavailable
        assert view.refresh() == 4 and view.version == 1
        assert view.unavailable == frozenset({3}) and before == frozenset()  # a new snapshot, not mutated
        f = RecallFilters(include_segments=["de"], exclude_categories=["Horror"])
        assert [i for i in range(1, 6) if view.admits(i, f)] == [1]
        assert [i for i in range(1, 6) if view.admits(i)] == [1, 2, 4, 5]  # 5: never announced, available
        allowed = view.predicate(RecallFilters(exclude_items=[2]), exclude={4})
        assert [i for i in range(1, 6) if allowed(i)] == [1, 5]
        store.apply([rec(3, 2, categories=("Comedy",), segment="de")], TOPIC, 0, 4)
        assert view.refresh() == 1 and view.unavailable == frozenset() and view.version == 2
        assert view.refresh() == 0 and view.version == 2  # nothing new: nothing rebuilt


def test_view_item_catalogue_overlays_the_stream_on_the_file(store: ItemStore, tmp_path: Path) -> None:
    base = ItemCatalogue.from_mapping({1: ["Drama"], 2: ["War"]}, {1: "One", 2: "Two"})
    with CatalogueReader(tmp_path, TOPIC) as reader:
        view = CatalogueView(reader)
        changes = [rec(2, 1, categories=("Comedy", "War")), rec(7, 1, categories=("Horror",)), rec(8, 1)]
        store.apply(changes, TOPIC, 0, 2)
        view.refresh()
        merged = view.item_catalogue(base)
        assert view.item_catalogue(base) is merged  # cached until the view or the base changes
        ids = np.array([1, 2, 7, 8], dtype=np.int64)
        assert [merged.categories_of(int(i)) for i in ids] == [("Drama",), ("Comedy", "War"), ("Horror",), ()]
        assert merged.title_of(1) == "One"
        assert len(view.item_catalogue(None)) == 2  # the stream alone: the items announced with categories
