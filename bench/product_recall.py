"""Issue 32's goals on the live stack: item withdrawal latency, and the cost of filters and ``exclude_seen``.

The ``mindstream up`` stack (``bench.stack.LiveStack``: refresh, ingest, catalogue, recall and gateway as
their own processes) on ``--items`` items, every item announced on the items topic with a segment and two
categories; a delta round writes that metadata onto the rows (what the filters search on); ``--users``
users click ``--history`` items each (what ``user_ids`` and ``exclude_seen`` read).

* **Withdrawal** (goal p99 <= 5 s): with plain recall requests flowing (``--rate`` over Kafka, from the
  load process below), ``--withdrawals`` items that recall is returning, one at a time, are made
  unavailable (an ``ItemEvent`` on the items topic); per item, the time from its produce until neither
  path returns it (Kafka and HTTP, each probed in a loop with the request that returned it, and the
  item counted gone on a path only once it stayed gone for ``--settle`` s). Every probe reply after that
  is checked for every item withdrawn so far (``leaks``: a withdrawn item seen again while unavailable).
  Then each item is made available again, one at a time: time until both paths return it again.
* **Recall latency per kind** (goal p99 within 1.2x of plain at the same rate): plain, filtered (segment
  include, category include, ``exclude_items``) and ``exclude_seen`` requests, by ``hist_item`` and by
  ``user_ids``, each kind ``--duration`` s at ``--rate`` req/s after ``--warmup`` s, one kind after the
  other, the whole sequence ``--rounds`` times (a drift of the machine spreads over every kind; each
  kind's figures are the median of its rounds'). The load generator runs in a process of its own
  (``bench.recall_latency.run_rate``: open loop, latency from each request's scheduled send time): a
  thread beside the stack's probes measured itself (+150 ms on a 44 ms p99). Ratios compare each kind's
  p99 with plain's of the same request source.

The load average is recorded before and after: the figures mean something on an idle machine only.

    python -m bench.product_recall                 # 100k items: bench/results/product_recall.json
    python -m bench.product_recall --quick         # a smoke run of a few minutes: results/quick/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

import numpy as np

from bench.common import RESULTS, emit, write_json
from bench.recall_latency import run_rate
from bench.stack import LiveStack, StackConfig, percentiles, wait_serving
from schemas.codec import encode
from schemas.messages import ClickEvent, ItemEvent, RecallFilters, RecallReply, RecallRequest
from workers.catalogue.reader import CatalogueReader
from workers.infra.kafka import close_producer, make_producer
from workers.ingest.state_reader import StateReader
from workers.recall.client import RecallClient, RecallError
from workers.settings import KafkaSettings, RecallSettings

NAME: Final = "product_recall"
WITHDRAWAL_GOAL_S: Final = 5.0
RATIO_GOAL: Final = 1.2
SEGMENTS: Final = ("eu", "us", "apac")
FIRST_USER: Final = 50_000_000  # the history users' ids: past any user of the synthetic stream
EXCLUDED_ITEMS: Final = 50  # exclude_items per filtered request
QUICK: Final = {
    "items": 5000,
    "base_batches": 20,
    "base_users": 2000,
    "users": 100,
    "withdrawals": 5,
    "rate": 30.0,
    "warmup": 2.0,
    "duration": 6.0,
    "rounds": 1,
}


def segment_of(item: int) -> str:
    return SEGMENTS[item % len(SEGMENTS)]


def categories_of(item: int) -> list[str]:
    """Two categories per item: one of 20 genres and one of 7 tags."""
    return [f"g{item % 20}", f"t{item % 7}"]


def item_event(item: int, available: bool) -> ItemEvent:
    """The item's whole state: the same metadata in every event, so a withdrawal changes availability only."""
    return ItemEvent(
        item_id=item,
        ts=int(time.time() * 1000),
        available=available,
        title=f"Item {item}",
        categories=categories_of(item),
        segment=segment_of(item),
    )


