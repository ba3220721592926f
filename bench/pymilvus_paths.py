"""Why the vector store keeps two pymilvus internals: the public calls against the store's raw paths.

    python -m bench.pymilvus_paths [--items 100000] [--queries 64] [--top-k 50] [--repeat 20]

On the embedded Milvus, one keyed collection (FLAT index, so both paths search the same way):

* write ``--items`` rows in the store's batches through ``VectorStore._write_raw`` (the request built
  from the arrays) and through the public ``MilvusClient.insert`` (a dict per row, converted float by
  float): wall seconds and this process' CPU seconds for each;
* search ``--queries`` x top ``--top-k`` ``--repeat`` times through ``VectorStore._search_raw`` (ids and
  scores read from the gRPC reply) and through the public ``MilvusClient.search`` (a ``Hit`` per
  result): p50 / p99 ms and CPU ms per call.

Writes ``bench/results/pymilvus_paths.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit
from bench.stack import percentiles
from workers.infra.milvus_server import open_milvus
from workers.infra.vector_store import Rows, VectorStore
from workers.settings import MilvusSettings, Settings


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall s, this process' CPU s) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    settings = MilvusSettings(index_type="FLAT")
    dim = Settings().mind.dim
    rng = np.random.default_rng(0)
    ids = rng.choice(2**62, size=args.items, replace=False).astype(np.int64)
    vectors = rng.standard_normal((args.items, dim)).astype(np.float32)
    queries = rng.standard_normal((args.queries, dim)).astype(np.float32)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with (
        tempfile.TemporaryDirectory(prefix="pymilvus-paths-") as tmp,
        open_milvus(settings, Path(tmp)) as uri,
        VectorStore(uri, settings) as store,
    ):
        names = {path: f"paths_{path}_{uuid.uuid4().hex[:8]}" for path in ("raw", "public")}
        for name in names.values():
            store.create_collection(name, dim)
            store.build_index(name)
            store.load(name)
        rows = Rows.of(ids, vectors, "v1", 0)
        write: dict[str, tuple[float, float]] = {"raw": _timed(lambda: store.write_rows(names["raw"], rows))}

        def public_insert() -> None:
            step = settings.insert_batch
            for start in range(0, args.items, step):
                chunk = rows[start : start + step]
                columns = chunk.columns("all", True)
                if store.has_metadata(names["public"]):  # what write_rows adds: the catalogue's fields
                    columns.update(store._metadata_columns(chunk.item_ids))
                dicts = [
                    {**{k: v[i] for k, v in columns.items()}, "vector": chunk.vectors[i]} for i in range(len(chunk))
                ]
                store.client.insert(names["public"], dicts, partition_name="all")

        store.ensure_segment(names["public"], "all")
        write["public"] = _timed(public_insert)
        assert store.count(names["raw"]) == store.count(names["public"]) == args.items
        search: dict[str, list[tuple[float, float]]] = {"raw": [], "public": []}
        for _ in range(args.repeat):
            search["raw"].append(
                _timed(
                    lambda: store._search_raw(
                        names["raw"], data=list(queries), limit=args.top_k, search_params={}, output_fields=[]
                    )
                )
            )
            search["public"].append(
                _timed(
                    lambda: store.client.search(
                        names["raw"], data=list(queries), limit=args.top_k, search_params={}, output_fields=[]
                    )
                )
            )
        for name in names.values():
            store.drop_collection(name)
    emit(
        "pymilvus_paths",
        {
            "items": args.items,
            "dim": dim,
            "write_s": {path: round(w, 3) for path, (w, _) in write.items()},
            "write_cpu_s": {path: round(c, 3) for path, (_, c) in write.items()},
            "search_queries": args.queries,
            "search_top_k": args.top_k,
            "search_ms": {path: percentiles([w * 1000 for w, _ in runs]) for path, runs in search.items()},
            "search_cpu_ms_mean": {
                path: round(1000 * sum(c for _, c in runs) / len(runs), 2) for path, runs in search.items()
            },
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    )


if __name__ == "__main__":
    main()
