"""The VisualDL dashboard as a person sees it.

A tiny real training run writes its VisualDL logs; `visualdl --logdir=log` serves them on 127.0.0.1;
its JSON API must hold every logged point, and the scalar page, opened in headless Debian Chromium
(driven by Playwright, tools/dashboard_screenshot.py), must draw a chart for each of Train/Loss,
Train/lr, Test/Loss and Test/cer with that many points. The screenshot lands in pytest's tmp_path.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.dashboard_screenshot import (CHROMIUM, expand_all_groups, main, open_browser,  # noqa: E402
                                        open_scalar_page, read_charts, serve_visualdl, settled_scalars,
                                        wait_for_charts)

# conf/tiny.yml: 40 training utterances in batches of 4 = 10 steps an epoch, a Train point every
# log_interval=2 steps (x = global step), a Test point after every epoch (x = epoch number).
EPOCHS = 3
RUN = "log/tiny"  # VisualDL names a run by its folder as seen from where `visualdl --logdir=log` ran


def expected_steps(epochs: int) -> dict[str, list[int]]:
    train, test = list(range(2, 10 * epochs + 1, 2)), list(range(1, epochs + 1))
    return {"Train/Loss": train, "Train/lr": train, "Test/Loss": test, "Test/cer": test}


TAGS = sorted(expected_steps(EPOCHS))
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"{CHROMIUM} missing: apt-get install chromium (.ci/run installs it)")


def run_python(cwd: Path, script: str, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, f"{script} {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}"


def steps_of(scalars: dict) -> dict[str, dict[str, list[int]]]:
    return {run: {tag: [int(point[1]) for point in points] for tag, points in tags.items()}
            for run, tags in scalars.items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder where the user's path ran: demo corpus, create_data.py, train.py on conf/tiny.yml."""
    work = tmp_path_factory.mktemp("tiny_run")
    (work / "conf").symlink_to(ROOT / "conf")
    run_python(work, "tools/make_demo_corpus.py", "--num_train", "40", "--num_test", "8", "--out_dir", "dataset")
    run_python(work, "create_data.py", "--configs", "conf/tiny.yml")
    run_python(work, "train.py", "--configs", "conf/tiny.yml", f"--num_epoch={EPOCHS}")
    return work


@pytest.fixture(scope="module")
def dashboard(trained) -> str:
    """Base URL of `visualdl --logdir=log --host 127.0.0.1 --port <free>` over the run; stopped afterwards."""
    with serve_visualdl("log", cwd=trained) as base_url:
        yield base_url


def test_api_serves_every_logged_point(dashboard):
    want = {RUN: expected_steps(EPOCHS)}
    scalars = settled_scalars(dashboard, done=lambda got: steps_of(got) == want)
    assert steps_of(scalars) == want
    for tag, points in scalars[RUN].items():
        assert all(math.isfinite(point[2]) for point in points), tag
    assert all(point[2] > 0 for point in scalars[RUN]["Train/lr"])
    assert all(0 <= point[2] <= 1.5 for point in scalars[RUN]["Test/cer"])  # CER of an untrained model ~1


@needs_chromium
def test_scalar_page_draws_every_chart(dashboard, tmp_path):
    want = expected_steps(EPOCHS)
    settled_scalars(dashboard, done=lambda got: steps_of(got) == {RUN: want})
    with open_browser() as page:
        assert open_scalar_page(page, dashboard) == ["Test", "Train"]
        assert "Train/Loss" not in [chart.title for chart in read_charts(page)]  # the Train group starts closed
        expand_all_groups(page)
        charts = wait_for_charts(page, TAGS)
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert sorted(chart.title for chart in charts) == TAGS
    for chart in charts:
        assert chart.width > 200 and chart.height > 200, (chart.title, chart.width, chart.height)
        # one run: its smoothed and its raw curve, each through every logged point
        assert chart.curve_points == [len(want[chart.title])] * 2, chart
        assert chart.steps == [want[chart.title]] * 2, chart
        assert chart.line_pixels > 100, chart  # the curves are on the canvas, not only in the options
    assert shot.stat().st_size > 20_000


def test_resumed_training_keeps_the_whole_curve(trained, tmp_path):
    work = tmp_path / "resumed"
    shutil.copytree(trained, work, symlinks=True)
    run_python(work, "train.py", "--configs", "conf/tiny.yml", f"--num_epoch={EPOCHS + 1}")  # resumes
    run_python(work, "train.py", "--configs", "conf/tiny.yml", f"--num_epoch={EPOCHS + 1}")  # nothing left
    want = {RUN: expected_steps(EPOCHS + 1)}
    with serve_visualdl("log", cwd=work) as base_url:
        scalars = settled_scalars(base_url, done=lambda got: steps_of(got) == want, timeout=20)
    assert steps_of(scalars) == want


def test_screenshot_tool_refuses_a_missing_log_folder(tmp_path, capsys):
    assert main(["--logdir", str(tmp_path / "no_log"), "--out", str(tmp_path / "x.png")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
