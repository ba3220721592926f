"""Publishing a model version to Milvus with the swap discipline (rows keyed by external item id,
items past the TTL left out):
shadow ``<alias>_v<N>`` -> index (created, built in the background) -> load -> insert -> verify
(row count and probe at Strong consistency, quality) -> ``alter_alias`` -> previous kept for
rollback -> dropped after the grace period; :meth:`Publisher.seal` (a flush, once the caller
recorded the swap) lets the index build over sealed segments in the background. Nothing before
the swap waits for what visibility does not need: no flush, no synchronous index build.

A failure at any step leaves the alias (live) untouched; the half-built shadow is an orphan that
the next round's :meth:`Publisher.cleanup` drops. Only one publisher may run per alias."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model.checkpoint import Checkpoint, version_number
from model.data.types import HeldOut, IntArray
from model.evaluate import evaluate_model
from model.export import UserTower, item_table
from model.net import MindNet
from model.vocab import ItemVocab
from workers.infra.vector_store import DEFAULT_SEGMENT, MilvusSearcher, Rows, VectorStore
from workers.refresh.generations import Generations
from workers.refresh.registry import ModelRegistry
from workers.refresh.segments import SegmentMap
from workers.refresh.state import RefreshState, Superseded
from workers.settings import RefreshSettings

log = logging.getLogger(__name__)


class VerifyError(RuntimeError):
    """The shadow collection failed verification; live stays as it is."""


@dataclass
class PublishReport:
    version: str
    collection: str
    rows: int = 0
    previous: str | None = None
    swapped: bool = False
    phases: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    items: int = 0  # items the version serves
    closed: int = 0  # rows a delta closed (replaced or withdrawn)
    generation: int = 0  # announced with it (0: an epoch's build)
    written: dict[str, Rows] = field(default_factory=dict, repr=False)  # an epoch's rows, by segment

    @property
    def delta(self) -> bool:
        return self.previous == self.collection

    def timed(self, phase: str, began: float, on_phase: Callable[[str, float], None] | None = None) -> None:
        """Record ``phase`` as lasting since ``began`` (``perf_counter``), and tell ``on_phase``."""
        took = time.perf_counter() - began
        self.phases[phase] = round(took, 4)
        if on_phase is not None:
            on_phase(phase, took)


class Publisher:
    def __init__(
        self,
        store: VectorStore,
        registry: ModelRegistry,
        settings: RefreshSettings,
        *,
        segments: SegmentMap | None = None,
        top_n: int = 50,
        seed: int = 0,
        on_phase: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.segments = segments
        self.top_n = top_n
        self.rng = np.random.default_rng(seed)
        self._on_phase = on_phase

    def publish(self, ckpt: Checkpoint, state: RefreshState, quality: HeldOut | None = None) -> PublishReport:
        version = ckpt.manifest.version
        collection = self.registry.collection_for(version)
        report = PublishReport(version, collection)
        net = ckpt.load_net()
        t = time.perf_counter()
        table = item_table(net)
        vocab = ckpt.vocab()
        rows = vocab.active_rows(now=time.time(), ttl_s=self.settings.item_ttl_s)  # expired items leave
        ids = vocab.external(rows)  # the rows' item ids (keyed by item id and generation)
        vectors = table[rows]
        report.items = int(ids.shape[0])
        report.timed("export", t, self._on_phase)

        t = time.perf_counter()
        if self.store.has_collection(collection):  # leftover of a crashed round with this version
            self.store.drop_collection(collection)
        # Searchable first, filled second: an index must exist before a load, not be built (the
        # build runs in the background); rows inserted into a loaded collection are searchable
        # without a flush (Milvus seals and indexes them on its own schedule).
        self.store.create_collection(collection, net.cfg.dim)
        # A rebuilt collection starts at generation 0, announced with its own version.
        Generations(collection, version=version, history=[(0, version)]).save(self.store)
        self.store.build_index(collection, wait=False, rows=int(ids.shape[0]))
        self.store.load(collection)
        report.timed("index", t, self._on_phase)

        t = time.perf_counter()
        groups = self.segments.group(ids) if self.segments is not None else {DEFAULT_SEGMENT: ids}
        position = {int(i): n for n, i in enumerate(ids.tolist())}
        for part, part_ids in groups.items():
            at = np.fromiter((position[int(i)] for i in part_ids), dtype=np.int64, count=len(part_ids))
            report.rows += self.store.insert(collection, part_ids, vectors[at], version, segment=part)
            report.written[part] = Rows.of(part_ids, vectors[at], version, 0)
        report.timed("insert", t, self._on_phase)

        t = time.perf_counter()
        self.verify(collection, version, net, ids, vectors, report, quality, vocab)
        report.timed("verify", t, self._on_phase)

        t = time.perf_counter()
        report.previous = self.store.point_alias(self.registry.alias, collection)
        report.swapped = True
        if report.previous and report.previous != collection:
            state.superseded.append(Superseded(report.previous, time.time()))
        report.timed("swap", t, self._on_phase)

        log.info(
            "swapped %s -> %s (previous %s) %s",
            self.registry.alias,
            collection,
            report.previous,
            report.phases,
        )
        return report

    def seal(self, report: PublishReport) -> None:
        """Flush the published collection, after the swap and after the caller recorded it: seals the
        rows so the index builds over them in the background (searches meanwhile are exact)."""
        t = time.perf_counter()
        try:
            self.store.flush(report.collection)
        except Exception as exc:  # the swap stands; Milvus seals growing segments on its own schedule
            log.warning("flush of %s after the swap failed (Milvus will seal it later): %s", report.collection, exc)
        report.timed("seal", t, self._on_phase)

    def verify(
        self,
        collection: str,
        version: str,
        net: MindNet,
        ids: IntArray,
        vectors: np.ndarray,
        report: PublishReport,
        quality: HeldOut | None,
        vocab: ItemVocab,
    ) -> None:
        """Row count, a probe of random rows (each found by its own vector), then the quality gate:
        ``quality`` users (external ids) recalled by candidate and live, each with its own tower."""
        expected = int(ids.shape[0])
        if expected == 0:
            raise VerifyError(f"{collection}: no item to publish (every item expired?)")
        count = self.store.count(collection)
        if count != expected:
            raise VerifyError(f"{collection} holds {count} rows, expected {expected}")
        n_probe = min(self.settings.probe_items, expected)
        picked = np.sort(self.rng.choice(expected, size=n_probe, replace=False))
        probe = self.store.probe(collection, ids[picked], vectors[picked], model_version=version)
        if not probe.ok:
            raise VerifyError(f"probe of {collection} failed: {probe}")
        live = self.store.resolve_alias(self.registry.alias)
        if quality is None or quality.num_users == 0 or live is None or live == collection:
            return
        live_version = self.registry.version_of(live)
        if live_version is None:
            return
        live_ckpt = self.registry.checkpoint(live_version)
        live_tower = UserTower(live_ckpt.load_net(), live_version, vocab=live_ckpt.vocab())
        new_tower = UserTower(net, version, vocab=vocab)
        new = evaluate_model(new_tower, MilvusSearcher(self.store, collection), quality, top_n=self.top_n)
        old = evaluate_model(live_tower, MilvusSearcher(self.store, live), quality, top_n=self.top_n)
        report.quality = {"candidate": new.metrics.recall, "live": old.metrics.recall}
        if new.metrics.recall < old.metrics.recall - self.settings.quality_margin:
            raise VerifyError(
                f"quality gate: Recall@{self.top_n} {new.metrics.recall:.4f} < live {old.metrics.recall:.4f} "
                f"- margin {self.settings.quality_margin}"
            )

    def cleanup(self, state: RefreshState, now: float | None = None) -> list[str]:
        """Drop orphans (shadows of crashed or rejected rounds) and superseded collections past the
        grace period, keeping the newest ``keep_previous`` for rollback. Aliased ones are never dropped."""
        now = time.time() if now is None else now
        live = self.store.resolve_alias(self.registry.alias)
        state.superseded = [s for s in state.superseded if s.collection != live]
        self._adopt_unrecorded_previous(state, live, now)
        recent = sorted(state.superseded, key=lambda s: s.since, reverse=True)
        keep = {live} | {s.collection for s in recent[: self.settings.keep_previous]}
        keep |= {s.collection for s in recent if now - s.since < self.settings.grace_period_s}
        dropped = []
        for name in self.store.list_collections(self.registry.alias + "_v"):
            if name in keep or self.registry.version_of(name) is None or self.store.aliases_of(name):
                continue
            self.store.drop_collection(name)  # its announcements with it
            dropped.append(name)
        state.superseded = [s for s in state.superseded if s.collection not in dropped]
        return dropped

    def _adopt_unrecorded_previous(self, state: RefreshState, live: str | None, now: float) -> None:
        """Record as superseded our collections older than live that the state does not know.

        Shadows of crashed rounds are always newer than live (versions only grow, and every round
        cleans up before it publishes), so an older unrecorded one is a previous live whose record was
        lost: the worker died between ``alter_alias`` and the state write. Keep it for rollback."""
        live_version = self.registry.version_of(live) if live else None
        if live_version is None:
            return
        recorded = {s.collection for s in state.superseded}
        older = [
            name
            for name in self.store.list_collections(self.registry.alias + "_v")
            if name not in recorded
            and (version := self.registry.version_of(name)) is not None
            and version_number(version) < version_number(live_version)
        ]
        for name in sorted(older, key=lambda n: version_number(self.registry.version_of(n) or "v0"), reverse=True):
            log.warning("%s is older than live %s but not recorded: kept as superseded", name, live)
            state.superseded.append(Superseded(name, now))

    def rollback(self, state: RefreshState) -> tuple[str, str | None]:
        """Point the alias back at the most recently superseded collection that still exists."""
        for entry in sorted(state.superseded, key=lambda s: s.since, reverse=True):
            if self.store.has_collection(entry.collection):
                previous = self.store.point_alias(self.registry.alias, entry.collection)
                state.superseded = [s for s in state.superseded if s.collection != entry.collection]
                if previous:
                    state.superseded.append(Superseded(previous, time.time()))
                return entry.collection, previous
        raise RuntimeError("nothing to roll back to: no superseded collection is left")
