"""`python -m clipmini.jobs screenshots`: a tiny site with one overflowing code block and one broken image.

The browser test needs Chromium (`make screenshots` installs Debian's package) and playwright (the
`screenshots` extra); it is skipped, with the reason, only where one of them is missing.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from clipmini import jobs, screenshots

LONG = "x = 1  # " + "a comment that runs on well past the column " * 4
PAGE = '<!doctype html><html><head><meta charset="utf-8"><title>{0}</title></head><body style="width: 600px">{1}</body></html>'
SITE = {
    "clean.html": '<div class="highlight"><pre>print("fits")</pre></div><img src="dot.png" alt="a dot">',
    "overflow.html": f'<div class="cell"><div class="highlight"><pre>short = 1\n{LONG}\n</pre></div></div>',
    "broken.html": '<p>A figure that is not there:</p><img src="missing.png" alt="nothing">',
}


def _site(folder):
    folder.mkdir(exist_ok=True)
    for name, body in SITE.items():
        (folder / name).write_text(PAGE.format(name, body))
    Image.new("RGB", (4, 4), "red").save(folder / "dot.png")
    (folder / "_static").mkdir()
    (folder / "_static" / "theme.html").write_text(PAGE.format("not a page", ""))
    (folder / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=clean.html" />')
    return folder


def test_the_pages_are_the_book_s_own(tmp_path):
    assert screenshots.book_pages(_site(tmp_path)) == ["broken", "clean", "overflow"]  # no _static, no redirect


def test_a_missing_book_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make book"):
        screenshots.look(tmp_path / "html", tmp_path / "out")


def test_the_report_finds_the_overflow_and_the_broken_image(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the 'screenshots' extra)")
    try:
        screenshots.find_chromium()
    except FileNotFoundError as err:
        pytest.skip(f"no Chromium installed: {err}")
    site, out = _site(tmp_path / "html"), tmp_path / "shots"
    status = jobs.main(["screenshots", str(site), "--out", str(out), "--width", "800", "--sample", "overflow"])
    report = json.loads((out / "report.json").read_text())
    pages = {page["page"]: page for page in report["pages"]}
    assert sorted(pages) == ["broken", "clean", "overflow"]
    assert {name: len(page["blocks"]) for name, page in pages.items()} == {"broken": 0, "clean": 0, "overflow": 1}
    (block,) = pages["overflow"]["blocks"]
    assert block["kind"] == "cell" and block["long_lines"] == 1 and block["lines"] == [LONG[: screenshots.LINE_START]]
    assert 40 < block["columns"] < len(LONG)  # a 600-pixel column holds about 60 monospace characters
    assert pages["clean"]["broken_images"] == [] and pages["overflow"]["broken_images"] == []
    assert [src.rsplit("/", 1)[-1] for src in pages["broken"]["broken_images"]] == ["missing.png"]
    assert status == 1  # a broken image fails the run; overflow alone does not (test below)
    assert [Image.open(page["screenshot"]).width for page in pages.values()] == [800, 800, 800]
    assert Image.open(report["phone"]["screenshot"]).width == 390 and report["phone"]["page"] == "overflow"
    assert Image.open(report["contact_sheet"]).width > 3 * 320
    without_broken = {**report, "pages": [pages["clean"], pages["overflow"]]}
    assert not screenshots.failed(without_broken)
    assert screenshots.failed(without_broken, fail_on_overflow=True)
    text = screenshots.summary(report)
    assert "3 pages: 1 code blocks overflow on 1 pages, 1 broken images" in text and repr(LONG[:60]) in text
