"""The HTML report end to end on toy runs: self-contained, escaped, and rendered by headless Chromium.

The runs use this module as their task ("task": "test_report", tests/ is on sys.path): the toy
task with image ids that carry markup, so the gallery must escape dataset text.
"""
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import toy_task
from rewardtune.analysis import analyze_run
from rewardtune.report.html import metrics_section, write_report
from test_train_core import toy_mle_and_tuned

EVIL = "<script>alert(1)</script>"
IMAGES = 3


def make_task(config, state=None):
    """The toy task whose val ids are `EVIL` + a number."""
    task = toy_task.make_task(config, state)
    datasets = task.datasets

    def evil_datasets():
        splits = datasets()
        splits["val"].ids = [f"{EVIL}{i}" for i in splits["val"].ids]
        return splits

    task.datasets = evil_datasets
    return task


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    mle, tuned = toy_mle_and_tuned(root, task="test_report")
    analyze_run(tuned, init_dir=mle, samples=10, images=2, batch_size=10)
    path = write_report([mle, tuned], str(root / "out" / "report.html"), images=IMAGES)
    with open(path, encoding="utf-8") as f:
        return path, f.read(), mle, tuned


def test_report_is_one_self_contained_file(report):
    path, text, _, _ = report
    assert os.path.dirname(path).endswith("out") and text.startswith("<!DOCTYPE html>")
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == 2 * IMAGES + 3 + 1 + 1  # gallery + tuned analysis (3) + MLE training curves + budget


def test_report_has_configs_metrics_table_analysis_and_gallery(report):
    _, text, mle, tuned = report
    assert text.count("<details>") == 2 and html.escape(os.path.abspath(tuned)) in text
    with open(os.path.join(mle, "eval", "val", "metrics.json")) as f:
        accuracy = json.load(f)["accuracy"]
    assert f"<th>accuracy</th><td class='num'>{accuracy:.4f}</td>" in text
    assert "best of 10" in text and "most likely of 10" in text  # the analysis headline table
    assert text.count('alt="mle ') == IMAGES and text.count('alt="tuned ') == IMAGES


def test_dataset_text_is_escaped(report):
    _, text, _, _ = report
    assert EVIL not in text
    assert html.escape(EVIL) + "100" in text  # the first val id, as text


def test_a_run_without_a_checkpoint_still_gets_a_report(report, tmp_path):
    _, _, mle, _ = report
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(mle, "config.json"), empty / "config.json")
    with open(write_report([mle, str(empty)], str(tmp_path / "r.html"), images=1), encoding="utf-8") as f:
        text = f.read()
    assert "run has no checkpoint yet" in text and text.count('alt="mle ') == 1


def test_metrics_table_shows_undefined_values_as_na_and_the_headline_metric_first(tmp_path):
    """COCOeval's -1 (no objects in that area range) is no number: n/a, and no change computed from it."""
    runs = []
    for name, values in (("mle", {"ap50": 0.5, "ap_large": -1.0, "map": 0.25, "ap_small": -1.0}),
                         ("tuned", {"ap50": 0.75, "ap_large": -1.0, "map": 0.5, "ap_small": 0.125})):
        folder = tmp_path / name / "eval" / "val"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(values))
        runs.append(str(tmp_path / name))
    text = metrics_section(runs, ["mle", "tuned"], ["MLE", "tuned"], primary="map", undefined=[-1.0, -1.0])
    assert re.findall(r"<tr><th>([^<]*)</th>", text) == ["metric", "map", "ap50", "ap_large", "ap_small"]
    row = lambda name: re.search(rf"<tr><th>{name}</th>(.*?)</tr>", text).group(1)  # noqa: E731
    assert row("ap_large") == "<td class='num'>n/a</td><td class='num'>n/a</td><td class='num '></td>"
    assert row("ap_small") == "<td class='num'>n/a</td><td class='num'>0.1250</td><td class='num '></td>"
    assert row("map").endswith("<td class='num up'>+0.2500</td>")


# --- headless Chromium -----------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,2000"]

# Injected into a copy of the report: records script errors (and any alert, which only unescaped
# data could call), then on load counts the images that decoded and writes the result into the DOM.
PROBE_HEAD = ("<script>window.__errors=[];window.onerror=function(m){window.__errors.push(String(m));};"
              "window.alert=function(){window.__errors.push('alert called');};</script>")
PROBE_BODY = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var r = {total: imgs.length, loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
           errors: window.__errors, scripts: document.scripts.length,
           evil_text: document.body.textContent.indexOf('<script>alert(1)<\\/script>') >= 0};
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});</script>"""


def chromium() -> str:
    """Debian's chromium; installed with apt-get where missing (as root), else the test is skipped."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and cannot be installed here (needs apt-get as root)")
    try:
        done = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True,
                              timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"chromium is not installed and `apt-get install -y chromium` failed: {e}")
    if done.returncode != 0 or not shutil.which("chromium"):
        pytest.skip("chromium is not installed and `apt-get install -y chromium` failed: "
                    + (done.stderr or done.stdout).strip()[-300:])
    return shutil.which("chromium")


def _chromium(binary, tmp_path, *args):
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=60)


def test_report_renders_in_headless_chromium(report, tmp_path):
    binary = chromium()
    path, text, _, _ = report
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_BODY + "</body>"),
                      encoding="utf-8")
    done = _chromium(binary, tmp_path, "--virtual-time-budget=10000", "--dump-dom", f"file://{probed}")
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe result in the DOM: {done.stdout[-500:]} {done.stderr[-1500:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["total"] == text.count("<img ") and result["loaded"] == result["total"]
    assert result["errors"] == [] and result["scripts"] == 2  # only the probe's own scripts
    assert result["evil_text"]  # the markup in the data shows as text

    shot = tmp_path / "shot.png"
    done = _chromium(binary, tmp_path, f"--screenshot={shot}", f"file://{os.path.abspath(path)}")
    assert shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank
