"""The command line and the run shared by the benchmarks made of one soak (``bench.days``,
``bench.serving_under_load``): the load's arguments (defaults from :class:`bench.soak.SoakConfig` unless the
benchmark gives its own), ``--env`` settings for the stack, ``--quick`` (a 3-minute smoke on a small
catalogue, results under ``<results>/quick``, which git ignores), and :func:`run_and_write`: the soak in a
temporary directory, the load average before and after, ``<out>_details.json`` and ``<out>.json``.

The stack's imports (Paddle) happen only when a soak runs: this module imports :mod:`bench.soak` lazily.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.common import RESULTS, machine, write_json

if TYPE_CHECKING:
    from bench.soak import SoakConfig

__all__ = ["QUICK", "env_pair", "parse", "run_and_write", "soak_config", "soak_parser"]

# The smoke run: a small catalogue, 3 minutes, low rates.
QUICK: Final[Mapping[str, float | int]] = {
    "duration": 180.0,
    "window": 30.0,
    "click_rate": 1000.0,
    "kafka_rate": 10.0,
    "http_rate": 2.0,
    "items": 3000,
    "base_batches": 10,
    "refresh_interval": 10.0,
    "drain": 120.0,
}


def env_pair(text: str) -> tuple[str, str]:
    """``MINDSTREAM_X=VALUE`` -> (name, value); anything else is refused (argparse reports it)."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("MINDSTREAM_"):
        raise argparse.ArgumentTypeError(f"expected MINDSTREAM_<SECTION>__<NAME>=VALUE, got {text!r}")
    return name, value


def soak_parser(prog: str, description: str, out: str, **defaults: float) -> argparse.ArgumentParser:
    """The shared arguments; ``defaults`` (argument dest -> value) replace the soak's own defaults."""
    from bench.soak import SoakConfig

    d = SoakConfig()
    own: dict[str, float] = {
        "duration": d.duration_s,
        "window": d.window_s,
        "click_rate": d.click_rate,
        "kafka_rate": d.kafka_rate,
        "http_rate": d.http_rate,
        "new_items_per_s": d.new_items_per_s,
        "items": d.items,
        "refresh_interval": d.refresh_interval_s,
        "drain": d.drain_s,
        "base_batches": d.base_batches,
    }
    unknown = set(defaults) - set(own)
    if unknown:
        raise ValueError(f"no such soak argument: {sorted(unknown)}")
    own.update(defaults)
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help=f"a smoke run ({dict(QUICK)}), results under <results>/quick")
    p.add_argument("--duration", type=float, default=own["duration"], help="seconds of load")
    p.add_argument("--window", type=float, default=own["window"])
    p.add_argument("--click-rate", type=float, default=own["click_rate"])
    p.add_argument("--kafka-rate", type=float, default=own["kafka_rate"])
    p.add_argument("--http-rate", type=float, default=own["http_rate"])
    p.add_argument("--new-items-per-s", type=float, default=own["new_items_per_s"])
    p.add_argument("--items", type=int, default=int(own["items"]))
    p.add_argument("--refresh-interval", type=float, default=own["refresh_interval"])
    p.add_argument("--drain", type=float, default=own["drain"], help="seconds to wait for the clicks after the load")
    p.add_argument("--base-batches", type=int, default=int(own["base_batches"]))
    p.add_argument(
        "--generators",
        choices=("process", "thread"),
        default="process",
        help="recall load: Kafka from a process of its own and HTTP by vegeta (process), or threads in here",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        type=env_pair,
        metavar="MINDSTREAM_X=VALUE",
        help="a setting for the stack's workers (repeatable), e.g. MINDSTREAM_REFRESH__FAST_PATH_INTERVAL_S=5 or "
        "MINDSTREAM_MILVUS__EMBEDDED_CONFIG='{\"queryNode.scheduler.cpuRatio\": 20}'",
    )
    p.add_argument("--tmpdir", type=Path, help="where the stack's work directory is made (default: the system's)")
    p.add_argument("--results", type=Path, help="output folder (default: bench/results, --quick: its quick/)")
    p.add_argument("--out", default=out, help="<out>.json and <out>_details.json")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str], quick: Mapping[str, Any] = QUICK) -> argparse.Namespace:
    """Parse; with ``--quick`` the ``quick`` defaults apply (what is given explicitly still wins)."""
    argv = list(argv)
    if "--quick" in argv:
        p.set_defaults(**quick)
    args = p.parse_args(argv)
    args.results = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    return args


def soak_config(args: argparse.Namespace, **extra: Any) -> SoakConfig:
    """The soak of the parsed arguments; ``extra``: other :class:`SoakConfig` fields (``env`` is merged)."""
    from bench.soak import SoakConfig

    env = {**dict(args.env), **extra.pop("env", {})}
    return SoakConfig(
        duration_s=args.duration,
        window_s=args.window,
        click_rate=args.click_rate,
        kafka_rate=args.kafka_rate,
        http_rate=args.http_rate,
        new_items_per_s=args.new_items_per_s,
        items=args.items,
        refresh_interval_s=args.refresh_interval,
        drain_s=args.drain,
        base_batches=args.base_batches,
        generators=args.generators,
        env=env,
        **extra,
    )


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_and_write(
    args: argparse.Namespace,
    cfg: SoakConfig,
    summarize: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]],
    *,
    collect: Callable[[Path], dict[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Run the soak, then write ``<out>_details.json`` (machine, times, config, load averages, the
    summarizer's details, ``collect(workdir)`` taken before the work directory goes, ``extra``, the soak's
    own summary) and ``<out>.json`` (the summarizer's summary, exactly as it returns it)."""
    from bench.soak import run_soak

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop like Ctrl-C: the stack closes its processes
    load = {"before": _load()}
    began = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix=f"{args.out}-", dir=args.tmpdir) as tmp:
        soak = run_soak(cfg, Path(tmp))
        collected = collect(Path(tmp)) if collect is not None else {}
    load["after"] = _load()
    summary, details = summarize(soak)
    write_json(
        args.results,
        f"{args.out}_details",
        {
            "benchmark": args.out,
            "machine": machine(),
            "began": began,
            "ended": time.strftime("%Y-%m-%d %H:%M:%S"),
            "quick": args.quick,
            "config": cfg.__dict__,
            "load_average": load,
            **details,
            **collected,
            **(extra or {}),
            "soak": {k: v for k, v in soak.items() if k != "windows"},
        },
    )
    write_json(args.results, args.out, summary)
    return 0
