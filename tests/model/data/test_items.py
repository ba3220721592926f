"""Item metadata: ML-100K's genres and titles, your own item file, and where the data sets carry it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.data.custom import load_path
from model.data.errors import DataFormatError
from model.data.items import ItemCatalogue, read_item_file, read_ml100k_items
from model.data.movielens import locate_ml100k, ml100k_items
from tests.required_tools import missing_tool


def test_ml100k_genres_and_titles(tmp_path: Path) -> None:
    path = tmp_path / "ml-100k.item"
    path.write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "3\tFour Rooms\t1995\tThriller\n"
        "7\tNo Genre\t\t\n"
    )
    cat = read_ml100k_items(path)
    assert cat.ids.tolist() == [1, 3, 7]
    assert cat.categories_of(1) == ("Animation", "Children's", "Comedy") and cat.categories_of(7) == ()
    assert cat.title_of(3) == "Four Rooms"
    assert cat.matrix(np.array([3, 99])).sum(axis=1).tolist() == [1, 0]


def test_the_installed_ml100k_has_19_genres_for_every_movie() -> None:
    try:
        inter = locate_ml100k()
    except FileNotFoundError as error:
        missing_tool("ml-100k", str(error))  # a skip, except in CI (MINDSTREAM_REQUIRE_TOOLS): a failure
    cat = ml100k_items(inter)
    assert cat is not None and len(cat) == 1682 and len(cat.names) == 19
    assert cat.title_of(1) == "Toy Story" and "Comedy" in cat.categories_of(1)


def test_own_item_file_with_several_categories(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,category,price\n9000000000000000001,books|sci-fi,3\n5,toys,1\n5,games,1\n")
    cat = read_item_file(path)
    assert cat.names == ("books", "games", "sci-fi", "toys")
    assert cat.categories_of(9000000000000000001) == ("books", "sci-fi") and cat.categories_of(5) == ("games", "toys")
    assert cat.titles is None


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("item,category\n1,a\n", 1, "header lacks"),
        ("item_id,category\nx,a\n", 2, "integer"),
        ("item_id,category\n1\n", 2, "fields"),
    ],
)
def test_bad_item_files_name_the_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = tmp_path / "items.csv"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=reason) as info:
        read_item_file(path)
    assert info.value.line_no == line


def test_a_log_with_an_item_file_keeps_it_beside_the_vocabulary(tmp_path: Path) -> None:
    log = tmp_path / "clicks.csv"
    rows = ["user_id,item_id,timestamp"]
    for user in range(1, 13):
        rows += [f"{user},{100 + (user + k) % 6},{1000 * user + k}" for k in range(6)]
    log.write_text("\n".join(rows) + "\n")
    items = tmp_path / "meta.tsv"
    items.write_text("item_id\tcategory\n" + "".join(f"{100 + i}\tc{i % 2}\n" for i in range(6)))
    plain = load_path(log, seed=1, core=1, history_share=0.5)
    assert plain.items is None
    ds = load_path(log, seed=1, core=1, history_share=0.5, items=items)
    assert isinstance(ds.items, ItemCatalogue) and ds.items.categories_of(101) == ("c1",)
    assert ds.valid.times is not None and all(
        t.shape == h.shape for t, h in zip(ds.valid.times, ds.valid.histories, strict=True)
    )
    first = int(np.flatnonzero(ds.vocab.ids == 103)[0])
    assert ds.items.categories_of(int(ds.vocab.external(np.array([first]))[0])) == ("c1",)