# -- the load generator, a process of its own ------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    """What the load process sends: each kind ``duration_s`` at ``rate`` after ``warmup_s`` (one after the
    other), ``rounds`` times; with ``until_stopped``, the first kind in ``duration_s`` chunks until the
    stop event."""

    kafka: KafkaSettings
    recall: RecallSettings
    rate: float
    warmup_s: float
    duration_s: float
    kinds: dict[str, list[RecallRequest]]
    rounds: int = 1
    until_stopped: bool = False


def generate_load(plan: LoadPlan, stop: Event, out: Queue[Any]) -> None:
    """The load process: ``"ready"`` once its client is answered, then the per-kind summaries
    (``bench.recall_latency.run_rate``'s, one per round or chunk) as one dict."""
    with RecallClient(plan.kafka, plan.recall) as client:
        client.recall(hist_item=[[1, 2, 3]], timeout=60)
        out.put("ready")
        results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in plan.kinds}
        if plan.until_stopped:
            kind, reqs = next(iter(plan.kinds.items()))
            while not stop.is_set():
                results[kind].append(run_rate(client, plan.rate, plan.duration_s, reqs))
        else:
            for _ in range(plan.rounds):
                for kind, reqs in plan.kinds.items():
                    run_rate(client, plan.rate, plan.warmup_s, reqs)
                    results[kind].append(run_rate(client, plan.rate, plan.duration_s, reqs))
        out.put(results)


class LoadProcess:
    """``with LoadProcess(plan) as load: ...; load.result()`` (the process is ended on exit if still alive)."""

    def __init__(self, plan: LoadPlan, ready_timeout_s: float = 180.0) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of this process is shared
        self.stop = ctx.Event()
        self.out: Queue[Any] = ctx.Queue()
        self.proc = ctx.Process(target=generate_load, args=(plan, self.stop, self.out), name="recall-load")
        self.ready_timeout_s = ready_timeout_s

    def __enter__(self) -> LoadProcess:
        self.proc.start()
        if self.out.get(timeout=self.ready_timeout_s) != "ready":
            raise RuntimeError("the load process did not start")
        return self

    def result(self, timeout_s: float) -> dict[str, Any]:
        """Stop (an ``until_stopped`` plan ends its chunk) and wait for the summaries."""
        self.stop.set()
        result: dict[str, Any] = self.out.get(timeout=timeout_s)
        self.proc.join(30)
        return result

    def __exit__(self, *exc: object) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)


# -- probing both paths ------------------------------------------------------------------------------


class Paths:
    """The same recall over Kafka (a ``RecallClient``) and over HTTP (the gateway's ``/rec/recall``)."""

    def __init__(self, client: RecallClient, http_url: str, top_k: int) -> None:
        self.client = client
        self.url = f"{http_url}/rec/recall"
        self.top_k = top_k

    def kafka(self, history: list[int]) -> list[int]:
        return self.client.recall(hist_item=[history], top_k=self.top_k).items[0]

    def http(self, history: list[int]) -> list[int]:
        body = json.dumps({"hist_item": [history], "top_k": self.top_k}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return RecallReply.model_validate_json(r.read()).items[0]

    def both(self, history: list[int]) -> dict[str, list[int]]:
        return {"kafka": self.kafka(history), "http": self.http(history)}


@dataclass
class Withdrawals:
    """What the withdrawal phase saw."""

    gone_s: list[float]
    gone_s_by_path: dict[str, list[float]]
    back_s: list[float]
    leaks: int = 0  # replies holding an item after it was seen gone, while it was unavailable
    timeouts: int = 0  # items not gone (or not back) within the probe timeout
    probes: int = 0
    probe_errors: int = 0  # probes answered with an error or not at all (retried)


def until(
    paths: Paths,
    history: list[int],
    item: int,
    present: bool,
    t0: float,
    settle_s: float,
    timeout_s: float,
    seen: Withdrawals,
    check: Callable[[list[int]], None],
) -> dict[str, float | None]:
    """Probe both paths until ``item`` is in (``present``) or out of each path's reply and stayed so
    ``settle_s``: per path the time since ``t0`` it first did so for good (None: not within
    ``timeout_s``). Probes and failed probes are counted in ``seen``; ``check`` looks at every reply."""
    since: dict[str, float | None] = {"kafka": None, "http": None}
    while True:
        for path in since:
            seen.probes += 1
            try:
                items = paths.kafka(history) if path == "kafka" else paths.http(history)
            except (RecallError, TimeoutError, OSError):
                seen.probe_errors += 1
                continue
            now = time.monotonic()
            check(items)
            if (item in items) == present:
                since[path] = since[path] or now
            else:
                since[path] = None
        now = time.monotonic()
        if all(s is not None and now - s >= settle_s for s in since.values()):
            return {p: round(s - t0, 3) for p, s in since.items() if s is not None}
        if now - t0 > timeout_s:
            return {p: None for p in since}
        time.sleep(0.02)


def withdraw_and_return(
    stack: LiveStack, paths: Paths, histories: list[list[int]], count: int, settle_s: float, timeout_s: float
) -> Withdrawals:
    """``count`` items recall returns, withdrawn one at a time, then made available one at a time."""
    producer = make_producer(stack.kafka.client_config(), {"linger.ms": 0})
    topic = stack.kafka.items_topic
    gone: set[int] = set()  # withdrawn and seen gone on both paths
    out = Withdrawals([], {"kafka": [], "http": []}, [])

    def check(items: list[int]) -> None:
        out.leaks += len(gone.intersection(items))

    def publish(item: int, available: bool) -> float:
        event = item_event(item, available)
        began = time.monotonic()
        producer.produce(topic, key=event.kafka_key(), value=encode(event))
        producer.flush(10)
        return began

    picked: list[tuple[int, list[int]]] = []
    for history in histories:
        if len(picked) == count:
            break
        replies = paths.both(history)
        taken = {i for i, _ in picked}
        head = next((i for i in replies["kafka"] if i in replies["http"] and i not in taken), None)
        if head is not None:
            picked.append((head, history))
    try:
        for item, history in picked:
            t0 = publish(item, available=False)
            at = until(paths, history, item, False, t0, settle_s, timeout_s, out, check)
            if None in at.values():
                out.timeouts += 1
                continue
            out.gone_s.append(max(v for v in at.values() if v is not None))
            for path, seconds in at.items():
                out.gone_s_by_path[path].append(seconds or 0.0)
            gone.add(item)
        for item, history in picked:  # still withdrawn, all of them: none may come back
            if item in gone:
                until(paths, history, item, False, time.monotonic(), settle_s, timeout_s, out, check)
        for item, history in picked:
            gone.discard(item)
            t0 = publish(item, available=True)
            at = until(paths, history, item, True, t0, 0.0, timeout_s, out, check)
            if None in at.values():
                out.timeouts += 1
            else:
                out.back_s.append(max(v for v in at.values() if v is not None))
    finally:
        for item, _ in picked:  # whatever happened, the catalogue ends as it began
            publish(item, available=True)
        close_producer(producer, 10)
    return out


# -- the setup ---------------------------------------------------------------------------------------


def wait_for(what: str, ready: Callable[[], bool], stack: LiveStack, timeout_s: float) -> float:
    """Poll ``ready`` (the stack's workers checked alive) until true; the seconds it took."""
    began = time.monotonic()
    while not ready():
        stack.check_alive()
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.5)
    return round(time.monotonic() - began, 1)


