"""Every benchmark in sequence, then the plots and the results block of docs/benchmarks.md: one command.

    python -m bench.run_all            # full run (hours on 2 cores): bench/results/, docs/benchmarks.md updated
    python -m bench.run_all --quick    # smoke run (~6-8 min): results in bench/results/quick/, docs untouched
    python -m bench.run_all --only freshness swap_impact --skip quality

Each benchmark runs as its own subprocess with its own timeout; its stdout/stderr go to
``<results>/logs/<step>.log``. A failure or a timeout does not stop the others: every step's status,
wall time and log tail land in ``<results>/summary.json`` and the exit code is 1 if any step failed.
Full mode scales: synthetic catalogues of 100k and 1M items for recall latency (Kafka and HTTP),
1M events through the embedded broker and 10M events through the ingest state path (the in-memory
broker cannot serve a 10M-message log at the worker's speed: see ``bench/ingest_throughput.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    name: str
    args: list[str]  # after ``python -m``
    timeout_s: float
    produces: str | None = None  # result file the step writes (stem), renamed to ``name`` when different
    capture_json: bool = False  # the command prints JSON on stdout that is the result (mindstream demo)
    env: dict[str, str] = field(default_factory=dict)


def plan(quick: bool, work: Path, items: list[int]) -> list[Step]:
    """The steps of a quick or a full run; ``work`` holds shared Milvus work directories."""
    if quick:
        lat = str(work / "latency-2k")
        return [
            Step("quality", ["bench.quality", "--batches", "40", "--seeds", "2026", "--datasets", "ml-100k",
                             "--variants", "mind_k4", "mind_k1"], 300),
            Step("multi_interest", ["bench.multi_interest", "--datasets", "ml-100k", "--seeds", "2026",
                                    "--batches", "40", "--jobs", "1", "--rounds", "1", "--requests", "50"], 600),
            Step("train_speed", ["bench.train_speed", "--steps", "10"], 300),
            Step("ingest_throughput", ["bench.ingest_throughput", "--quick"], 180),
            Step("ingest_store", ["bench.ingest_throughput", "--source", "store", "--quick"], 180),
            Step("recall_latency", ["bench.recall_latency", "--items", "2000", "--rates", "20", "40",
                                    "--duration", "3", "--warmup", "1", "--workdir", lat], 240),
            Step("http_latency", ["bench.http_latency", "--quick", "--workdir", lat], 240),
            Step("freshness", ["bench.freshness", "--quick"], 240),
            Step("index_choice", ["bench.index_choice", "--quick"], 240),
            Step("swap_impact", ["bench.swap_impact", "--quick"], 240),
            Step("memory", ["bench.memory", "--quick"], 240),
            Step("cold_start", ["bench.cold_start", "--batches", "40", "--seeds", "2026", "--selections", "random"],
                 600),
            Step("soak", ["bench.soak", "--duration", "60", "--window", "20", "--click-rate", "300",
                          "--kafka-rate", "10", "--http-rate", "2", "--items", "3000"], 600),
            Step("demo", ["workers.cli", "demo", "--batches", "30", "--retrain"], 600, capture_json=True,
                 env={"MINDSTREAM_STATE_DIR": str(work / "demo-state")}),
        ]  # fmt: skip
    steps = [
        Step("quality", ["bench.quality"], 3 * 3600),
        Step("multi_interest", ["bench.multi_interest"], 3 * 3600),
        Step("train_speed", ["bench.train_speed"], 1800),
        Step("ingest_throughput", ["bench.ingest_throughput", "--events", "1000000"], 1800),
        Step("ingest_store", ["bench.ingest_throughput", "--source", "store", "--events", "10000000"], 3600),
    ]
    for n in items:
        tag = "" if n == 100_000 else f"_{n // 1_000_000}m" if n % 1_000_000 == 0 else f"_{n}"
        wd = str(work / f"latency-{n}")
        rates = ["50", "100", "200", "400"]
        http_rates = ["50", "100", "200", "300", "400", "600", "800", "1000"]  # up to saturation: capacity_rps
        index = ["--index", "HNSW" if n <= 100_000 else "IVF_FLAT"]  # 1M: the index AUTO picks there
        steps += [
            Step(f"recall_latency{tag}", ["bench.recall_latency", "--items", str(n), "--rates", *rates, *index,
                                          "--workdir", wd], 3600, produces="recall_latency"),
            Step(f"http_latency{tag}", ["bench.http_latency", "--items", str(n), "--rates", *http_rates, *index,
                                        "--workdir", wd], 3600, produces="http_latency"),
        ]  # fmt: skip
    steps += [
        Step("index_choice", ["bench.index_choice"], 1800),
        Step("index_choice_1m", ["bench.index_choice", "--items", "1000000", "--indexes", "IVF_FLAT", "FLAT",
                                 "--tag", "1m"], 3600),
        Step("freshness", ["bench.freshness"], 1800),
        Step("freshness_flat", ["bench.freshness", "--index", "FLAT", "--tag", "flat"], 1800),
        Step("freshness_1m_ivf", ["bench.freshness", "--items", "1000000", "--index", "IVF_FLAT",
                                  "--duration", "90", "--drain", "500", "--tag", "1m_ivf"], 3600),
        Step("swap_impact", ["bench.swap_impact", "--http-rate", "10"], 2400),
        Step("memory", ["bench.memory"], 1200),
        Step("cold_start", ["bench.cold_start"], 3 * 3600),
        Step("soak", ["bench.soak"], 7200 + 1800),  # 2 hours at 5k clicks/s, 200 + 20 req/s
        Step("demo", ["workers.cli", "demo", "--retrain"], 3600, capture_json=True,
             env={"MINDSTREAM_STATE_DIR": str(work / "demo-state")}),
    ]  # fmt: skip
    return steps


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _mark_quick(path: Path) -> None:
    """Flag a smoke-run result as such, so no report or plot passes it off as a measurement."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if isinstance(data, dict) and not data.get("quick"):
        path.write_text(json.dumps({**data, "quick": True}, indent=2) + "\n")


def run_step(step: Step, results: Path, quick: bool = False) -> dict[str, Any]:
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{step.name}.log"
    out_path = logs / f"{step.name}.stdout"
    env = {**os.environ, "MINDSTREAM_BENCH_RESULTS": str(results), **step.env}
    cmd = [sys.executable, "-m", *step.args]
    began = time.monotonic()
    sys.stderr.write(f"[run_all] {step.name}: {' '.join(step.args)} (timeout {step.timeout_s:.0f} s)\n")
    with log_path.open("wb") as err, out_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            rc: int | None = proc.wait(step.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            rc = None
    wall = round(time.monotonic() - began, 1)
    status = "ok" if rc == 0 else f"timeout after {step.timeout_s:.0f} s" if rc is None else f"failed (exit {rc})"
    result_file = None
    if rc == 0 and step.capture_json:
        try:
            payload = json.loads(out_path.read_text())
            payload = {"benchmark": step.name, "machine": machine(), **payload}
            (results / f"{step.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
            result_file = f"{step.name}.json"
        except (OSError, json.JSONDecodeError) as exc:
            status = f"failed (no JSON on stdout: {exc})"
    elif rc == 0:
        produced = results / f"{step.produces or step.name}.json"
        if step.produces and step.produces != step.name and produced.exists():
            produced.replace(results / f"{step.name}.json")
        result_file = f"{step.name}.json" if (results / f"{step.name}.json").exists() else None
        if result_file is None:
            status = "failed (no result file)"
    if quick and result_file:
        _mark_quick(results / result_file)
    sys.stderr.write(f"[run_all] {step.name}: {status} in {wall} s\n")
    return {
        "name": step.name,
        "command": " ".join(["python", "-m", *step.args]),
        "status": status,
        "exit_code": rc,
        "wall_s": wall,
        "result": result_file,
        "log": str(log_path),
        "log_tail": [] if status == "ok" else _tail(log_path),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke run of every benchmark with tiny sizes")
    p.add_argument("--results", type=Path, help="output folder (default: bench/results, or bench/results/quick)")
    p.add_argument("--only", nargs="+", help="run only these steps")
    p.add_argument("--skip", nargs="+", default=[], help="skip these steps")
    p.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000], help="latency catalogues (full)")
    p.add_argument(
        "--readme", type=Path, default=ROOT / "docs" / "benchmarks.md", help="page whose results block is rewritten"
    )
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's timeout")
    args = p.parse_args(argv)
    results = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    if args.quick and args.results is None:
        (results / ".gitignore").write_text("*\n")  # smoke-run output is never committed
    began = time.monotonic()
    steps_done: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-run-all-") as tmp:
        for step in plan(args.quick, Path(tmp), args.items):
            if (args.only and step.name not in args.only) or step.name in args.skip:
                continue
            step.timeout_s *= args.timeout_scale
            steps_done.append(run_step(step, results, args.quick))
            shutil.rmtree(Path(tmp) / "demo-state", ignore_errors=True)
    summary: dict[str, Any] = {
        "benchmark": "summary",
        "machine": machine(),
        "quick": args.quick,
        "steps": steps_done,
        "failed": [s["name"] for s in steps_done if s["status"] != "ok"],
        "wall_s": round(time.monotonic() - began, 1),
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from bench import plots, report

    try:
        summary["plots"] = [str(x) for x in plots.render(plots.load_results(results), results)]
    except ImportError:
        summary["plots"] = "matplotlib not installed"
    block = report.render(plots.load_results(results), results)
    (results / "report.md").write_text(block)
    if args.quick:
        summary["readme"] = f"not touched (quick run); block in {results / 'report.md'}"
    elif report.write_readme(args.readme, block):
        summary["readme"] = f"updated {args.readme}"
    else:
        summary["readme"] = f"no markers in {args.readme}; block in {results / 'report.md'}"
        sys.stdout.write(block)
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    sys.stdout.write(json.dumps({k: summary[k] for k in ("failed", "wall_s", "plots", "readme")}, indent=2) + "\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
