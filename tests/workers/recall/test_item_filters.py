"""Availability, filters, exclude_seen and the fallback in the engine, with small fakes (a store that
cannot filter inside a search, as a collection built before the metadata fields) and a real catalogue
view over a catalogue state file; the Milvus expressions the engine sends (pure).

On the real broker and Milvus: ``test_catalogue_recall.py``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from model.data.items import ItemCatalogue
from model.metrics import merge_interests
from schemas.codec import encode
from schemas.messages import RecallFilters, RecallReply, RecallRequest
from tests.workers.recall.test_engine import ITEMS, DictHistory, FakeLive, FakeServed, FakeStore, FakeTower, _table
from workers.catalogue.reader import CatalogueReader
from workers.catalogue.store import ItemRecord, ItemStore
from workers.catalogue.view import CatalogueView
from workers.recall.budget import Budget
from workers.recall.engine import RecallEngine
from workers.recall.item_filters import (
    Filtering,
    ViewCategories,
    availability_expression,
    filter_expression,
    join,
)
from workers.recall.popular import PopularItems

TOPIC = "items"


# ------------------------------------------------------------------ expressions


def test_filter_expressions_follow_the_reference_meaning() -> None:
    assert filter_expression(None) == "" and filter_expression(RecallFilters(exclude_items=[3])) == ""
    assert filter_expression(RecallFilters(include_segments=["us", "eu", "us"])) == 'item_segment in ["eu", "us"]'
    assert filter_expression(RecallFilters(exclude_segments=[])) == ""  # an empty exclude list excludes nothing
    both = RecallFilters(include_categories=["Sci-Fi & Fantasy"], exclude_categories=["Kids'"])
    assert filter_expression(both) == (
        '(array_contains_any(categories, ["Sci-Fi & Fantasy"])) and (not array_contains_any(categories, ["Kids\'"]))'
    )
    assert availability_expression(set()) == "" and availability_expression({9, 2}) == "item_id not in [2, 9]"
    assert join(["", "a", ""]) == "a" and join(["a", "b"]) == "(a) and (b)" and join([]) == ""


def test_streamed_categories_replace_the_data_sets_for_the_diversity_merge(tmp_path: Path) -> None:
    _announce(tmp_path, [ItemRecord(1, 1, True, None, ("Noir",)), ItemRecord(3, 1, True, None, ())])
    view = _view(tmp_path)
    base = ItemCatalogue.from_mapping({1: ["Drama"], 2: ["Drama", "Comedy"], 3: ["Comedy"]})
    matrix = ViewCategories(view, base).matrix(np.array([1, 2, 3, 4]))
    names = sorted({"Noir", "Drama", "Comedy"})
    as_sets = [{names[c] for c in np.flatnonzero(row)} for row in matrix]
    assert as_sets == [{"Noir"}, {"Drama", "Comedy"}, {"Comedy"}, set()]  # 3 announced none: the file's kept
    assert ViewCategories(view).matrix(np.array([2, 1])).tolist() == [[False], [True]]


# ------------------------------------------------------------------ the engine


def _announce(state_dir: Path, records: list[ItemRecord]) -> None:
    store = ItemStore.open(state_dir, TOPIC, 0)
    last = store.last_offset(TOPIC, 0)
    store.apply(records, TOPIC, 0, (last if last is not None else -1) + len(records))
    store.close()


def _view(state_dir: Path) -> CatalogueView:
    view = CatalogueView(CatalogueReader(state_dir, TOPIC))
    view.refresh()
    return view


def _segment(item: int) -> str | None:
    return ("eu", "us", None)[item % 3]


def _categories(item: int) -> tuple[str, ...]:
    return ("odd",) if item % 2 else ("even",)


@pytest.fixture
def view(tmp_path: Path) -> Iterator[CatalogueView]:
    _announce(tmp_path, [ItemRecord(i, 1, True, None, _categories(i), _segment(i)) for i in range(1, ITEMS + 1)])
    view = _view(tmp_path)
    yield view
    view.reader.close()


TABLE = _table(1)
HISTORIES = [[3, 4], [7, 8, 9, 10, 11], [20]]


def _engine(view: CatalogueView | None, **kw: object) -> tuple[RecallEngine, FakeStore]:
    store = FakeStore({"items_v1": TABLE})
    live = FakeLive(FakeServed("v1", "items_v1", FakeTower(TABLE)))
    engine = RecallEngine(live, store, DictHistory({7: [3, 4], 8: []}), view=view, **kw)  # type: ignore[arg-type]
    return engine, store


def _exact(histories: list[list[int]], top_k: int, admits: Callable[[int], bool]) -> list[list[int]]:
    """Exact search of the fake tower's interests over the admitted items + the reference merge."""
    interests = FakeTower(TABLE).interests(histories)
    ids = np.array([i for i in range(1, ITEMS + 1) if admits(i)], dtype=np.int64)
    scores = interests @ TABLE[ids].T
    order = np.argsort(-scores, axis=2, kind="stable")[:, :, :top_k]
    return [m.tolist() for m in merge_interests(ids[order], np.take_along_axis(scores, order, axis=2), top_k)]