def announce_catalogue(stack: LiveStack, items: int, timeout_s: float) -> float:
    """Every item on the items topic, available, with its metadata; until the catalogue state has them all."""
    producer = make_producer(stack.kafka.client_config(), {"linger.ms": 20})
    try:
        for item in range(1, items + 1):
            event = item_event(item, available=True)
            while True:
                try:
                    producer.produce(stack.kafka.items_topic, key=event.kafka_key(), value=encode(event))
                    break
                except BufferError:
                    producer.poll(0.05)
    finally:
        close_producer(producer, 60)
    with CatalogueReader(stack.settings.state_dir, stack.kafka.items_topic) as reader:
        return wait_for("the catalogue state to hold every item", lambda: reader.counts()[0] >= items, stack, timeout_s)


def click_histories(stack: LiveStack, users: int, history: int, seed: int) -> dict[int, list[int]]:
    """``users`` new users click ``history`` items each, the items of a synthetic user's sequence
    (``stack.spec``'s interest clusters); their histories as the ingest state reads them."""
    from model.data.synthetic import SyntheticSpec, iter_events

    spec = SyntheticSpec(**{**stack.spec.__dict__, "num_users": users * 6, "seed": stack.spec.seed + seed})
    by_user: dict[int, list[int]] = {}
    for chunk in iter_events(spec, chunk_size=10_000):
        for user, item in zip(chunk.user_ids.tolist(), chunk.item_ids.tolist(), strict=True):
            by_user.setdefault(user, []).append(item)
    chosen = [seq[:history] for seq in by_user.values() if len(seq) >= history][:users]
    if len(chosen) < users:
        raise ValueError(f"only {len(chosen)} synthetic users with {history} clicks")
    producer = make_producer(stack.kafka.client_config(), {"linger.ms": 5})
    now_ms = int(time.time() * 1000)
    sent = {FIRST_USER + n: seq for n, seq in enumerate(chosen)}
    try:
        for user, seq in sent.items():
            for n, item in enumerate(seq):
                click = ClickEvent(event_id=f"pr-{user}-{n}", user_id=user, item_id=item, ts=now_ms - len(seq) + n)
                producer.produce(stack.kafka.clicks_topic, key=click.kafka_key(), value=encode(click))
    finally:
        close_producer(producer, 30)
    maxlen = stack.settings.mind.maxlen
    with StateReader(stack.settings.state_dir, stack.kafka.clicks_topic) as reader:
        users_sent = list(sent)

        def ingested() -> bool:
            return all(len(h) == history for h in reader.histories(users_sent, history))

        wait_for("the ingest state to hold the histories", ingested, stack, 300)
        return {u: reader.history(u, maxlen) for u in sent}


