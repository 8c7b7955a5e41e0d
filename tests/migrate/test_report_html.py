"""report.html is one self-contained page: it renders its summary, chart, diffs and API table in headless
Chromium (Debian's ``chromium``; ``make test`` installs it when it can), and its filter works."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from opencann.migrate.project import Options, migrate_project
from opencann.migrate.report import categories, summary, write_reports
from tests.migrate.conftest import CORPUS, MAINS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict, int]:
    folder = tmp_path_factory.mktemp("html")
    migration = migrate_project(CORPUS, Options(main=MAINS.get("corpus")))
    info = summary(migration, "corpus", "out", "error")
    write_reports(migration, folder, info, ("html",))
    return folder / "report.html", info, sum(1 for r in migration.results for s in r.sections if s.changes)


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.external = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append(value)


def test_the_page_is_self_contained(report):
    path, info, _ = report
    text = path.read_text()
    links = Links()
    links.feed(text)
    assert links.external == []
    assert "http://" not in text and "https://" not in text and "@import" not in text
    assert text.count("<svg") == 1 and text.count("class=\"bar\"") == len(categories())


def dump_dom(url: str) -> str:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-dev-shm-usage", "--virtual-time-budget=3000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root: "
                    "apt-get install -y chromium)")
def test_chromium_renders_the_summary_and_runs_the_filter(report):
    path, info, changed_sections = report
    dom = dump_dom(path.as_uri())
    cards = dict(re.findall(r'<div class="card ([\w ]+)" data-count="(\d+)">', dom))
    assert cards["files"] == str(info["files"]["total"]) and cards["edits"] == str(info["edits"]["total"])
    assert cards["error"] == str(info["findings"]["error"]) and cards["API uses"] == str(info["api_uses"]["total"])
    total = info["api_uses"]["total"]
    assert f'id="api-shown">{total} of {total} API uses shown<' in dom  # written by the page's script
    assert dom.count('<details open="">') == changed_sections  # one side-by-side diff per changed file or cell
    removed = info["api_uses"]["removed"]
    filtered = dump_dom(path.as_uri() + "#category=removed")
    assert f'id="api-shown">{removed} of {total} API uses shown<' in filtered
    assert filtered.count('style="display: none;"') == total - removed
