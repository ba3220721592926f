"""The refresh worker: quasi-real-time embeddings with a dual store.

Every ``interval_s`` (or as soon as ``min_new_events`` arrived, or on request: :func:`request_refresh`) it reads the new
clicks from the ingest state, trains the live model further on them (plus a replay sample of older
users), saves the result as model ``v<N+1>`` and publishes it through :class:`Publisher` (shadow
collection, verification, alias swap). Nothing new -> nothing built.

A round adds at most ``max_new_items_per_round`` items the live vocabulary does not know (table
rows and their optimiser state): it takes the new clicks oldest first (at most
``max_events_per_round``) and stops before the first click that would bring one more; the rest wait
in the ingest state, in order, for the next round, which is due at once when they are many. Items
that only appear in the touched users' histories (clicks the round has not taken) fill what is left
of that budget; a history item beyond it is left out of this round's training sequences (its own
round adds it). Oldest first rather than most clicked first: the round stays a prefix of the click
log, so what waits is exactly what lies after the cursor, kept by the ingest state and persisted by
nothing new; ranking by clicks would need a persisted queue of the deferred items, itself unbounded
under hostile input. A flood of one-click junk ids delays later new items by the rounds it fills,
never by more (mindstream_refresh_new_items_deferred_total{path="round"})."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from model.checkpoint import Checkpoint, Manifest, next_version, open_checkpoint, prune_versions
from model.data.types import HeldOut, IntArray, Sequences
from model.train import Trainer, train
from model.vocab import ItemVocab
from workers.infra.row_keys import MAX_GENERATION
from workers.infra.vector_store import VectorStore
from workers.ingest.history_store import HistoryReader
from workers.ingest.state_reader import Cursor
from workers.ingest.state_store import ClickColumns
from workers.refresh.delta import DeltaPublisher
from workers.refresh.fast_path import PLAUSIBLE_CLOCK_SKEW_S, FastPath
from workers.refresh.generations import Generations, PropertyStore
from workers.refresh.heap_profile import FILE_NAME as HEAP_PROFILE_FILE
from workers.refresh.heap_profile import HeapProfile
from workers.refresh.live_writer import FAST_PATH_SLOTS, LiveWriter, NoRollback
from workers.refresh.metrics import RefreshMetrics, in_progress
from workers.refresh.publish import Publisher, PublishReport, VerifyError
from workers.refresh.publish_lock import lock_path, publish_lock
from workers.refresh.registry import ModelRegistry
from workers.refresh.segments import OverflowWarning, SegmentMap
from workers.refresh.state import RefreshState
from workers.runtime import StopFlag, beat, nice_threads
from workers.settings import Settings

log = logging.getLogger(__name__)

CLICK_SAMPLE = 200  # clicks per round whose click -> version lag is observed


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


def release_round_memory() -> float:
    """After a round: collect its reference cycles, then give the C heap's free pages back to the OS
    (glibc ``malloc_trim``, where there is one); the seconds it took.

    A round allocates and frees hundreds of MB natively (Paddle tensors, the item table and its Adam
    state, numpy exports) and leaves a few cycles holding some of it until Python's next full
    collection; glibc keeps freed memory in its arenas. Between rounds the process therefore held its
    high-water mark and more (measured at 100k items: 740-890 MB, rising and falling with
    fragmentation; flat at ~530 MB with this after each round, docs/retention.md)."""
    began = time.perf_counter()
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    return time.perf_counter() - began


@dataclass
class RoundReport:
    events: int
    users: int
    published: PublishReport | None = None
    error: str | None = None
    train_seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)  # model directories deleted (refresh.keep_versions)
    phases: dict[str, float] = field(default_factory=dict)  # read, prepare, train (publish adds its own)
    click_to_version_s: list[float] = field(default_factory=list)  # a sample of the round's clicks
    deferred_items: int = 0  # new items left for a later round (refresh.max_new_items_per_round)

    def as_dict(self) -> dict[str, Any]:
        p = self.published
        return {
            "events": self.events,
            "users": self.users,
            "version": p.version if p else None,
            "swapped": bool(p and p.swapped),
            "delta": bool(p and p.delta),
            "rows_written": p.rows if p else 0,
            "items": p.items if p else 0,
            "phases": {**self.phases, **(p.phases if p else {})},
            "quality": p.quality if p else {},
            "error": self.error,
            "dropped": self.dropped,
            "pruned": self.pruned,
            "click_to_version_s": [round(x, 3) for x in self.click_to_version_s],
            "deferred_items": self.deferred_items,
        }


def import_checkpoint(src: Checkpoint, registry: ModelRegistry) -> Checkpoint:
    """Copy a trained checkpoint into the registry as its next version (the first served model)."""
    registry.root.mkdir(parents=True, exist_ok=True)
    version = next_version(registry.root)
    tmp = registry.root / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src.path, tmp)
    manifest = Manifest(**{**src.manifest.__dict__, "version": version, "parent": str(src.path)})
    (tmp / "manifest.json").write_text(manifest.to_json())
    tmp.rename(registry.root / version)
    ckpt = open_checkpoint(registry.root, version)
    registry.publish(ckpt)
    return ckpt


class RefreshWorker:
    def __init__(
        self,
        settings: Settings,
        store: VectorStore,
        reader: HistoryReader,
        *,
        replay: Sequences | None = None,
        replay_vocab: ItemVocab | None = None,
        quality: HeldOut | None = None,
        metrics: RefreshMetrics | None = None,
        fast_path: FastPath | None = None,
    ) -> None:
        """``replay``: older users mixed into each round, in the rows of ``replay_vocab`` (default:
        rows are item ids); ``quality``: held-out users in external item ids for the quality gate;
        ``fast_path``: run between (and during) major rounds by :meth:`run`, in a thread of its own."""
        self.settings = settings
        self.cfg = settings.refresh
        self.store = store
        self.reader = reader
        self.registry = ModelRegistry.from_settings(settings)
        self.state_path = RefreshState.file(settings.refresh_dir)
        self._handled_request: str | None = None  # the newest refresh request this process ran a round for
        self.segments = SegmentMap(SegmentMap.file(settings.refresh_dir), self.cfg.max_segments)
        self._segments_warning = OverflowWarning()
        self.replay = replay
        self.replay_vocab = replay_vocab
        self.quality = quality
        self.metrics = metrics
        self.fast_path = fast_path
        self.writer = LiveWriter(store, settings.mind.dim)
        if fast_path is not None:
            fast_path.writer = self.writer  # one writer: its lock orders fast-path steps and deltas
        on_phase = metrics.observe_phase if metrics else None
        self.publisher = Publisher(
            store,
            self.registry,
            self.cfg,
            segments=self.segments,
            top_n=settings.eval.top_n,
            seed=settings.train.seed,
            on_phase=on_phase,
        )
        self.delta = DeltaPublisher(
            store,
            self.registry,
            self.cfg,
            self.writer,
            segments=self.segments,
            top_n=settings.eval.top_n,
            seed=settings.train.seed,
            on_phase=on_phase,
        )
        self.rng = np.random.default_rng(settings.train.seed)
        self._last_round = time.monotonic()

    # -- bootstrap and triggers -------------------------------------------------------------

    def live_checkpoint(self) -> Checkpoint | None:
        """The version readers use: announced on the live collection, else the one it is named after."""
        live = self.store.resolve_alias(self.registry.alias)
        if live is None:
            return None
        version = self.writer.announced(live).version or self.registry.version_of(live)
        return self.registry.checkpoint(version) if version else None

    def bootstrap(self, base: Checkpoint | None) -> PublishReport | None:
        """Make sure something is live: publish the newest served model, or import ``base`` as v1."""
        if self.live_checkpoint() is not None:
            return None
        ckpt = self.registry.latest()
        if ckpt is None:
            if base is None:
                raise RuntimeError("no model to serve: train one first (mindstream train)")
            ckpt = import_checkpoint(base, self.registry)
        with self._publishing():
            state = RefreshState.load(self.state_path)
            report = self.publisher.publish(ckpt, state)
            state.save(self.state_path)
            self._seed(report)
            self.publisher.seal(report)
        self._set_live(ckpt)
        return report

    def prune_versions(self) -> list[str]:
        """Delete model directories beyond the newest ``keep_versions`` whose collection Milvus no longer
        holds: the live version, the rollback targets and those in their grace period always stay (as
        do ``LATEST`` and ``BEST``). Runs under the publish lock, after :meth:`Publisher.cleanup`."""
        held: set[str] = set()
        for name in self.store.list_collections(self.registry.alias + "_v"):
            if (version := self.registry.version_of(name)) is not None:
                held.add(version)
            state = Generations.load(self.store, name)  # served there (a delta) and its rollback target
            target = state.rollback_target()
            held.update(v for v in (state.version, target[1] if target else None) if v is not None)
        live = self.store.resolve_alias(self.registry.alias)
        if live is not None and (version := self.registry.version_of(live)) is not None:
            held.add(version)
        pruned = prune_versions(self.registry.root, self.cfg.keep_versions, protect=held)
        self.registry.forget(pruned)
        if pruned:
            log.info("deleted model versions %s (kept the newest %d and %s)", pruned, self.cfg.keep_versions, held)
        return pruned

    def _publishing(self) -> contextlib.AbstractContextManager[None]:
        """The cross-process publish lock of the alias (waits for a gateway insert_data or drop)."""
        return publish_lock(lock_path(self.settings.refresh_dir, self.registry.alias), wait=True)

    def request(self) -> str:
        """Ask the running loop for a refresh now (what ``mindstream refresh --now`` does)."""
        return request_refresh(self.store, self.registry.alias)

    def _requested(self) -> bool:
        """Whether a refresh request not handled by this process is on the live collection (one seen
        at start counts: it may have been made while the worker was down)."""
        live = self.store.resolve_alias(self.registry.alias)
        request = self.store.properties(live).get(REFRESH_REQUEST) if live is not None else None
        if request is None or request == self._handled_request:
            return False
        self._handled_request = request
        return True

    def due(self, state: RefreshState) -> tuple[bool, bool]:
        """``(run, forced)``: forced by a refresh request; else new events and interval or volume."""
        if self._requested():
            return True, True
        new = self.reader.event_count() - state.events_seen
        if new <= 0:
            return False, False
        waited = time.monotonic() - self._last_round
        return waited >= self.cfg.interval_s or new >= self.cfg.min_new_events, False

    # -- one round ----------------------------------------------------------------------------

    def training_set(
        self, users: list[int], vocab: ItemVocab, new_limit: int | None = None
    ) -> tuple[Sequences, ItemVocab, IntArray]:
        """Touched users' recent histories, oversampled to about half of the users, plus replay, in
        the rows of the returned vocabulary: ``vocab`` grown by the items of those histories (they
        are read after the round's events and may hold clicks the round has not taken, including
        brand-new items), at most ``new_limit`` of them (the first to appear; None = all). Items left
        out are left out of the sequences too; the third value: their ids."""
        # Arrays throughout: a round reads users x train_history clicks (10M at 50k users); as Python
        # ints in lists they cost ~40 bytes each, twice over (docs/retention.md).
        seqs = self.reader.history_arrays(users, self.cfg.train_history)
        seen = np.concatenate(seqs) if seqs else np.empty(0, dtype=np.int64)
        new = vocab.new_ids(seen)
        del seen
        added = new if new_limit is None else new[: max(new_limit, 0)]
        vocab = vocab.extend(added, seen_at=time.time())
        left_out = new[added.shape[0] :]
        min_clicks = self.settings.train.min_clicks
        in_rows = (vocab.rows(s) for s in seqs)
        kept = ((u, r[r > 0]) for u, r in zip(users, in_rows, strict=True))  # all of it unless new_limit bit
        fresh = [(u, r) for u, r in kept if r.shape[0] >= min_clicks]
        del seqs
        replay: list[tuple[int, IntArray]] = []
        if self.replay is not None and self.cfg.replay_users:
            n = min(self.cfg.replay_users, self.replay.num_users)
            for i in self.rng.choice(self.replay.num_users, size=n, replace=False).tolist():
                seq = self.replay.sequence(i)
                ids = self.replay_vocab.external(seq) if self.replay_vocab is not None else seq
                known = vocab.rows(ids)
                replay.append((int(self.replay.user_ids[i]), known[known > 0]))  # expired items left out
        repeat = max(1, len(replay) // max(len(fresh), 1))
        rows = fresh * repeat + [r for r in replay if r[1].shape[0]]
        if not rows:
            raise ValueError("no user with enough clicks to train on")
        sequences = Sequences.from_arrays([u for u, _ in rows], [s for _, s in rows], item_count=len(vocab))
        return sequences, vocab, left_out

    def round_vocab(
        self, live: Checkpoint, events: ClickColumns, live_vocab: ItemVocab | None = None
    ) -> tuple[ItemVocab, IntArray | None]:
        """The live vocabulary (``live_vocab``, else read from ``live``) grown by the round's items, with
        their clicks recorded; and, when expired rows reached ``compact_share`` of the table, the rows to
        keep (a compaction)."""
        now = time.time()
        items = events.item_ids
        base = live.vocab() if live_vocab is None else live_vocab
        vocab = base.extend(items, seen_at=now).touch(items, np.full(items.shape[0], now))
        if self.cfg.item_ttl_s is None:
            return vocab, None
        active = vocab.active_rows(now=now, ttl_s=self.cfg.item_ttl_s)
        if vocab.items - active.shape[0] < self.cfg.compact_share * max(vocab.items, 1):
            return vocab, None
        return vocab, active

    def run_round(self, *, force: bool = False) -> RoundReport | None:
        """One round (the ``round`` activity, memory release included; the ``swap`` inside it)."""
        with in_progress(self.metrics, "round"):
            try:
                with self._publishing():
                    return self._round(force)
            finally:
                log.debug("round memory released in %.3f s", release_round_memory())

    def _round(self, force: bool) -> RoundReport | None:
        state = RefreshState.load(self.state_path)
        dropped = self.publisher.cleanup(state)
        if self.metrics and dropped:
            self.metrics.orphans_dropped.inc(len(dropped))
        pruned = self.prune_versions()
        began = time.perf_counter()
        events, cursor = self.reader.columns_since(state.get_cursor(), limit=self.cfg.max_events_per_round)
        self._last_round = time.monotonic()
        if not len(events) and not force:
            state.save(self.state_path)
            return None
        live = self.live_checkpoint()
        if live is None:
            raise RuntimeError("nothing is live: bootstrap first")
        live_vocab = live.vocab()
        events, cursor, deferred = self._within_new_items(state, live_vocab, events, cursor)
        read_s = time.perf_counter() - began
        users = np.unique(events.user_ids).tolist()
        report = RoundReport(len(events), len(users), dropped=dropped, pruned=pruned)
        self._phase(report, "read", read_s)
        if self.metrics:
            self.metrics.rounds.inc()
        ckpt = self._train(report, state, live, events, users, live_vocab, deferred)
        with in_progress(self.metrics, "swap"):
            try:
                report.published = self._publish(ckpt, state)
            except VerifyError as exc:
                report.error = str(exc)
                log.error("refresh aborted, live unchanged: %s", exc)
                if self.metrics:
                    self.metrics.failures.labels(reason="verify").inc()
                state.rounds += 1
                state.save(self.state_path)  # the cursor stays: the next round retries with these events
                return report
            self._click_to_version(report, events)
            state.cursor = cursor.to_json()
            state.events_seen += len(events)
            state.rounds += 1
            state.swaps += 1
            state.save(self.state_path)
            self._set_live(ckpt)
            self.publisher.seal(report.published)  # after the state write: alter_alias and the record stay close
        report.pruned += self.prune_versions()  # the new version counts among the newest kept
        if self.metrics:
            self.metrics.swaps.inc()
            self.metrics.events_trained.inc(len(events))
        return report

    def _publish(self, ckpt: Checkpoint, state: RefreshState) -> PublishReport:
        """A delta into the live collection when it takes one (``refresh.publication``, a keyed collection,
        fewer than ``epoch_rounds`` deltas since its build); else a new epoch: a full build and a swap."""
        live = self.store.resolve_alias(self.registry.alias)
        delta = (
            self.cfg.publication == "delta"
            and live is not None
            and state.epoch_deltas < self.cfg.epoch_rounds
            and self.store.is_keyed(live)
            and self.writer.announced(live).generation + FAST_PATH_SLOTS <= MAX_GENERATION
        )
        if delta and live is not None:
            report = self.delta.publish(ckpt, live, quality=self.quality)
            state.epoch_deltas += 1
            return report
        report = self.publisher.publish(ckpt, state, quality=self.quality)
        state.epoch_deltas = 0
        if report.previous:
            self.writer.forget(report.previous)
        self._seed(report)
        return report

    def _seed(self, report: PublishReport) -> None:
        """Hand an epoch's rows to the writer (its first delta need not read them back), then let them go."""
        if self.store.is_keyed(report.collection):
            self.writer.seed(report.collection, report.written)
        report.written = {}

    def _within_new_items(
        self, state: RefreshState, vocab: ItemVocab, events: ClickColumns, cursor: Cursor
    ) -> tuple[ClickColumns, Cursor, IntArray]:
        """The longest prefix of the round's clicks that brings at most ``max_new_items_per_round`` items
        ``vocab`` does not know, with its cursor (read again, up to there: the reader gives cursors only
        at the end of a read), and the new items of the clicks read that are left for a later round."""
        cap = self.cfg.max_new_items_per_round
        cut = vocab.prefix_within(events.item_ids, cap)
        if cut == len(events):
            return events, cursor, np.empty(0, dtype=np.int64)
        seen = vocab.new_ids(events.item_ids)
        while cut < len(events):  # a second read equals the first's prefix (files only grow at their end)
            events, cursor = self.reader.columns_since(state.get_cursor(), limit=cut)
            cut = vocab.prefix_within(events.item_ids, cap)
        taken = vocab.new_ids(events.item_ids)
        deferred = np.setdiff1d(seen, taken)
        log.info("round takes %d clicks (%d new items); %d new items wait", len(events), taken.shape[0], len(deferred))
        return events, cursor, deferred

    def _train(
        self,
        report: RoundReport,
        state: RefreshState,
        live: Checkpoint,
        events: ClickColumns,
        users: list[int],
        live_vocab: ItemVocab,
        deferred: IntArray,
    ) -> Checkpoint:
        """The round's vocabulary and training set, the live model trained further on them, saved as the
        next version (the phases ``prepare`` and ``train``); ``deferred``: new items of clicks read but
        not taken (:meth:`_within_new_items`)."""
        t0 = time.perf_counter()
        cfg = self.settings.train.model_copy(update={"seed": self.settings.train.seed + state.rounds + 1})
        vocab, keep = self.round_vocab(live, events, live_vocab)
        budget = self.cfg.max_new_items_per_round - (len(vocab) - len(live_vocab))  # before a compaction
        if keep is not None:
            vocab, _ = vocab.compact(keep)
            log.info("compacting the item table: %d expired rows dropped", live.manifest.item_count - len(vocab))
        sequences, vocab, left_out = self.training_set(users, vocab, budget)
        report.deferred_items = int(np.union1d(deferred, left_out).shape[0])
        if self.metrics and report.deferred_items:
            self.metrics.new_items_deferred.labels(path="round").inc(report.deferred_items)
        trainer = Trainer(sequences, self.settings.mind, cfg, init=live, vocab=vocab, keep_rows=keep)
        self._segments(events)
        t1 = time.perf_counter()
        self._phase(report, "prepare", t1 - t0)
        train(trainer, batches=self.cfg.train_batches, checkpoint_dir=None)
        ckpt = trainer.checkpoint(self.registry.root, {"events": len(events), "users": len(users)}, best=False)
        self.registry.publish(ckpt)  # before any swap: readers on other hosts fetch it from the store
        report.train_seconds = time.perf_counter() - t1
        self._phase(report, "train", report.train_seconds)
        return ckpt

    def _segments(self, events: ClickColumns) -> None:
        """Record the round's item segments (admitting new ones up to ``max_segments``); count and warn
        about the clicks whose segment is past it."""
        overflow = self.segments.update(events.segments)
        if self.metrics:
            self.metrics.segments.set(len(self.segments.admitted()))
            if overflow.clicks:
                self.metrics.segments_overflow.inc(overflow.clicks)
        self._segments_warning.note(overflow, self.cfg.max_segments)

    def _click_to_version(self, report: RoundReport, events: ClickColumns) -> None:
        """Click -> live in this version, for a sample of the round's clicks (plausible event times)."""
        now = time.time()
        times = events.ts / 1000.0
        times = times[np.abs(now - times) <= PLAUSIBLE_CLOCK_SKEW_S]
        if times.size > CLICK_SAMPLE:
            times = self.rng.choice(times, size=CLICK_SAMPLE, replace=False)
        lags = np.maximum(now - times, 0.0)
        report.click_to_version_s = lags.tolist()
        if self.metrics:
            for lag in lags.tolist():
                self.metrics.click_to_version.observe(lag)

    def _phase(self, report: RoundReport, phase: str, seconds: float) -> None:
        report.phases[phase] = round(seconds, 4)
        if self.metrics:
            self.metrics.observe_phase(phase, seconds)

    def _set_live(self, ckpt: Checkpoint) -> None:
        if self.metrics:
            self.metrics.set_live(ckpt.manifest.version, ckpt.manifest.created_at)

    def rollback(self) -> tuple[str, str | None]:
        """Serve the previous version again: the previous announcement of the live collection (a delta
        undone: one announcement, readers switch within their alias check), else the previous epoch."""
        with self._publishing():
            live = self.store.resolve_alias(self.registry.alias)
            if live is not None:
                try:
                    (_, target), (_, was) = self.writer.rollback(live)
                    return f"{live}@{target or self.registry.version_of(live)}", f"{live}@{was}"
                except NoRollback:
                    pass
            state = RefreshState.load(self.state_path)
            target, previous = self.publisher.rollback(state)
            state.epoch_deltas = 0
            state.save(self.state_path)
        return target, previous

    def run(self, stop: StopFlag, nice: int = 0) -> None:
        """Poll the triggers until asked to stop; a failed round is logged and counted, not fatal.

        ``nice``: the major rounds (training, publishing) run at this CPU niceness so that serving
        comes first; on Linux the fast path keeps the process's priority (niceness is per thread)."""
        live = self.live_checkpoint()
        if live is not None:
            self._set_live(live)
        fast = threading.Thread(target=self._fast_loop, args=(stop,), name="fast-path", daemon=True)
        if self.fast_path is not None:
            fast.start()
        if nice:  # every thread but the fast path's (training threads started later inherit it)
            nice_threads(nice, keep={fast.native_id} if fast.native_id is not None else set())
        heap = HeapProfile(self.state_path.parent / HEAP_PROFILE_FILE) if self.cfg.heap_profile else None
        if heap is not None:
            heap.start()
        try:
            self._major_loop(stop, heap)
        finally:
            if fast.is_alive():
                fast.join(timeout=30)
            if heap is not None:
                heap.stop()

    def _fast_loop(self, stop: StopFlag) -> None:
        """Fast-path steps every ``fast_path_interval_s`` until asked to stop (also during a round)."""
        assert self.fast_path is not None
        while not stop.wait(self.cfg.fast_path_interval_s):
            beat()  # the fast path beats during a long round too
            try:
                report = self.fast_path.step()
                if report is not None and self.metrics:
                    self.metrics.observe_phase("fast_path", report.seconds)
            except Exception:
                log.exception("fast-path step failed; the live generation is unchanged, retrying")
                if self.metrics:
                    self.metrics.failures.labels(reason="fast_path").inc()

    def _major_loop(self, stop: StopFlag, heap: HeapProfile | None = None) -> None:
        while not stop.is_set():
            beat()
            state = RefreshState.load(self.state_path)
            run, forced = self.due(state)
            if run:
                try:
                    report = self.run_round(force=forced)
                    if report is not None:
                        log.info("refresh round: %s", report.as_dict())
                        if heap is not None:
                            sample = heap.after_round()
                            log.info("heap profile: %s", {k: v for k, v in sample.items() if k.endswith("_mb")})
                except Exception:
                    log.exception("refresh round failed; live unchanged, retrying next round")
                    if self.metrics:
                        self.metrics.failures.labels(reason="error").inc()
            stop.wait(self.cfg.poll_s)

    def close(self) -> None:
        self.segments.close()
        if self.fast_path is not None:
            self.fast_path.close()


REFRESH_REQUEST = "mindstream.refresh_request"  # property of the live collection: the newest request's id


class AliasedProperties(PropertyStore, Protocol):
    def resolve_alias(self, alias: str) -> str | None: ...


def request_refresh(store: AliasedProperties, alias: str) -> str:
    """Ask a running refresh loop (on any host) for a round now: a new request id as a property of the
    live collection, which the loop polls. Returns the id; raises :class:`NothingLive` without a live
    collection (the loop bootstraps one by itself)."""
    live = store.resolve_alias(alias)
    if live is None:
        raise NothingLive(f"alias {alias} points at no collection: nothing to refresh yet")
    request = uuid.uuid4().hex
    store.set_property(live, REFRESH_REQUEST, request)
    return request


class NothingLive(RuntimeError):
    """No live collection to attach a refresh request to."""