def rows_carry_metadata(stack: LiveStack, sample: Sequence[int]) -> bool:
    """Whether the served rows of ``sample`` carry their catalogue metadata (what the filters search on)."""
    live = stack.live()
    if live is None or not stack.store.has_metadata(live):
        return False
    visible = stack.store.visible_at(live, stack.generation(live))
    found = stack.store.metadata_where(live, f"item_id in {list(sample)} and {visible}")
    want = {i: (segment_of(i), tuple(categories_of(i))) for i in sample}
    return all(found.get(i) == meta for i, meta in want.items())


def request_kinds(
    histories: dict[int, list[int]], items: int, top_k: int, rng: np.random.Generator
) -> dict[str, list[RecallRequest]]:
    """Per kind, one request per history user (one user each)."""
    hist = list(histories.values())
    users = list(histories)
    excluded = [sorted(rng.choice(items, EXCLUDED_ITEMS, replace=False) + 1) for _ in hist]
    by_hist: dict[str, tuple[RecallFilters | None, bool | None]] = {  # kind -> (filters, exclude_seen)
        "plain_hist": (None, None),
        "filter_segment_hist": (RecallFilters(include_segments=["eu"]), None),
        "filter_category_hist": (RecallFilters(include_categories=["g1", "g2"]), None),
        "exclude_seen_hist": (None, True),
    }
    kinds = {
        kind: [RecallRequest(hist_item=[h], top_k=top_k, filters=filters, exclude_seen=seen) for h in hist]
        for kind, (filters, seen) in by_hist.items()
    }
    kinds["exclude_items_hist"] = [
        RecallRequest(hist_item=[h], top_k=top_k, filters=RecallFilters(exclude_items=[int(i) for i in ex]))
        for h, ex in zip(hist, excluded, strict=True)
    ]
    kinds["plain_users"] = [RecallRequest(user_ids=[u], top_k=top_k) for u in users]
    kinds["exclude_seen_users"] = [RecallRequest(user_ids=[u], top_k=top_k, exclude_seen=True) for u in users]
    return kinds


def _median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return round(float(np.median(values)), 2)