def _reply(engine: RecallEngine, request: RecallRequest) -> RecallReply:
    reply = engine.answer([request])[0]
    assert isinstance(reply, RecallReply), reply
    return reply


def test_without_a_view_nor_new_fields_the_replies_are_as_before(view: CatalogueView) -> None:
    plain, store = _engine(None)
    request = RecallRequest(hist_item=HISTORIES, top_k=5)
    before = _reply(plain, request)
    assert before.items == _exact(HISTORIES, 5, lambda _: True) and before.source is None
    assert store.calls == [("items_v1", 3 * 2, 5)]  # one search, no more candidates than asked for
    assert "source" not in json.loads(encode(before))
    assert _reply(_engine(view)[0], request).items == before.items  # nothing withdrawn, nothing filtered


def test_withdrawn_items_are_left_out_after_a_search_that_cannot_filter(tmp_path: Path, view: CatalogueView) -> None:
    first = _exact(HISTORIES, 5, lambda _: True)
    gone = {first[0][0], first[1][0], first[1][1]}
    _announce(tmp_path, [ItemRecord(i, 2, False) for i in gone])
    view.refresh()
    engine, store = _engine(view, filtering=Filtering(unavailable_in_search=1000, post_filter_overfetch=3))
    reply = _reply(engine, RecallRequest(hist_item=HISTORIES, top_k=5))
    assert reply.items == _exact(HISTORIES, 5, lambda i: i not in gone)
    assert all(len(items) == 5 for items in reply.items) and not gone & {i for items in reply.items for i in items}
    assert store.calls[-1][2] == 5 + 3  # each interest asked for min(withdrawn, post_filter_overfetch) more
    _announce(tmp_path, [ItemRecord(i, 3, True) for i in gone])  # available again: back at once
    view.refresh()
    assert _reply(engine, RecallRequest(hist_item=HISTORIES, top_k=5)).items == first


def test_filters_without_metadata_fields_are_checked_on_the_view_after_the_search(view: CatalogueView) -> None:
    engine, store = _engine(view, filtering=Filtering(unavailable_in_search=1000, post_filter_overfetch=40))
    filters = RecallFilters(include_segments=["eu"], exclude_categories=["odd"], exclude_items=[6])
    reply = _reply(engine, RecallRequest(hist_item=HISTORIES, top_k=4, filters=filters))
    admits = filters.admits
    assert reply.items == _exact(HISTORIES, 4, lambda i: admits(_segment(i), _categories(i), i))
    assert store.calls[-1][2] == 4 + 1 + 40


