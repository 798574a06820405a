"""Look at the VisualDL dashboard the way a person does: serve a log folder, open the scalar page in
headless Chromium, open every tag group, read what the charts drew, save a PNG.

    python tools/dashboard_screenshot.py                        # log/ -> dashboard.png
    python tools/dashboard_screenshot.py --logdir log --out docs/dashboard.png

VisualDL runs on 127.0.0.1 only; the browser is Debian's chromium (/usr/bin/chromium) driven by
Playwright (pip install -r requirements-test.txt; no browser download is needed) and is kept off
the network: every request that is not to the local VisualDL is refused (the page links an
analytics script from the internet).
Prints, per chart, its title, the points of each curve and how many pixels its curves coloured,
then one line naming the PNG.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [  # the flags that rendered VisualDL offline here (shared/facts.md); the profile is fresh
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # no name lookups leave the machine
]
VIEWPORT = {"width": 1280, "height": 900}
ECHARTS_MODULE = "/app/__snowpack__/pkg/echarts.js"  # the module VisualDL 2.5's charts come from


class DashboardError(RuntimeError):
    pass


@dataclass
class Chart:
    """One scalar chart as drawn: its title, the point count and x values of each non-empty curve."""
    title: str
    width: float
    height: float
    curve_points: list[int] = field(default_factory=list)  # per curve (VisualDL draws smoothed + raw)
    steps: list[list[float]] = field(default_factory=list)
    line_pixels: int = 0  # canvas pixels in the curves' blue


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 10.0):
    """The `data` of a VisualDL API answer."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        body = json.loads(answer.read().decode("utf-8"))
    if body.get("status") != 0:
        raise DashboardError(f"{url} answered {body}")
    return body["data"]


def visualdl_command() -> list[str]:
    """The visualdl entry point beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("visualdl")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("visualdl")
    if found is None:
        raise DashboardError("no visualdl command found; pip install visualdl")
    return [found]


def _wait_for_runs(base_url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DashboardError(f"visualdl exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            runs = get_json(f"{base_url}/app/api/runs", timeout=2)
            if runs:
                return runs
        except (OSError, DashboardError, ValueError):
            pass
        time.sleep(0.5)
    raise DashboardError(f"visualdl listed no run within {timeout:.0f}s:\n{log_path.read_text()[-2000:]}")


def _stop(process: subprocess.Popen) -> None:
    """End the process group we started (VisualDL and anything it forked)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def serve_visualdl(logdir: str | Path, cwd: str | Path | None = None, port: int = 0, timeout: float = 90.0):
    """Run `visualdl --logdir=LOGDIR --host 127.0.0.1 --port PORT` until the block ends; yields the base URL
    once /app/api/runs lists a run. LOGDIR is taken relative to cwd, as a user would type it, so that run
    names read like theirs (`log/tiny`)."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile("w+b", prefix="visualdl-", suffix=".out", delete=False) as out:
        log_path = Path(out.name)
        process = subprocess.Popen(
            visualdl_command() + [f"--logdir={logdir}", "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_runs(base_url, process, log_path, timeout)
        yield base_url
    finally:
        _stop(process)
        log_path.unlink(missing_ok=True)


def settled_scalars(base_url: str, done=None, timeout: float = 60.0) -> dict[str, dict[str, list[list[float]]]]:
    """read_scalars once done(scalars) holds, or (without done) once two reads a second apart agree and hold
    some scalars: VisualDL may answer /runs before it has read every record."""
    deadline, previous = time.monotonic() + timeout, None
    while True:
        scalars = read_scalars(base_url)
        if (done(scalars) if done else (scalars and scalars == previous)):
            return scalars
        if time.monotonic() > deadline:
            return scalars
        previous = scalars
        time.sleep(1.0)


def read_scalars(base_url: str) -> dict[str, dict[str, list[list[float]]]]:
    """{run: {tag: [[wall_ms, step, value], ...]}} straight from VisualDL's JSON API."""
    listing = get_json(f"{base_url}/app/api/scalar/tags")
    scalars: dict[str, dict[str, list]] = {}
    for run, tags in zip(listing["runs"], listing["tags"]):
        scalars[run] = {}
        for tag in tags:
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            scalars[run][tag] = get_json(f"{base_url}/app/api/scalar/list?{query}") or []
    return scalars


