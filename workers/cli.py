"""The ``mindstream`` command line. Settings come from ``MINDSTREAM_*`` environment variables;
a few common ones also have flags. Every sub-command prints a JSON summary on stdout."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.runtime import configure_logging, metrics_registry
from workers.settings import Settings

if TYPE_CHECKING:
    from workers.refresh.worker import RefreshWorker

log = logging.getLogger("mindstream")


def _settings(args: argparse.Namespace) -> Settings:
    """Environment first, then explicit flags on top."""
    base = Settings()
    updates: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        updates["state_dir"] = Path(args.state_dir)
    if getattr(args, "batches", None):
        updates["train"] = base.train.model_copy(update={"batches": args.batches})
    if getattr(args, "dataset", None):
        updates["data"] = base.data.model_copy(update={"dataset": args.dataset, "path": None})
    if getattr(args, "data", None):
        updates["data"] = base.data.model_copy(update={"path": Path(args.data)})
    return base.model_copy(update=updates)


def _print(payload: dict[str, Any]) -> None:
    json.dump(payload, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def cmd_train(args: argparse.Namespace) -> int:
    """Train, or reuse the best checkpoint already there (compose's trainer runs on every ``up``)."""
    from workers.offline import load, reusable_checkpoint, run_train

    settings = _settings(args)
    reused = None if args.retrain or args.resume else reusable_checkpoint(settings, settings.data.name)
    if reused is not None:
        log.info("reusing %s (pass --retrain to train again)", reused["reused"])
        _print(reused)
        return 0
    _print(run_train(settings, dataset=load(settings), resume=args.resume, quiet=args.quiet))
    return 0


def _backends(choice: str) -> list[str]:
    return ["exact", "milvus"] if choice == "both" else [choice]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from workers.infra.milvus_server import open_milvus
    from workers.offline import load, run_evaluate

    settings = _settings(args)
    backends = _backends(args.backend or settings.eval.backend)
    dataset = load(settings)
    milvus = open_milvus(settings.milvus, settings.milvus_dir) if "milvus" in backends else contextlib.nullcontext()
    with milvus as uri:
        out = run_evaluate(
            settings, dataset=dataset, which=args.checkpoint, split=args.split, backends=backends, milvus_uri=uri
        )
    _print(out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from workers.offline import run_export

    settings = _settings(args)
    _print(run_export(settings, dataset_name=settings.data.name, which=args.checkpoint, out=Path(args.out)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on embedded defaults: data -> train (or reuse) -> Milvus -> metrics."""
    from model.checkpoint import open_checkpoint
    from workers.infra.milvus_server import open_milvus
    from workers.offline import checkpoint_root, load, run_evaluate, run_train

    settings = _settings(args)
    dataset = load(settings)
    root = checkpoint_root(settings, dataset.name)
    summary: dict[str, Any] = {"dataset": dataset.name, "items": dataset.item_count - 1}
    if args.retrain or not (root / "BEST").exists():
        log.info("training MIND on %s (%d batches)", dataset.name, settings.train.batches)
        summary["train"] = run_train(settings, dataset=dataset, resume=False)
    else:
        summary["train"] = {"reused": open_checkpoint(root, "best").manifest.version}
    with open_milvus(settings.milvus, settings.milvus_dir) as uri:
        summary["milvus"] = uri
        summary["evaluation"] = run_evaluate(
            settings,
            dataset=dataset,
            which="best",
            split="test",
            backends=["exact", "milvus"],
            milvus_uri=uri,
        )
    _print(summary)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from workers.ingest.worker import main as ingest_main

    return ingest_main(args.rest)


def cmd_catalogue(args: argparse.Namespace) -> int:
    from workers.catalogue.worker import main as catalogue_main

    return catalogue_main(args.rest)


def cmd_gateway(args: argparse.Namespace) -> int:
    from workers.gateway.app import main as gateway_main

    return gateway_main(args.rest)


def cmd_recall(args: argparse.Namespace) -> int:
    from workers.recall.worker import main as recall_main

    return recall_main(args.rest)


def _refresh_worker(settings: Settings, uri: str, *, with_data: bool) -> RefreshWorker:
    from model.export import external_heldout
    from workers.catalogue.row_metadata import CatalogueMetadata
    from workers.infra.vector_store import VectorStore
    from workers.ingest.history_store import open_reader
    from workers.offline import load
    from workers.refresh.fast_path import FastPath
    from workers.refresh.metrics import RefreshMetrics
    from workers.refresh.state import RefreshState
    from workers.refresh.worker import RefreshWorker

    registry = metrics_registry(settings.refresh.metrics_port)
    metrics = RefreshMetrics(registry)
    metadata = CatalogueMetadata.open(settings)  # categories and segments onto every row written
    dataset = load(settings) if with_data else None
    quality = None
    if dataset is not None:  # the quality gate searches Milvus, which speaks external item ids
        quality = external_heldout(dataset.valid.head(settings.refresh.quality_users), dataset.vocab)
    return RefreshWorker(
        settings,
        VectorStore(uri, settings.milvus, metadata=metadata),
        open_reader(settings.state, settings.state_dir, settings.kafka.clicks_topic),
        replay=dataset.train if dataset is not None else None,
        replay_vocab=dataset.vocab if dataset is not None else None,
        quality=quality,
        metrics=metrics,
        fast_path=FastPath(  # its own Milvus client and state reader: it runs in a thread of its own
            settings,
            VectorStore(uri, settings.milvus, metadata=metadata),
            open_reader(settings.state, settings.state_dir, settings.kafka.clicks_topic),
            cursor=RefreshState.load(RefreshState.file(settings.refresh_dir)).get_cursor(),
            metrics=metrics,
        ),
    )


def cmd_refresh(args: argparse.Namespace) -> int:
    """Run the refresh loop (bootstrapping the first live model), or one round, or ask for one."""
    from model.checkpoint import open_checkpoint
    from workers.infra.milvus_server import open_milvus
    from workers.offline import checkpoint_root
    from workers.refresh.worker import request_refresh
    from workers.runtime import StopFlag, set_ready, stop_on_signals

    settings = _settings(args)
    if args.now:
        from workers.infra.vector_store import VectorStore

        with open_milvus(settings.milvus, settings.milvus_dir) as uri, VectorStore(uri, settings.milvus) as store:
            _print({"requested": request_refresh(store, settings.milvus.alias)})
        return 0
    with open_milvus(settings.milvus, settings.milvus_dir) as uri:
        worker = _refresh_worker(settings, uri, with_data=True)
        try:
            base_root = checkpoint_root(settings, settings.data.name)
            base = open_checkpoint(base_root, "best") if (base_root / "BEST").exists() else None
            boot = worker.bootstrap(base)
            set_ready()  # something is live: /readyz answers 200
            if boot is not None:
                log.info("bootstrapped live model %s", boot.version)
            if args.once:
                report = worker.run_round(force=True)
                _print(report.as_dict() if report else {"round": "nothing new"})
                return 0
            with stop_on_signals(StopFlag()) as stop:
                worker.run(stop, nice=settings.refresh.nice)
        finally:
            worker.close()
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from workers.infra.milvus_server import open_milvus

    settings = _settings(args)
    with open_milvus(settings.milvus, settings.milvus_dir) as uri:
        worker = _refresh_worker(settings, uri, with_data=False)
        try:
            target, previous = worker.rollback()
        finally:
            worker.close()
    _print({"live": target, "was": previous})
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from workers.up import run_up

    settings = _settings(args)
    stream = settings.stream
    return run_up(
        settings,
        rate=stream.rate if args.rate is None else args.rate,
        recall_rate=stream.recall_rate if args.recall_rate is None else args.recall_rate,
        http_rate=stream.http_rate if args.http_rate is None else args.http_rate,
        new_items_per_s=args.new_items_per_s,
        replay=not args.no_replay,
        retrain=args.retrain,
        duration_s=args.duration,
    )


def cmd_down(args: argparse.Namespace) -> int:
    from workers.up import down

    return down(_settings(args))


def cmd_settings(args: argparse.Namespace) -> int:
    _print(json.loads(_settings(args).model_dump_json()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindstream",
        description="Near-real-time MIND embeddings for recall: Kafka in, Milvus out.",
        epilog="Settings: MINDSTREAM_* environment variables, nested with '__' (see docs/configuration.md).",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--state-dir", default=None, help="checkpoints, embedded Milvus data, worker state")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        return p

    datasets = ["ml-100k", "amazonbook-demo", "synthetic"]
    p = add("train", cmd_train, "Train MIND and write checkpoints (best kept by validation Recall@N)")
    p.add_argument("--dataset", choices=datasets)
    p.add_argument("--data", metavar="PATH", help="your own data: a PaddleRec-format directory or a CSV/TSV log")
    p.add_argument("--batches", type=int, help="sampled batches to train (default from settings)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--retrain", action="store_true", help="train even if a best checkpoint exists (default: reuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("evaluate", cmd_evaluate, "Recall@N / NDCG@N / HitRate@N of a checkpoint, with MostPopular")
    p.add_argument("--dataset", choices=datasets)
    p.add_argument("--data", metavar="PATH", help="your own data: a PaddleRec-format directory or a CSV/TSV log")
    p.add_argument("--checkpoint", default="best", help="best, latest or a version v<N>")
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--backend", choices=["exact", "milvus", "both"])

    p = add("export", cmd_export, "Write a checkpoint's item vectors (ids, vectors, version) to .npz")
    p.add_argument("--dataset", choices=datasets)
    p.add_argument("--data", metavar="PATH", help="your own data: a PaddleRec-format directory or a CSV/TSV log")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--out", required=True, help="output .npz path")

    p = add("demo", cmd_demo, "Get the data, train (or reuse), evaluate with exact search and Milvus")
    p.add_argument("--dataset", choices=datasets)
    p.add_argument("--data", metavar="PATH", help="your own data: a PaddleRec-format directory or a CSV/TSV log")
    p.add_argument("--batches", type=int)
    p.add_argument("--retrain", action="store_true", help="train even if a checkpoint exists")

    p = add("ingest", cmd_ingest, "Consume clicks into the ingest state (DLQ for bad ones); see --help")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the ingest worker (--help for them)")
    p = add("catalogue", cmd_catalogue, "Consume item events into the catalogue state (DLQ for bad ones); see --help")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the catalogue worker (--help for them)")

    p = add("gateway", cmd_gateway, "Serve recall over HTTP (FastAPI, offline /docs); see --help")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the gateway (--host, --port)")

    p = add("recall", cmd_recall, "Answer recall requests from Kafka (request/reply); see --help")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the recall worker (--help for them)")

    p = add("refresh", cmd_refresh, "Refresh loop: train on new clicks, build a shadow collection, swap")
    p.add_argument("--once", action="store_true", help="run one round now and exit")
    p.add_argument("--now", action="store_true", help="ask the running refresh loop for a round now")

    p = add("up", cmd_up, "Run the whole live system on embedded defaults and replay clicks into it")
    p.add_argument("--dataset", choices=datasets)
    p.add_argument("--data", metavar="PATH", help="your own data: a PaddleRec-format directory or a CSV/TSV log")
    p.add_argument("--batches", type=int, help="training batches of the first model")
    p.add_argument("--rate", type=float, help="clicks per second (default: settings.stream.rate)")
    p.add_argument("--recall-rate", type=float, help="recall requests/s over Kafka (default: settings.stream)")
    p.add_argument("--http-rate", type=float, help="recall requests/s over HTTP (default: settings.stream)")
    p.add_argument("--new-items-per-s", type=float, help="new items born per second in the continuous stream")
    p.add_argument("--no-replay", action="store_true", help="skip the held-out replay: the continuous stream at once")
    p.add_argument("--retrain", action="store_true", help="train the first model again")
    p.add_argument("--duration", type=float, help="stop by itself after this many seconds")

    add("down", cmd_down, "Stop a running 'mindstream up' (same state directory)")
    add("rollback", cmd_rollback, "Point the live alias back at the previous collection")
    add("settings", cmd_settings, "Print the effective settings (secrets masked)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # paddle warns at import that it cannot find ccache (used only to compile custom C++ ops)
    warnings.filterwarnings("ignore", message="No ccache found")
    args = build_parser().parse_args(argv)
    level = args.log_level or Settings().log_level
    configure_logging(level)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
