"""Delta publication: a major round writes into the live collection only what changed.

Against what readers see now (:class:`~workers.refresh.live_writer.Published`), a new version's
vectors are written for:

* items not published yet (new to the model),
* items whose vector moved more than ``refresh.delta_threshold`` from the **published** row
  (``|new - published| > threshold x |published|``, so drift cannot build up unseen: an item that
  moves a little each round is written once the sum passes the threshold),
* items whose partition (segment) changed,
* items whose catalogue metadata (the ``item_segment`` and ``categories`` the filters read) changed
  since their row was written: found through the store's metadata feed (the catalogue state's change
  feed, from where this publisher last looked; a fresh process compares every catalogue item once)
  and compared with what the published rows carry;

and the rows of items that left the version (expired) are closed. Everything else keeps its
published row. The rows are staged under a reserved generation (:meth:`LiveWriter.stage`: fast-path steps go on
meanwhile), the quality gate compares the staged generation with the live one, and
:meth:`LiveWriter.commit` verifies (visible row count, a probe of written rows) and announces; a crash
in any phase leaves readers on the previous announcement and the next write repairs it.

What a reply names, then: the version whose tower embedded its users; every item vector it
searched is that version's own (written by this or a later-announced write of it) or within
``delta_threshold`` (relative L2) of it. ``delta_threshold = 0`` writes every row that changed at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import numpy as np

from model.checkpoint import Checkpoint
from model.data.types import HeldOut
from model.evaluate import evaluate_model
from model.export import UserTower, item_table
from workers.infra.vector_store import DEFAULT_SEGMENT, MilvusSearcher, RowMetadata, Rows, VectorStore
from workers.ingest.state_reader import Cursor
from workers.refresh.live_writer import LiveWriter, Published
from workers.refresh.publish import PublishReport, VerifyError
from workers.refresh.registry import ModelRegistry
from workers.refresh.segments import SegmentMap
from workers.settings import RefreshSettings

__all__ = ["Delta", "DeltaPublisher", "MetadataFeed", "diff"]

log = logging.getLogger(__name__)

METADATA_BY_ID_MAX: Final = 10_000  # published metadata read by item id up to this many items, else by a scan
_ID_CHUNK: Final = 1_000


@runtime_checkable
class MetadataFeed(RowMetadata, Protocol):
    """A store's metadata source that also says what changed (:class:`~workers.catalogue.row_metadata.
    CatalogueMetadata`)."""

    def changed_since(self, cursor: Cursor) -> tuple[np.ndarray, Cursor]: ...


@dataclass(frozen=True)
class Delta:
    """What a version changes against the published rows: positions into the version's items to write,
    and the published items to withdraw."""

    write: np.ndarray  # int64 positions into the version's ids
    withdrawn: np.ndarray  # int64 item ids
    new_items: int  # of ``write``, items not published before


def diff(
    published: Published,
    ids: np.ndarray,
    vectors: np.ndarray,
    partitions: np.ndarray,
    threshold: float,
    known: np.ndarray,
    rewrite: np.ndarray | None = None,
) -> Delta:
    """The :class:`Delta` of a version's ``ids`` / ``vectors`` / ``partitions`` (object array) against
    ``published``; ``known``: for each published item, whether the version's vocabulary holds it (active
    or expired): a published item it does not know (added by the fast path after the round's data) is
    kept, one it holds but does not serve (expired) is withdrawn. ``rewrite``: for each of ``ids``,
    whether its row must be written again whatever its vector (its catalogue metadata changed)."""
    found, positions = published.find(ids)
    write = ~found
    if rewrite is not None:
        write |= rewrite
    if found.any():
        at = positions[found]
        old = published.vectors[at]
        moved = np.linalg.norm(vectors[found] - old, axis=1)
        scale = np.maximum(np.linalg.norm(old, axis=1), np.finfo(np.float32).tiny)
        changed = (moved > threshold * scale) | (published.segments[at] != partitions[found])
        write[np.flatnonzero(found)[changed]] = True
    gone = known & ~np.isin(published.item_ids, ids)
    return Delta(np.flatnonzero(write), published.item_ids[gone], int((~found).sum()))


class DeltaPublisher:
    """Publishes a checkpoint as a delta into the live collection (same report as a full publish)."""

    def __init__(
        self,
        store: VectorStore,
        registry: ModelRegistry,
        settings: RefreshSettings,
        writer: LiveWriter,
        *,
        segments: SegmentMap | None = None,
        top_n: int = 50,
        seed: int = 0,
        on_phase: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.writer = writer
        self.segments = segments
        self.top_n = top_n
        self.rng = np.random.default_rng(seed)
        self._on_phase = on_phase
        self._metadata_cursors: dict[str, Cursor] = {}  # collection -> catalogue changes compared up to

    def publish(self, ckpt: Checkpoint, collection: str, quality: HeldOut | None = None) -> PublishReport:
        """Write ``ckpt``'s changes into ``collection`` (live, keyed) and announce its version there."""
        version = ckpt.manifest.version
        report = PublishReport(version, collection, previous=collection)
        t = time.perf_counter()
        net = ckpt.load_net()
        vocab = ckpt.vocab()
        rows = vocab.active_rows(now=time.time(), ttl_s=self.settings.item_ttl_s)
        ids = vocab.external(rows)
        vectors = np.ascontiguousarray(item_table(net)[rows], dtype=np.float32)
        partitions = self._partitions(ids)
        report.timed("export", t, self._on_phase)

        t = time.perf_counter()
        published = self.writer.snapshot(collection)
        live_version = self.writer.announced(collection).version or self.registry.version_of(collection)
        knows = vocab.contains(published.item_ids)
        rewrite, metadata_cursor = self._metadata_changes(collection, published.generation, ids)
        delta = diff(published, ids, vectors, partitions, self.settings.delta_threshold, knows, rewrite)
        report.timed("diff", t, self._on_phase)
        new: dict[str, Rows] = {}
        for part in sorted(set(partitions[delta.write].tolist())):
            at = delta.write[partitions[delta.write] == part]
            new[part] = Rows.of(ids[at], vectors[at], version, 0)

        t = time.perf_counter()
        staged = self.writer.stage(collection, version, new, delta.withdrawn, published)
        report.timed("write", t, self._on_phase)
        t = time.perf_counter()
        try:  # the quality gate reads the staged generation without holding the writer (fast-path steps go on)
            self._quality(report, collection, ckpt, staged.generation, live_version, quality)
        except BaseException:
            self.writer.abandon(collection)
            raise

        def verify(generation: int, expected: int) -> None:
            self._verify(collection, version, generation, expected, ids[delta.write], vectors[delta.write])

        written = self.writer.commit(staged, verify)
        if metadata_cursor is not None:  # written with the catalogue as it was at the snapshot: compared up to there
            self._metadata_cursors[collection] = metadata_cursor
        report.timed("verify", t, self._on_phase)
        report.rows = written.inserted
        report.closed = written.closed
        report.items = int(ids.shape[0])
        report.generation = written.generation
        report.swapped = True
        log.info(
            "delta %s -> %s at generation %d: %d rows written (%.1f%% of %d items, %d new), %d closed, %d withdrawn %s",
            live_version,
            version,
            written.generation,
            written.inserted,
            100.0 * written.inserted / max(len(ids), 1),
            len(ids),
            delta.new_items,
            written.closed,
            len(delta.withdrawn),
            report.phases,
        )
        return report

    def _metadata_changes(
        self, collection: str, generation: int, ids: np.ndarray
    ) -> tuple[np.ndarray | None, Cursor | None]:
        """For each of ``ids``: whether its published row carries other catalogue metadata than the
        catalogue has now (only items the catalogue changed since the last comparison are looked at);
        and the catalogue cursor this comparison reached. ``(None, None)`` without a metadata feed or
        for a collection without the metadata fields."""
        feed = self.store.metadata
        if not isinstance(feed, MetadataFeed) or not self.store.has_metadata(collection):
            return None, None
        changed, cursor = feed.changed_since(self._metadata_cursors.get(collection, Cursor()))
        look = np.flatnonzero(np.isin(ids, changed))
        if look.size == 0:
            return None, cursor
        published = self._published_metadata(collection, generation, ids[look])
        segments, categories = feed.metadata_of(ids[look])
        rewrite = np.zeros(ids.shape[0], dtype=bool)
        for at, item, segment, cats in zip(look.tolist(), ids[look].tolist(), segments, categories, strict=True):
            held = published.get(int(item))
            rewrite[at] = held is not None and held != (segment, tuple(cats))
        if rewrite.any():
            log.info("%s: %d items' catalogue metadata changed: rewritten", collection, int(rewrite.sum()))
        return rewrite, cursor

    def _published_metadata(
        self, collection: str, generation: int, item_ids: np.ndarray
    ) -> dict[int, tuple[str, tuple[str, ...]]]:
        """What the rows readers see at ``generation`` carry for ``item_ids`` (those that have a row)."""
        visible = self.store.visible_at(collection, generation)
        if item_ids.shape[0] > METADATA_BY_ID_MAX:  # a fresh process: every catalogue item, one scan
            return self.store.metadata_where(collection, visible)
        found: dict[int, tuple[str, tuple[str, ...]]] = {}
        for start in range(0, item_ids.shape[0], _ID_CHUNK):
            chunk = item_ids[start : start + _ID_CHUNK].tolist()
            found.update(self.store.metadata_where(collection, f"item_id in {chunk} and {visible}"))
        return found

    def _partitions(self, ids: np.ndarray) -> np.ndarray:
        out = np.full(ids.shape[0], DEFAULT_SEGMENT, dtype=object)
        if self.segments is None:
            return out
        position = {int(i): n for n, i in enumerate(ids.tolist())}
        for part, part_ids in self.segments.group(ids).items():
            out[[position[int(i)] for i in part_ids.tolist()]] = part
        return out

    def _verify(
        self, collection: str, version: str, generation: int, expected: int, ids: np.ndarray, vectors: np.ndarray
    ) -> None:
        count = self.store.count(collection, generation=generation)
        if count != expected:
            raise VerifyError(f"{collection} at generation {generation}: {count} rows visible, expected {expected}")
        if not ids.shape[0]:
            return
        n_probe = min(self.settings.probe_items, int(ids.shape[0]))
        picked = np.sort(self.rng.choice(ids.shape[0], size=n_probe, replace=False))
        probe = self.store.probe(collection, ids[picked], vectors[picked], model_version=version, generation=generation)
        if not probe.ok:
            raise VerifyError(f"probe of {collection} at generation {generation} failed: {probe}")

    def _quality(
        self,
        report: PublishReport,
        collection: str,
        ckpt: Checkpoint,
        generation: int,
        live_version: str | None,
        quality: HeldOut | None,
    ) -> None:
        """The quality gate: held-out users recalled at the new generation with the new tower against
        the live generation with the live tower."""
        if quality is None or quality.num_users == 0 or live_version is None:
            return
        live_generation = self.writer.announced(collection).generation
        live_ckpt = self.registry.checkpoint(live_version)
        old_tower = UserTower(live_ckpt.load_net(), live_version, vocab=live_ckpt.vocab())
        new_tower = UserTower(ckpt.load_net(), ckpt.manifest.version, vocab=ckpt.vocab())
        new = evaluate_model(
            new_tower, MilvusSearcher(self.store, collection, generation=generation), quality, top_n=self.top_n
        )
        old = evaluate_model(
            old_tower, MilvusSearcher(self.store, collection, generation=live_generation), quality, top_n=self.top_n
        )
        report.quality = {"candidate": new.metrics.recall, "live": old.metrics.recall}
        if new.metrics.recall < old.metrics.recall - self.settings.quality_margin:
            raise VerifyError(
                f"quality gate: Recall@{self.top_n} {new.metrics.recall:.4f} < live {old.metrics.recall:.4f} "
                f"- margin {self.settings.quality_margin}"
            )