@contextlib.contextmanager
def open_browser(viewport: dict | None = None):
    """A Playwright page in headless Debian Chromium with a fresh profile, allowed to reach 127.0.0.1 only."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise DashboardError(f"{CHROMIUM} is missing; apt-get install chromium")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport=viewport or VIEWPORT)
            try:
                context.route("**/*", _loopback_only)
                yield context.pages[0] if context.pages else context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _loopback_only(route) -> None:
    host = urllib.parse.urlsplit(route.request.url).hostname
    if host in ("127.0.0.1", "localhost"):
        route.continue_()
    else:
        route.abort()


_GROUPS_JS = """() => Array.from(document.querySelectorAll('article h3')).map(h3 => ({
    name: h3.textContent.trim(),
    open: h3.parentElement.parentElement.querySelector('.echarts') !== null}))"""

_CHARTS_JS = """async (module) => {
  const echarts = await import(module);
  return Array.from(document.querySelectorAll('div.echarts')).map(el => {
    const chart = echarts.getInstanceByDom(el);
    const canvas = el.querySelector('canvas');
    const box = (canvas || el).getBoundingClientRect();
    let linePixels = 0;
    if (canvas && canvas.width && canvas.height) {
      const rgba = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < rgba.length; i += 4) {  // the curves' blue; text, axes and grid are grey
        if (rgba[i + 3] > 0 && rgba[i + 2] > 150 && rgba[i + 2] - rgba[i] > 60) linePixels += 1;
      }
    }
    if (!chart) return {title: null, width: box.width, height: box.height, series: [], linePixels};
    const option = chart.getOption();
    const series = (option.series || []).map(s => (s.data || []).map(point => point[1]))
                                        .filter(steps => steps.length > 0);
    return {title: (option.title || [{}])[0].text, width: box.width, height: box.height, series, linePixels};
  });
}"""


def open_scalar_page(page, base_url: str, timeout: float = 60.0) -> list[str]:
    """Load /app/scalar and wait for its tag groups; returns their names."""
    page.goto(f"{base_url}/app/scalar", wait_until="load", timeout=timeout * 1000)
    page.wait_for_selector("article h3", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while True:  # under load the group titles read "Loading..." for a while
        names = [group["name"] for group in page.evaluate(_GROUPS_JS)]
        if not any(name.startswith("Loading") for name in names) or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


def expand_all_groups(page) -> None:
    """Click open every collapsed tag group (VisualDL opens only the first one)."""
    for index, group in enumerate(page.evaluate(_GROUPS_JS)):
        if not group["open"]:
            page.locator("article h3").nth(index).click()


def read_charts(page) -> list[Chart]:
    """What the page's ECharts instances hold and drew, in page order."""
    return [Chart(title=c["title"], width=c["width"], height=c["height"], curve_points=[len(s) for s in c["series"]],
                  steps=c["series"], line_pixels=c["linePixels"])
            for c in page.evaluate(_CHARTS_JS, ECHARTS_MODULE)]


def wait_for_charts(page, titles: list[str], timeout: float = 60.0) -> list[Chart]:
    """Poll until a chart for every title has curves and its pixels stopped changing (the curves animate in)."""
    deadline, previous = time.monotonic() + timeout, None
    while True:
        charts = read_charts(page)
        drawn = {c.title: c for c in charts if c.title in titles and c.curve_points and c.line_pixels}
        state = {title: (c.curve_points, c.line_pixels) for title, c in drawn.items()}
        if len(drawn) == len(titles) and state == previous:
            return charts
        if time.monotonic() > deadline:
            missing = sorted(set(titles) - set(drawn))
            raise DashboardError(f"charts not drawn within {timeout:.0f}s: {missing or 'still animating'}; "
                                 f"seen {[(c.title, c.curve_points, c.line_pixels) for c in charts]}")
        previous = state
        time.sleep(0.7)


def capture(logdir: str | Path, out: str | Path, cwd: str | Path | None = None,
            viewport: dict | None = None) -> tuple[dict, list[Chart]]:
    """Serve logdir, draw every scalar chart, save a full-page PNG to out; returns (API scalars, charts)."""
    with serve_visualdl(logdir, cwd=cwd) as base_url:
        scalars = settled_scalars(base_url)
        titles = sorted({tag for tags in scalars.values() for tag in tags})
        if not titles:
            raise DashboardError(f"{logdir} holds no scalars")
        with open_browser(viewport) as page:
            open_scalar_page(page, base_url)
            expand_all_groups(page)
            charts = wait_for_charts(page, titles)
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
    return scalars, charts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", default="log", help="the folder given to visualdl --logdir (default: log)")
    parser.add_argument("--out", default="dashboard.png", help="PNG to write (default: dashboard.png)")
    parser.add_argument("--width", type=int, default=VIEWPORT["width"], help="browser width in pixels")
    parser.add_argument("--height", type=int, default=VIEWPORT["height"], help="browser height in pixels")
    args = parser.parse_args(argv)
    if not Path(args.logdir).is_dir():
        print(f"error: {args.logdir} is not a folder; train first (python train.py) or pass --logdir",
              file=sys.stderr)
        return 2
    try:
        scalars, charts = capture(args.logdir, args.out, viewport={"width": args.width, "height": args.height})
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for run, tags in scalars.items():
        for tag, points in tags.items():
            print(f"api   {run} {tag}: {len(points)} points")
    for chart in charts:
        print(f"chart {chart.title}: curves of {chart.curve_points} points, {chart.line_pixels} curve pixels, "
              f"{chart.width:.0f}x{chart.height:.0f}")
    print(f"dashboard_screenshot: wrote {args.out} ({Path(args.out).stat().st_size // 1024} KiB, "
          f"{len(charts)} charts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