def test_exclude_seen_leaves_out_each_users_history_and_the_budget_counts_the_extra(view: CatalogueView) -> None:
    budget = Budget(max_request_cost=10**6, max_diverse_top_k=200, max_batch_cost=30)
    engine, store = _engine(view, budget=budget)
    history = [5, 6, 7, 8, 9]
    top = _exact([history], 10, lambda _: True)[0]
    seen = [*history, *top[:5]]  # the plain answer's head in the history
    requests = [RecallRequest(hist_item=[seen], top_k=10, exclude_seen=True), RecallRequest(user_ids=[7], top_k=10)]
    replies = engine.answer([*requests, RecallRequest(user_ids=[7], top_k=10, exclude_seen=True)])
    assert all(isinstance(r, RecallReply) for r in replies)
    first, plain, streamed = (r.items[0] for r in replies if isinstance(r, RecallReply))
    assert first == _exact([seen], 10, lambda i: i not in seen)[0] and len(first) == 10
    assert streamed == _exact([[3, 4]], 10, lambda i: i not in (3, 4))[0] and {3, 4} & set(plain)
    # cut by the budget at their larger top_k (10 + the distinct items seen; 10; 10 + maxlen): the first alone,
    # then 2 x 15 <= 30 together, searched for 10 + the 2 clicks user 7 has
    assert [call[2] for call in store.calls] == [10 + len(set(seen)), 12]


def test_the_fallback_answers_users_without_history_and_says_so(view: CatalogueView) -> None:
    popular = PopularItems(half_life_s=60.0, capacity=100, clock_ms=lambda: 1e12)
    popular.add(np.array([9, 9, 9, 2, 2, 30, 30, 30, 30, 3]), np.full(10, 1e12, dtype=np.int64))
    engine, _ = _engine(view, popular=popular)
    asked = RecallRequest(user_ids=[8, 7, 12345], top_k=2, fallback="popular")
    reply = _reply(engine, asked)
    assert reply.source == ["popular", "model", "popular"]
    assert reply.items[0] == reply.items[2] == [30, 9] and reply.items[1] == _exact([[3, 4]], 2, lambda _: True)[0]
    filtered = _reply(engine, asked.model_copy(update={"filters": RecallFilters(exclude_categories=["even"])}))
    assert filtered.items[0] == [9, 3]  # 30 and 2 are even
    unknown = _reply(engine, RecallRequest(hist_item=[[10**9]], top_k=3, fallback="popular"))
    assert unknown.source == ["popular"] and unknown.items == [[30, 9, 2]]
    before = _reply(engine, RecallRequest(user_ids=[8], top_k=2))
    assert before.items == [[]] and before.source is None and "source" not in json.loads(encode(before))


def test_each_user_without_history_gets_the_fallback_without_its_own_exclusions(view: CatalogueView) -> None:
    popular = PopularItems(half_life_s=60.0, capacity=100, clock_ms=lambda: 1e12)
    clicks = [31] * 5 + [32] * 4 + [9] * 3 + [2] * 2 + [33]  # 31..33: clicked, unknown to the model
    popular.add(np.array(clicks), np.full(len(clicks), 1e12, dtype=np.int64))
    engine, _ = _engine(view, popular=popular)
    asked = RecallRequest(hist_item=[[31], [32], [33, 31]], top_k=3, exclude_seen=True, fallback="popular")
    reply = _reply(engine, asked)
    assert reply.source == ["popular"] * 3
    assert reply.items == [[32, 9, 2], [31, 9, 2], [32, 9, 2]]  # 33 is not in the catalogue view: available
    excluded = _reply(engine, asked.model_copy(update={"filters": RecallFilters(exclude_items=[9])}))
    assert excluded.items == [[32, 2, 33], [31, 2, 33], [32, 2]]


def test_a_search_that_the_exclusions_make_too_large_is_refused_by_name(view: CatalogueView) -> None:
    engine, store = _engine(view, budget=Budget(max_request_cost=10**6, max_diverse_top_k=200, max_batch_cost=100))
    heavy = RecallRequest(hist_item=[[3]] * 5, top_k=10, filters=RecallFilters(exclude_items=list(range(40, 60))))
    plain = RecallRequest(hist_item=[[3]] * 20, top_k=10)  # over max_batch_cost too, but as before: searched alone
    refused, served = engine.answer([heavy, plain])
    assert not isinstance(refused, RecallReply) and refused.code == "too_large"
    assert "5 users x 30 candidates" in refused.message and "recall.max_batch_cost 100" in refused.message
    assert isinstance(served, RecallReply) and len(served.items) == 20
    assert [call[2] for call in store.calls] == [10]
