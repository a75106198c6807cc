"""The rendered book as a reader sees it: every page in headless Chromium, with what a reader would trip on.

``python -m clipmini.jobs screenshots [HTML_DIR]`` (what ``make screenshots`` runs) serves the built HTML on
localhost, opens each page at desktop width, saves a PNG of it, and reports the code blocks whose lines run
past the code column (their ends hide behind a scrollbar) and the images that did not load. One chapter is
also shot on a 390-pixel phone screen and in the theme's dark mode, and a contact sheet shows every page.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clipmini.fileio import atomic_write_json

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LINES_KEPT = 20  # offending lines kept per block in the JSON report
LINE_START = 60  # characters of each offending line kept
BLOCK_KINDS = {"cell": "in cells", "output": "in outputs", "code": "other code"}  # other: prose, literalinclude

# Measures one page in the browser. Hidden cells (hide-input, hide-output) are opened first: a reader who
# opens them sees the same lines. A <pre>'s visible columns come from the width of its own monospace digit.
MEASURE_JS = """
async ([lineStart, linesKept]) => {
  for (const d of document.querySelectorAll('details')) d.open = true;
  const blocks = [];
  const selector = 'div.highlight pre, .cell_output pre, .cell_output .output.text_html';
  for (const el of document.querySelectorAll(selector)) {
    if (el.clientWidth === 0 || el.scrollWidth <= el.clientWidth + 1) continue;
    let columns = null, lines;
    if (el.tagName === 'PRE') {
      const style = getComputedStyle(el);
      const probe = document.createElement('span');
      probe.textContent = '0'.repeat(100);
      el.appendChild(probe);
      const charWidth = probe.getBoundingClientRect().width / 100;
      probe.remove();
      const inner = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
      columns = Math.floor(inner / charWidth);
      const tab = ' '.repeat(parseInt(style.tabSize) || 8);
      lines = el.textContent.split('\\n').map(l => l.replace(/\\t/g, tab)).filter(l => l.length > columns);
    } else {
      lines = [el.innerText.split('\\n')[0]];  // an HTML output (a wide table): its first line
    }
    blocks.push({
      kind: el.closest('.cell_output') ? 'output' : el.closest('.cell') ? 'cell' : 'code',  // code: prose, literalinclude
      columns: columns,
      hidden_px: el.scrollWidth - el.clientWidth,
      long_lines: lines.length,
      lines: lines.slice(0, linesKept).map(l => l.slice(0, lineStart)),
    });
  }
  const images = [...document.images];
  for (const img of images) img.loading = 'eager';
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener('load', done, {once: true});
    img.addEventListener('error', done, {once: true});
    setTimeout(done, 10000);
  })));
  const broken = [];
  for (const img of images) {
    if (!(img.complete && img.naturalWidth === 0)) continue;
    try { await img.decode(); } catch (err) { broken.push(img.src || '(no src)'); }  // an SVG may have no natural size
  }
  return {blocks: blocks, broken_images: broken};
}
"""

LOOK_JS = """
() => {
  const rgb = getComputedStyle(document.body).backgroundColor.match(/[\\d.]+/g).map(Number);
  return {
    theme: document.documentElement.dataset.theme || '',
    background_luminance: (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255,
    page_width: document.documentElement.scrollWidth,
    page_height: document.documentElement.scrollHeight,
  };
}
"""


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium to drive: `explicit`, else $CHROMIUM, else the first of CHROMIUM_NAMES on the PATH."""
    for candidate in (explicit, os.environ.get("CHROMIUM")):
        if candidate:
            found = shutil.which(candidate)
            if not found:
                raise FileNotFoundError(f"no Chromium at {candidate!r} (from --chromium or $CHROMIUM)")
            return found
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    raise FileNotFoundError(
        "no Chromium found (looked for " + ", ".join(CHROMIUM_NAMES) + "): install Debian's package with "
        "`apt-get install -y chromium` (as root; `make screenshots` does this itself), or set CHROMIUM to "
        "a Chromium or Chrome binary")


def book_pages(html_dir: str | os.PathLike) -> list[str]:
    """Every page of a built book, as paths relative to `html_dir` without ``.html``.

    Folders whose names start with an underscore are Sphinx's own (``_static``, ``_sources``, and
    ``_modules``, the package's source listings behind the "[source]" links): they are not pages of the book.
    Nor is a redirect (Jupyter Book's ``index.html`` sends the reader on to the root page).
    """
    html_dir = Path(html_dir)
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        relative = path.relative_to(html_dir)
        if any(part.startswith("_") for part in relative.parts[:-1]) or _is_redirect(path):
            continue
        pages.append(relative.with_suffix("").as_posix())
    return pages


def _is_redirect(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(2000).lower()
    return 'http-equiv="refresh"' in head and "<body" not in head


def default_sample(pages: list[str]) -> str:
    """The page shot on a phone and in dark mode: the first chapter, else the first page."""
    return next((p for p in pages if p.startswith("notebooks/")), pages[0])


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


def _serve(html_dir: Path) -> ThreadingHTTPServer:
    """Serve `html_dir` on a free localhost port, as a web host would (file:// breaks the search page)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _import_playwright():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as err:
        raise ImportError(
            "the screenshots need the Python package playwright (it drives the system's Chromium; no browser "
            "is downloaded): pip install --constraint requirements/constraints.txt '.[screenshots]', "
            "or run `make screenshots`") from err
    return sync_playwright, Error


def look(html_dir: str | os.PathLike, out_dir: str | os.PathLike, *, width: int = 1280, height: int = 800,
         phone_width: int = 390, sample: str | None = None, max_height: int = 16000, chromium: str | None = None,
         allow_network: bool = False) -> dict[str, Any]:
    """Shoot and check every page of the book in `html_dir`; PNGs, a contact sheet and report.json in `out_dir`.

    Requests that leave localhost are blocked unless `allow_network` (a CDN's MathJax then shows as raw TeX,
    and the report names the hosts). A page taller than `max_height` pixels is cut at that height.
    """
    html_dir, out_dir = Path(html_dir).resolve(), Path(out_dir)
    pages = book_pages(html_dir) if html_dir.is_dir() else []
    if not pages:
        raise FileNotFoundError(
            f"no book pages in {html_dir}: build the book first (`make book` writes _build/html; "
            "`make book-check` writes the faster, non-executed _build/check/_build/html)")
    sample = sample or default_sample(pages)
    if sample not in pages:
        raise ValueError(f"no page {sample!r} in {html_dir}; the pages are {pages}")
    executable = find_chromium(chromium)
    sync_playwright, PlaywrightError = _import_playwright()
    shutil.rmtree(out_dir / "pages", ignore_errors=True)
    (out_dir / "pages").mkdir(parents=True)
    server = _serve(html_dir)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    blocked: set[str] = set()

    def route(request_route) -> None:
        host = urlsplit(request_route.request.url).hostname
        if allow_network or host == "127.0.0.1":
            request_route.continue_()
        else:
            blocked.add(host or request_route.request.url[:40])
            request_route.abort()

    def shoot(context, page_name: str, path: Path, measure: bool) -> dict[str, Any]:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)[:200]))
        shot: dict[str, Any] = {"page": page_name, "screenshot": None, "js_errors": errors, "blocks": [],
                                "broken_images": [], "error": ""}
        try:
            page.goto(base + page_name + ".html", wait_until="load", timeout=60_000)
            page.evaluate("document.fonts.ready.then(() => true)")
            shot.update(page.evaluate(LOOK_JS))
            page.screenshot(path=str(path), full_page=True, clip={
                "x": 0, "y": 0, "width": page.viewport_size["width"], "height": min(shot["page_height"], max_height)})
            shot.update(screenshot=str(path), truncated=shot["page_height"] > max_height)
            if measure:
                shot.update(page.evaluate(MEASURE_JS, [LINE_START, LINES_KEPT]))
        except PlaywrightError as err:  # a page that does not load is reported, and fails the run
            shot["error"] = str(err).strip().splitlines()[0][:200]
        page.close()
        return shot

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--disable-dev-shm-usage"])
            desktop = browser.new_context(viewport={"width": width, "height": height}, color_scheme="light")
            phone = browser.new_context(viewport={"width": phone_width, "height": 844}, is_mobile=True,
                                        has_touch=True, color_scheme="light")
            dark = browser.new_context(viewport={"width": width, "height": height}, color_scheme="dark")
            dark.add_init_script("localStorage.setItem('mode', 'dark'); localStorage.setItem('theme', 'dark');")
            for context in (desktop, phone, dark):
                context.route("**/*", route)
            results = [shoot(desktop, p, out_dir / "pages" / f"{p.replace('/', '__')}.png", True) for p in pages]
            stem = sample.replace("/", "__")
            phone_shot = shoot(phone, sample, out_dir / f"phone-{stem}.png", False)
            dark_shot = shoot(dark, sample, out_dir / f"dark-{stem}.png", False)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    report = {
        "html_dir": str(html_dir),
        "browser": executable,
        "width": width,
        "pages": results,
        "phone": {**phone_shot, "width": phone_width, "fits": phone_shot.get("page_width", 0) <= phone_width},
        "dark": {**dark_shot, "dark": dark_shot.get("theme") == "dark" and dark_shot["background_luminance"] < 0.5},
        "blocked_hosts": sorted(blocked),
        "contact_sheet": str(contact_sheet(results, out_dir / "contact-sheet.png", width=width, height=height)),
    }
    atomic_write_json(out_dir / "report.json", report)
    return report


def contact_sheet(results: list[dict[str, Any]], path: Path, *, width: int, height: int, columns: int = 5,
                  thumb_width: int = 320) -> Path:
    """Every page's first screen as a thumbnail, in a grid, labelled with the page and what it was found to have."""
    from PIL import Image, ImageDraw, ImageFont

    thumb_height = round(thumb_width * height / width)
    label_height, pad = 38, 10
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType
        font = ImageFont.load_default()
    rows = -(-len(results) // columns)
    sheet = Image.new("RGB", (pad + columns * (thumb_width + pad), pad + rows * (thumb_height + label_height + pad)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for i, result in enumerate(results):
        x = pad + (i % columns) * (thumb_width + pad)
        y = pad + (i // columns) * (thumb_height + label_height + pad)
        if result["screenshot"]:
            with Image.open(result["screenshot"]) as shot:
                top = shot.crop((0, 0, shot.width, min(shot.height, round(shot.width * height / width))))
                sheet.paste(top.convert("RGB").resize((thumb_width, round(thumb_width * top.height / top.width))),
                            (x, y))
        else:
            draw.text((x + 10, y + 10), f"did not load: {result['error'][:40]}", fill="#b00020", font=font)
        draw.rectangle((x, y, x + thumb_width - 1, y + thumb_height - 1), outline="#999999")
        found = f"{len(result['blocks'])} overflowing, {len(result['broken_images'])} broken images"
        problem = result["broken_images"] or result["blocks"] or result["error"]
        draw.text((x, y + thumb_height + 3), result["page"], fill="black", font=font)
        draw.text((x, y + thumb_height + 19), found, fill="#b00020" if problem else "#555555", font=font)
    sheet.save(path)
    return path


def failed(report: dict[str, Any], *, fail_on_overflow: bool = False) -> bool:
    """Whether the report fails: a page that did not load, any broken image, or (with `fail_on_overflow`) any
    overflowing block."""
    shots = [*report["pages"], report["phone"], report["dark"]]
    return any(p["error"] or p["broken_images"] or (fail_on_overflow and p["blocks"]) for p in shots)


def summary(report: dict[str, Any], *, shown_lines: int = 3) -> str:
    """The report as text: a line per page, with the starts of its first few lines that overflow."""
    pages = report["pages"]
    name_width = max(len(p["page"]) for p in pages)
    lines = [f"{'page':<{name_width}}  overflowing  broken images"]
    for page in pages:
        columns = sorted({b["columns"] for b in page["blocks"] if b["columns"]})
        kinds = {kind: sum(b["kind"] == kind for b in page["blocks"]) for kind in ("cell", "output", "code")}
        shown = ", ".join(f"{count} {BLOCK_KINDS[kind]}" for kind, count in kinds.items() if count)
        shown += f"; the column holds {', '.join(map(str, columns))} characters" if columns else ""
        shown = f"  ({shown})" if shown else ""
        lines.append(f"{page['page']:<{name_width}}  {len(page['blocks']):>11}  {len(page['broken_images']):>13}{shown}")
        starts = [line for block in page["blocks"] for line in block["lines"]][:shown_lines]
        lines += [f"    {start!r}" for start in starts]
        lines += [f"    broken image: {src}" for src in page["broken_images"]]
        lines += [f"    did not load: {page['error']}"] if page["error"] else []
    blocks = sum(len(p["blocks"]) for p in pages)
    broken = sum(len(p["broken_images"]) for p in pages)
    lines.append(f"{len(pages)} pages: {blocks} code blocks overflow on {sum(bool(p['blocks']) for p in pages)} "
                 f"pages, {broken} broken images")
    phone, dark = report["phone"], report["dark"]
    lines.append(f"phone ({phone['width']} px): {phone['screenshot'] or 'did not load: ' + phone['error']}"
                 + ("" if phone["fits"] else f" (the page is {phone['page_width']} px wide: it scrolls sideways)"))
    lines.append(f"dark mode: {dark['screenshot'] or 'did not load: ' + dark['error']}" + ("" if dark["dark"] else " (the page did not turn dark)"))
    errors: dict[str, int] = {}
    for page in pages:
        for error in set(page["js_errors"]):
            errors[error] = errors.get(error, 0) + 1
    lines += [f"JavaScript error on {count} of {len(pages)} pages: {error}" for error, count in errors.items()]
    if report["blocked_hosts"]:
        lines.append("not fetched (off-site; --allow-network fetches them): " + ", ".join(report["blocked_hosts"]))
    lines.append(f"contact sheet: {report['contact_sheet']}")
    return "\n".join(lines)


def main(args: Any) -> int:
    """``jobs screenshots``: look, print the summary, write report.json; 1 on a broken image (or overflow)."""
    report = look(args.html_dir, args.out, width=args.width, sample=args.sample, chromium=args.chromium,
                  allow_network=args.allow_network)
    print(summary(report))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 1 if failed(report, fail_on_overflow=args.fail_on_overflow) else 0