def latency_table(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per kind, over its rounds: the median p50/p99 (ms) and the ratio of that p99 to plain's (same
    request source); each round's p99; requests, errors and empty replies summed."""
    p99 = {kind: _median(rounds, "latency_ms", "p99") for kind, rounds in runs.items()}
    out: dict[str, dict[str, Any]] = {}
    for kind, rounds in runs.items():
        base = p99["plain_users" if kind.endswith("_users") else "plain_hist"]
        ratio = round(p99[kind] / base, 3) if base and np.isfinite(p99[kind]) else None
        out[kind] = {
            "p50_ms": _median(rounds, "latency_ms", "p50"),
            "p99_ms": p99[kind],
            "ratio_p99_to_plain": ratio,
            "met": None if ratio is None else ratio <= RATIO_GOAL,
            "p99_ms_rounds": [r["latency_ms"]["p99"] for r in rounds],
            "sent": sum(r["sent"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
            "empty_replies": sum(r["empty_replies"] for r in rounds),
            "achieved_rps": _median(rounds, "achieved_rps"),
            "worker_took_ms_p99": _median(rounds, "worker_took_ms", "p99"),
        }
    return out


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.product_recall", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--base-batches", type=int, default=200, help="training batches of the first model")
    p.add_argument("--base-users", type=int, default=20_000, help="users of the first model's training data")
    p.add_argument("--users", type=int, default=1000, help="users with a streamed history (the requests' source)")
    p.add_argument("--history", type=int, default=20, help="clicks per such user")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--withdrawals", type=int, default=100, help="items withdrawn (then made available) one at a time")
    p.add_argument("--settle", type=float, default=1.0, help="seconds an item must stay gone (back) on a path")
    p.add_argument("--probe-timeout", type=float, default=60.0, help="seconds before an item counts as timed out")
    p.add_argument("--rate", type=float, default=100.0, help="Kafka recall requests/s of the load process")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each kind")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per kind and round")
    p.add_argument("--rounds", type=int, default=3, help="times the sequence of kinds is run")
    p.add_argument("--setup-timeout", type=float, default=1800.0, help="seconds for each setup step")
    p.add_argument("--workdir", type=Path, help="the stack's directory (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes, written to results/quick/")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    load_before = _load()
    began = time.monotonic()
    cfg = StackConfig(
        items=args.items,
        base_batches=args.base_batches,
        base_users=args.base_users,
        refresh_interval_s=3600.0,  # one round, the one triggered below: none during the measurements
        workers=("catalogue", "refresh", "ingest", "recall", "gateway"),
        ready_timeout_s=args.setup_timeout,
    )
    rng = np.random.default_rng(32)
    with contextlib.ExitStack() as stack_of:
        workdir = args.workdir or Path(stack_of.enter_context(tempfile.TemporaryDirectory(prefix="product-recall-")))
        stack = stack_of.enter_context(LiveStack(cfg, workdir))
        setup: dict[str, Any] = dict(stack.setup)
        setup["announce_s"] = announce_catalogue(stack, args.items, args.setup_timeout)
        histories = click_histories(stack, args.users, args.history, seed=7)
        stack.trigger_refresh()  # a delta round: the rows take the catalogue's metadata
        sample = sorted({int(i) for i in rng.choice(args.items, 200, replace=False) + 1})
        setup["metadata_round_s"] = wait_for(
            "the rows to carry the metadata", lambda: rows_carry_metadata(stack, sample), stack, args.setup_timeout
        )
        client = stack_of.enter_context(RecallClient(stack.kafka, stack.settings.recall))
        wait_serving(client)
        kinds = request_kinds(histories, args.items, args.top_k, rng)
        paths = Paths(client, stack.http_url, args.top_k)
        only_plain = {"plain_hist": kinds["plain_hist"]}
        plain = LoadPlan(stack.kafka, stack.settings.recall, args.rate, 0.0, 5.0, only_plain, until_stopped=True)
        with LoadProcess(plain) as load:
            load_withdrawals = _load()
            seen = withdraw_and_return(
                stack, paths, list(histories.values()), args.withdrawals, args.settle, args.probe_timeout
            )
            under_withdrawals = load.result(timeout_s=60)["plain_hist"]
        load_latency = _load()
        every = LoadPlan(stack.kafka, stack.settings.recall, args.rate, args.warmup, args.duration, kinds, args.rounds)
        with LoadProcess(every) as load:
            per_kind = load.result(timeout_s=args.rounds * len(kinds) * (args.warmup + args.duration + 30) + 60)
        processes = stack.processes()
    gone = percentiles(seen.gone_s, 3)
    back = percentiles(seen.back_s, 3)
    table = latency_table(per_kind)
    payload = {
        "withdrawal_p50_s": gone["p50"],
        "withdrawal_p99_s": gone["p99"],
        "withdrawal_goal_s": WITHDRAWAL_GOAL_S,
        "withdrawal_met": None if gone["p99"] is None else gone["p99"] <= WITHDRAWAL_GOAL_S and not seen.timeouts,
        "return_p50_s": back["p50"],
        "return_p99_s": back["p99"],
        "withdrawal": {
            "items": args.withdrawals,
            "gone_s": gone,
            "gone_s_by_path": {p: percentiles(v, 3) for p, v in seen.gone_s_by_path.items()},
            "back_s": back,
            "leaks_while_unavailable": seen.leaks,
            "timeouts": seen.timeouts,
            "probes": seen.probes,
            "probe_errors": seen.probe_errors,
            "settle_s": args.settle,
            "load_while_withdrawing": under_withdrawals,
        },
        "latency_ratio_goal": RATIO_GOAL,
        "latency_met": all(row["met"] for row in table.values()),
        "latency": table,
        "latency_runs": per_kind,
        "load_average": {
            "before": load_before,
            "withdrawals_start": load_withdrawals,
            "latency_start": load_latency,
            "after": _load(),
        },
        "setup": {
            **setup,
            "items": args.items,
            "users": args.users,
            "history": args.history,
            "top_k": args.top_k,
            "rate": args.rate,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "segments": list(SEGMENTS),
            "categories_per_item": 2,
            "processes": sorted(processes),
            "total_s": round(time.monotonic() - began, 1),
            "quick": args.quick,
        },
    }
    if args.quick:
        write_json(RESULTS / "quick", NAME, payload)
    else:
        emit(NAME, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
