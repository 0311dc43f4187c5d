"""``recsys report``: a self-contained page about real runs, checked as HTML and in a headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from recsys.cli import main
from tests.conftest import DATA_DIR

SMALL = ["--set", "model.hidden_dim=16", "--set", "model.num_blocks=1", "--set", "train.num_threads=1"]


class Page(HTMLParser):
    """The tags a report is made of: tables (with their rows), inline SVG images, scripts, links out."""

    def __init__(self):
        super().__init__()
        self.tables, self.svgs, self.scripts, self.external = [], 0, 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"class": attrs.get("class"), "rows": 0})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"] += 1
        elif tag == "svg":
            self.svgs += 1
        elif tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("#"):
                self.external.append(attrs[key])


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not (DATA_DIR / "ml-100k").exists():
        pytest.skip(f"{DATA_DIR / 'ml-100k'} not available")
    root = tmp_path_factory.mktemp("report")
    runs = [root / "sasrec", root / "popularity"]
    with pytest.MonkeyPatch.context() as env:  # (module scope: the per-test environment is not set up yet)
        env.setenv("RECSYS_DATA", str(DATA_DIR))
        env.setenv("RECSYS_CACHE", str(root / "cache"))
        train = ["train", "ml-100k/sasrec", "--run-dir", str(runs[0]), "--quiet", "--set", "train.epochs=3", *SMALL]
        assert main(train) == 0
        assert main(["train", "ml-100k/popularity", "--run-dir", str(runs[1]), "--quiet"]) == 0
        out = root / "report.html"
        assert main(["report", *map(str, runs), "--out", str(out), "--examples", "2"]) == 0
    return out


def test_the_page_holds_every_part_and_nothing_external(report):
    text = report.read_text()
    page = Page()
    page.feed(text)
    classes = [t["class"] for t in page.tables]
    assert classes.count("metrics") == 1 and classes.count("bias") == 2 and classes.count("examples") == 4
    metrics = next(t for t in page.tables if t["class"] == "metrics")
    assert metrics["rows"] == 3  # header + two runs
    assert page.svgs == 2 and page.scripts == 0 and page.external == []
    assert "recipes/ml-100k/sasrec.toml" in text and "best: " in text  # the recipe named, the best epoch marked
    assert "Toy Story" in text or "(1995)" in text  # item titles in the examples


def test_the_page_renders_in_a_headless_browser(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs it where the system package manager allows)")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    dom = subprocess.run([browser, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert '<table class="metrics">' in dom.stdout or 'class="metrics"' in dom.stdout
    assert dom.stdout.count("<svg") == 2
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console  # no console messages at all, errors or otherwise


def test_a_damaged_metrics_log_is_an_error_naming_its_line(report, tmp_path, capsys):
    run = tmp_path / "sasrec"
    shutil.copytree(report.parent / "sasrec", run)
    with (run / "metrics.jsonl").open("a") as log:
        log.write("garbage\n")
    lines = (run / "metrics.jsonl").read_text().count("\n")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
    assert f"metrics.jsonl, line {lines}: not a readable per-epoch metrics log" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
