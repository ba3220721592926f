"""Measure ``/ui`` on a running gateway and take its screenshots (headless Chromium, dev tools only).

    python -m workers.gateway.ui_probe [--url http://127.0.0.1:8000] [--loads 5] [--polls 50]
        [--gateway-pid PID] [--screenshot docs/ui.png] [--explore-user 8] [--explore-screenshot docs/ui-explore.png]

Prints JSON: per page load, the navigation timing (response, DOM ready, load event) and the time to
the first rendered status (``window.uiFirstRender``: the status fetched and drawn); the cost of one
poll of ``/ui/api/status`` (client-side wall time and bytes over ``--polls`` requests) and the
sampler's own CPU per sample (what the gateway spends reading the workers, every ``sample_s``,
whether a page is open or not). With ``--gateway-pid`` (``pgrep -f 'workers.cli gateway'``) also the
gateway's CPU per poll: its CPU time over 30 s of polls back to back, minus that of 30 s without
(whatever else it serves meanwhile). Needs Debian's ``chromium`` and ``chromium-driver`` and
``selenium`` (the ``dev`` extra), as the browser tests do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Headless Chromium that reaches nothing beyond loopback by itself (also the browser tests' flags).
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
FLAGS = (*HEADLESS_FLAGS, "--window-size=1400,1500")


LOADED = "return performance.getEntriesByType('navigation')[0].loadEventEnd > 0"


def _driver(profile: Path) -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))


def _wait(driver: Any, condition: Any, timeout_s: float = 30.0) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(driver, timeout_s).until(condition)


def measure_loads(driver: Any, url: str, loads: int) -> list[dict[str, float]]:
    out = []
    for _ in range(loads):
        driver.get("about:blank")
        driver.get(f"{url}/ui")
        _wait(driver, lambda d: d.execute_script("return window.uiFirstRender !== undefined"))
        _wait(driver, lambda d: d.execute_script(LOADED))
        nav = driver.execute_script("return performance.getEntriesByType('navigation')[0].toJSON()")
        first = float(driver.execute_script("return window.uiFirstRender"))
        out.append(
            {
                "response_ms": round(float(nav["responseEnd"]), 1),
                "dom_ready_ms": round(float(nav["domContentLoadedEventEnd"]), 1),
                "load_ms": round(float(nav["loadEventEnd"]), 1),
                "first_status_rendered_ms": round(first, 1),
            }
        )
    return out


def measure_polls(url: str, polls: int) -> dict[str, Any]:
    walls, size = [], 0
    status: dict[str, Any] = {}
    for _ in range(polls):
        began = time.perf_counter()
        with urllib.request.urlopen(f"{url}/ui/api/status", timeout=10) as response:
            body = response.read()
        walls.append((time.perf_counter() - began) * 1000)
        size = len(body)
        status = json.loads(body)
    walls.sort()
    sampler = status.get("sampler", {})
    sample_s = float(status.get("sample_s") or 0)
    cpu = sampler.get("cpu_ms_mean")
    return {
        "poll_wall_ms_p50": round(statistics.median(walls), 2),
        "poll_wall_ms_p99": round(walls[min(len(walls) - 1, int(0.99 * len(walls)))], 2),
        "poll_bytes": size,
        "sample_s": sample_s,
        "sampler_wall_ms_mean": sampler.get("wall_ms_mean"),
        "sampler_cpu_ms_mean": cpu,
        "sampler_cpu_share_of_one_core": round(cpu / (sample_s * 1000), 5) if cpu and sample_s else None,
        "samples": sampler.get("samples"),
        "live_version": status.get("live", {}).get("version"),
    }


def gateway_cpu_per_poll(url: str, pid: int, seconds: float = 30.0) -> dict[str, Any]:
    import psutil

    proc = psutil.Process(pid)

    def cpu() -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    def window(poll: bool) -> tuple[float, int]:
        began, start, polls = cpu(), time.monotonic(), 0
        while time.monotonic() - start < seconds:
            if poll:
                with urllib.request.urlopen(f"{url}/ui/api/status", timeout=10) as response:
                    response.read()
                polls += 1
            else:
                time.sleep(0.05)
        return cpu() - began, polls

    idle, _ = window(False)
    busy, polls = window(True)
    return {
        "gateway_cpu_s_per_s_without_polls": round(idle / seconds, 4),
        "gateway_cpu_s_per_s_polling_flat_out": round(busy / seconds, 4),
        "gateway_polls": polls,
        "gateway_cpu_ms_per_poll": round((busy - idle) / polls * 1000, 3) if polls else None,
    }


def screenshots(driver: Any, url: str, now: Path | None, user: int | None, explore: Path | None) -> None:
    from selenium.webdriver.common.by import By

    if now is not None:
        driver.get(f"{url}/ui")
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#charts .chart svg")) >= 8)
        now.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(now))
    if user is not None and explore is not None:
        driver.get(f"{url}/ui")
        driver.find_element(By.ID, "tab-explore").click()
        driver.find_element(By.ID, "user-id").send_keys(str(user))
        driver.find_element(By.ID, "user-go").click()
        _wait(driver, lambda d: d.find_element(By.ID, "rec-ids").text != "")
        explore.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(explore))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.gateway.ui_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--loads", type=int, default=5)
    p.add_argument("--polls", type=int, default=50)
    p.add_argument("--gateway-pid", type=int, help="the gateway process: also measure its CPU per poll")
    p.add_argument("--screenshot", type=Path)
    p.add_argument("--explore-user", type=int)
    p.add_argument("--explore-screenshot", type=Path)
    args = p.parse_args(argv)
    profile = Path(tempfile.mkdtemp(prefix="ui-probe-"))
    driver = _driver(profile)
    try:
        loads = measure_loads(driver, args.url, args.loads)
        polls = measure_polls(args.url, args.polls)
        if args.gateway_pid is not None:
            polls.update(gateway_cpu_per_poll(args.url, args.gateway_pid))
        screenshots(driver, args.url, args.screenshot, args.explore_user, args.explore_screenshot)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    summary = {
        "loads": loads,
        "first_status_rendered_ms_max": max(x["first_status_rendered_ms"] for x in loads),
        "load_ms_max": max(x["load_ms"] for x in loads),
        **polls,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
