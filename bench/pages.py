"""Figure blocks of README.md and docs/*.md, rendered from ``bench/results/*.json``.

A page holds a block between ``<!-- bench:NAME -->`` and ``<!-- /bench -->``; ``python -m bench.report``
rewrites every block of every page from the result files, and tests/bench/test_pages.py fails when a
committed page differs from what this renders. A figure missing from the results reads "not measured".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import report
from bench.report import Results, Row

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- bench:(?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- /bench -->)", re.S)
NOT_MEASURED = "not measured"
# Delta publication (refresh.publication = "delta") landed late on 2026-12-07: a live-stack result
# dated before this day was measured with a whole new collection published every round.
DELTAS_SINCE = "2026-12-08"
# Results whose figures depend on how the refresh publishes while they run.
# Results without a date of their own, dated by the run they were assembled from.
COMPANIONS: dict[str, tuple[str, ...]] = {"catalogue_scale": ("delta_publication_1m",)}
PUBLISHING = ("freshness", "serving_under_load", "serving_tradeoff", "days", "swap_impact", "soak", "memory")


def pages(root: Path = ROOT) -> list[Path]:
    """Every page that may hold blocks: README.md and docs/*.md."""
    return [page for page in (root / "README.md", *sorted((root / "docs").glob("*.md"))) if page.is_file()]


def measured_on(results: Results, key: str) -> str:
    """``2026-12-02``, with the commit and the publication design when known; the date comes from the
    result itself or from its companion (``<key>_details``, ``<key>_run``) when the summary has none."""
    for name in (key, f"{key}_details", f"{key}_run", *COMPANIONS.get(key, ())):
        m = (results.get(name) or {}).get("machine")
        if isinstance(m, dict) and m.get("date"):
            text = str(m["date"]) + (f", commit {m['commit']}" if m.get("commit") else "")
            publication = ((results.get(key) or {}).get("setup") or {}).get("publication")
            if publication is not None:
                text += f", {publication} publication"
            elif key.startswith(PUBLISHING) and str(m["date"]) < DELTAS_SINCE:
                text += ", full publication (before deltas)"
            return text
    return "date not recorded"


def _sources(results: Results, keys: Iterable[str]) -> str:
    parts = []
    for key in keys:
        if key in results:
            parts.append(f"`{key}.json` ({measured_on(results, key)})")
        else:
            parts.append(f"`{key}.json`: {NOT_MEASURED}")
    return "From " + "; ".join(parts) + "."


def _table(rows: list[Row]) -> list[str]:
    lines = ["| benchmark | metric | measured | reference / goal | ratio |", "|---|---|---|---|---|"]
    return lines + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]


def rows_block(keys: Iterable[str], fns: dict[str, Callable[[dict[str, Any]], list[Row]]]) -> Callable[[Results], str]:
    """A block: the result table of ``keys`` (each rendered by its row function), with their dates."""
    keys = list(keys)

    def render(results: Results) -> str:
        rows: list[Row] = []
        for key in keys:
            if key not in results:
                rows.append((key, "every figure", NOT_MEASURED, "", ""))
                continue
            try:
                rows += fns[key](results[key])
            except Exception as exc:  # a malformed result must not hide the others
                rows.append((key, "could not render", type(exc).__name__, "", ""))
        return "\n".join([_sources(results, keys), "", *_table(rows)]) + "\n"

    return render


def _latency_block(results: Results) -> str:
    keys = sorted(k for k in results if k.startswith(("recall_latency", "http_latency")))
    rows: list[Row] = []
    for key in keys:
        kafka = key.startswith("recall_latency")
        peer = key.replace("recall_latency", "http_latency") if kafka else key.replace("http_latency", "recall_latency")
        rows += report._safe_latency(key, results, results.get(peer), "HTTP" if kafka else "Kafka")
    if not keys:
        return f"Recall latency: {NOT_MEASURED}.\n"
    return "\n".join([_sources(results, keys), "", *_table(rows)]) + "\n"


def _freshness_block(results: Results) -> str:
    keys = sorted(k for k in results if k == "freshness" or k.startswith("freshness_"))
    rows: list[Row] = []
    for key in keys:
        rows += report._safe(key, functools.partial(report.rows_freshness, name=key), results)
    if not keys:
        return f"Freshness: {NOT_MEASURED}.\n"
    return "\n".join([_sources(results, keys), "", *_table(rows)]) + "\n"


def _index_block(results: Results) -> str:
    keys = sorted(k for k in results if k.startswith("index_choice"))
    rows: list[Row] = []
    for key in keys:
        rows += report._safe(key, functools.partial(report.rows_index_choice, name=key), results)
    if not keys:
        return f"Index choice: {NOT_MEASURED}.\n"
    return "\n".join([_sources(results, keys), "", *_table(rows)]) + "\n"


def _all_block(results: Results) -> str:
    return report.render(results, ROOT / "bench" / "results")


BLOCKS: dict[str, Callable[[Results], str]] = {
    "all": _all_block,
    "quality": rows_block(["quality", "demo"], {"quality": report.rows_quality, "demo": report.rows_demo}),
    "train_speed": rows_block(["train_speed"], {"train_speed": report.rows_train_speed}),
    "ingest": rows_block(
        ["ingest_throughput", "ingest_store"],
        {"ingest_throughput": report.rows_ingest, "ingest_store": report.rows_ingest_store},
    ),
    "latency": _latency_block,
    "freshness": _freshness_block,
    "index_choice": _index_block,
    "delta": rows_block(["catalogue_scale"], {"catalogue_scale": report.rows_catalogue_scale}),
    "cold_start": rows_block(["cold_start"], {"cold_start": report.rows_cold_start}),
    "serving": rows_block(
        ["serving_under_load", "serving_tradeoff"],
        {"serving_under_load": report.rows_serving_under_load, "serving_tradeoff": report.rows_serving_tradeoff},
    ),
    "broker": rows_block(["broker"], {"broker": report.rows_broker}),
    "days": rows_block(["days"], {"days": report.rows_days}),
    "soak": rows_block(
        ["soak", "swap_impact", "memory"],
        {"soak": report.rows_soak, "swap_impact": report.rows_swap, "memory": report.rows_memory},
    ),
    "vocabulary": rows_block(["vocabulary"], {"vocabulary": report.rows_vocabulary}),
    "history_read": rows_block(["history_read"], {"history_read": report.rows_history_read}),
    "multi_interest": rows_block(
        ["multi_interest", "multi_interest_amazonbook"],
        {
            "multi_interest": report.rows_multi_interest,
            "multi_interest_amazonbook": lambda r: report.rows_multi_interest(r, name="multi_interest_amazonbook"),
        },
    ),
}


MI_METRICS = ("recall@50", "ndcg@50", "hitrate@50", "coverage@50", "diversity@50", "novelty@50")


def _pm(value: Any) -> str:
    if not isinstance(value, dict) or value.get("mean") is None:
        return NOT_MEASURED
    mean, sd = float(value["mean"]), value.get("sd")
    digits = 4 if abs(mean) < 0.1 else 3 if abs(mean) < 10 else 2 if abs(mean) < 100 else 0
    return f"{mean:,.{digits}f}" + (f" ± {float(sd):,.{digits}f}" if sd is not None else "")


def _multi_interest_configs(results: Results) -> str:
    """Every configuration of the multi-interest table (``*_details.json``: MostPopular and the
    dynamic count too), per data set and protocol, mean ± sd over the seeds."""
    out: list[str] = []
    for key, label in (("multi_interest", "ML-100K"), ("multi_interest_amazonbook", "AmazonBook slice")):
        details = f"{key}_details"
        source = results.get(details) or results.get(key)
        if source is None:
            out += [f"**{label}**: {NOT_MEASURED}.", ""]
            continue
        name = details if details in results else key
        out += [f"From `{name}.json` ({measured_on(results, key)}).", ""]
        for protocol in ("standard", "mixed"):
            table = source.get(protocol) or {}
            users = table.get("users_per_seed") if isinstance(table.get("users_per_seed"), int) else None
            who = f" ({users:,} {'users' if protocol == 'standard' else 'accounts'} per seed)" if users else ""
            out += [f"**{label}, {protocol}**{who}", ""]
            out += ["| config | " + " | ".join(m.replace("@", "@") for m in MI_METRICS) + " |",
                    "|---" * (len(MI_METRICS) + 1) + "|"]  # fmt: skip
            for config, metrics in table.items():
                if not isinstance(metrics, dict):
                    continue
                out.append(f"| {config} | " + " | ".join(_pm(metrics.get(m)) for m in MI_METRICS) + " |")
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


BLOCKS["multi_interest_configs"] = _multi_interest_configs


def _changes(variant: dict[str, Any], reference: dict[str, Any]) -> str:
    """What a variant's stored model and training configuration set differently from the reference."""
    out = []
    for part in ("mind", "train"):
        mine, ref = variant.get(part) or {}, reference.get(part) or {}
        out += [f"{key} {value}" for key, value in mine.items() if ref.get(key) != value]
    return ", ".join(out) or "none (the reference)"


def _ablation(results: Results) -> str:
    """bench.ablation's variants against PaddleRec's K=4 (``ref_k4``), mean ± sd over their seeds."""
    if "ablation" not in results:
        return f"Ablation: {NOT_MEASURED}.\n"
    r = results["ablation"]
    variants = r.get("variants") or {}
    seeds = r.get("seeds_per_variant") or {}
    reference = variants.get("ref_k4") or {}
    lines = [
        f"From `ablation.json` ({measured_on(results, 'ablation')}).",
        "",
        "| variant | change from `ref_k4` | seeds | Recall@50 | NDCG@50 | HitRate@50 | cosine | hit share | distinct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in variants.items():
        interests = v.get("interests") or {}
        share = " / ".join(f"{x:.2f}" for x in interests.get("hit_share") or []) or NOT_MEASURED
        cos = interests.get("mean_pairwise_cosine")
        cells = [
            f"`{name}`",
            _changes(v, reference) if name != "ref_k4" else "none: PaddleRec's K=4",
            str(len(seeds.get(name) or [])) if name in seeds else NOT_MEASURED,
            _pm(v.get("recall@50")),
            _pm(v.get("ndcg@50")),
            _pm(v.get("hitrate@50")),
            f"{cos:.2f}" if isinstance(cos, int | float) else "-",
            share,
            f"{interests['distinct_candidates']:.0f}"
            if isinstance(interests.get("distinct_candidates"), int | float)
            else "-",
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


BLOCKS["ablation"] = _ablation


def _headline_block(results: Results) -> str:
    from bench.headline import HEADLINE

    lines = ["| what | figure | measured | command |", "|---|---|---|---|"]
    for what, key, figure, command in HEADLINE:
        if key in results:
            try:
                text = figure(results)
            except Exception as exc:  # a malformed result must not hide the others
                text = f"could not render ({type(exc).__name__})"
            when = measured_on(results, key)
        else:
            text, when = NOT_MEASURED, "-"
        lines.append("| " + " | ".join(c.replace("|", "/") for c in (what, text, when, command)) + " |")
    return "\n".join(lines) + "\n"


BLOCKS["headline"] = _headline_block


def render_page(text: str, results: Results) -> str:
    """``text`` with every block rendered anew; an unknown block name is an error."""

    def one(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            raise KeyError(f"unknown block <!-- bench:{name} --> (known: {', '.join(sorted(BLOCKS))})")
        return match.group(1) + BLOCKS[name](results) + match.group(4)

    return BLOCK.sub(one, text)


def block_names(text: str) -> list[str]:
    return [m.group("name") for m in BLOCK.finditer(text)]


def write_pages(results: Results, root: Path = ROOT) -> list[Path]:
    """Rewrite the blocks of every page; the pages that changed."""
    changed = []
    for page in pages(root):
        text = page.read_text()
        new = render_page(text, results)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed
