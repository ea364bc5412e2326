"""Open every page of the built book in headless Chromium, as a reader would, and check it.

    python tools/site_check.py _build/html --screenshots _build/site-check

Each page is loaded from ``file://`` at 390 px (a phone) and 1,400 px (a desktop), with
every request to another host blocked and counted. A page fails on:

* horizontal overflow: the page itself scrolls sideways (a wide code block or table
  that scrolls inside its own box is fine);
* raw TeX: a formula opened by ``\\(``, ``\\[``, ``$$`` or ``\\begin{`` left in the text
  once MathJax is done;
* a broken image, or a stylesheet or script of the site that does not load;
* a broken link inside the site: a file that does not exist, or a ``#fragment`` that is
  no element's id on the target page;
* a console error or an uncaught exception;
* a request to another host (the built site must read offline).

A full-page screenshot of each page at each width goes to ``--screenshots``. Chromium
comes from the system (Debian: ``apt-get install chromium``); without one the check
says it was skipped and exits 0, so ``make test`` runs on machines without a browser.
"""

from __future__ import annotations

import argparse
import functools
import html.parser
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

WIDTHS = (390, 1400)
HEIGHT = 900
#: TeX that MathJax should have typeset; left in a page's text it means formulas failed.
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|\\begin\{")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, ``$CHROMIUM`` or the first on ``PATH``."""
    for name in (explicit, os.environ.get("CHROMIUM"), *BROWSERS):
        if name and (path := shutil.which(name)):
            return path
    return None


def pages(site: Path) -> list[Path]:
    """Every HTML page of the site, the book's own first (``_static`` holds no pages)."""
    found = [p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts]
    return sorted(found, key=lambda p: (p.relative_to(site).parts[0] == "_modules", str(p)))


class _Ids(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (key == "name" and tag == "a"):
                self.ids.add(value or "")


@functools.cache
def ids_of(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def broken_link(href: str, page: Path, site: Path) -> str | None:
    """Why ``href`` on ``page`` is a broken link inside ``site``, or None if it is fine.

    Links to other hosts are not followed (they are not part of the site); ``mailto:``
    and ``javascript:`` are ignored.
    """
    parts = urlsplit(href)
    if parts.scheme in ("http", "https", "mailto", "javascript", "data", "tel"):
        return None
    if parts.scheme not in ("", "file"):
        return f"unknown scheme in {href!r}"
    url, fragment = urldefrag(href)
    if parts.scheme == "file":
        target = Path(unquote(urlsplit(url).path))
    elif not url:
        target = page
    else:
        target = (page.parent / unquote(urlsplit(url).path)).resolve()
    if target.is_dir():
        target = target / "index.html"
    try:
        target.relative_to(site.resolve())
    except ValueError:
        return f"{href!r} leaves the site"
    if not target.exists():
        return f"{href!r}: no such file"
    fragment = unquote(fragment)
    if fragment and target.suffix == ".html" and fragment not in ids_of(target):
        return f"{href!r}: no element with id {fragment!r}"
    return None


@dataclass
class PageResult:
    page: str
    width: int
    problems: list[str] = field(default_factory=list)


_PROBE = """() => {
  const root = document.documentElement;
  const images = Array.from(document.images)
    .filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => i.getAttribute("src"));
  const links = Array.from(document.querySelectorAll("a[href]"))
    .map(a => a.getAttribute("href"));
  // The text a reader sees: MathJax's own containers are typeset, so leave them out.
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("mjx-container, script, style, .MathJax_Preview")
       .forEach(n => n.remove());
  return {
    overflow: Math.max(root.scrollWidth, document.body.scrollWidth) - window.innerWidth,
    images, links, text: clone.innerText,
  };
}"""

_MATHJAX_DONE = """async () => {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) { await mj.startup.promise; }
  if (mj && mj.typesetPromise) { await mj.typesetPromise(); }
  return true;
}"""


def check_site(
    site: Path, chromium: str, screenshots: Path | None = None, widths=WIDTHS
) -> list[PageResult]:
    """Every page at every width; the problems found on each."""
    from playwright.sync_api import sync_playwright

    site = site.resolve()
    results: list[PageResult] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for width in widths:
                context = browser.new_context(viewport={"width": width, "height": HEIGHT})
                for path in pages(site):
                    results.append(_check_page(context, site, path, width, screenshots))
                context.close()
        finally:
            browser.close()
    return results


_REFRESH = re.compile(r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', re.I)


def _check_page(context, site: Path, path: Path, width: int, screenshots) -> PageResult:
    result = PageResult(str(path.relative_to(site)), width)
    # A redirect (the site's index.html) has nothing to see: its target must exist.
    if refresh := _REFRESH.search(path.read_text(encoding="utf-8", errors="replace")[:2000]):
        if why := broken_link(refresh.group(1), path, site):
            result.problems.append(f"broken redirect: {why}")
        return result
    page = context.new_page()
    page.set_default_timeout(60_000)
    outside: list[str] = []
    failed: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith(("file:", "data:", "blob:", "about:")):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    page.route("**/*", route)

    def console(message):
        # A file or host that failed is reported below by name; the console's line for it
        # ("Failed to load resource") would only repeat it without the name.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            result.problems.append(f"console error: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda e: result.problems.append(f"uncaught exception: {e}"))
    page.on(
        "requestfailed",
        lambda r: r.url.startswith("file:") and failed.append(r.url),
    )
    try:
        page.goto(path.as_uri(), wait_until="load")
        page.evaluate(_MATHJAX_DONE)
        page.wait_for_timeout(100)  # the layout scripts run on load and on resize
        probe = page.evaluate(_PROBE)
    except Exception as err:  # noqa: BLE001 - any failure to load is a problem of the page
        result.problems.append(f"did not load: {err}")
        page.close()
        return result
    if probe["overflow"] > 1:
        result.problems.append(f"page scrolls sideways by {probe['overflow']} px")
    if tex := [m.start() for m in RAW_TEX.finditer(probe["text"])]:
        first = " ".join(probe["text"][tex[0] : tex[0] + 60].split())
        result.problems.append(f"raw TeX left on the page ({len(tex)} formulas), first: {first!r}")
    for src in probe["images"]:
        result.problems.append(f"broken image: {src}")
    for url in sorted(set(failed)):
        result.problems.append(f"resource did not load: {url}")
    for url in sorted(set(outside)):
        result.problems.append(f"request to another host: {url}")
    if width == min(WIDTHS):  # links do not depend on the width: checked once
        for href in sorted(set(probe["links"])):
            if why := broken_link(href, path, site):
                result.problems.append(f"broken link: {why}")
    if screenshots is not None:
        name = str(path.relative_to(site).with_suffix("")).replace(os.sep, "__")
        screenshots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshots / f"{name}-{width}.png"), full_page=True)
    page.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the built HTML, e.g. _build/html")
    parser.add_argument("--chromium", help="the Chromium executable (default: from PATH)")
    parser.add_argument("--screenshots", type=Path, help="folder for a screenshot per page")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print(
            "site check SKIPPED: no Chromium on this machine "
            "(Debian: apt-get update && apt-get install -y chromium)"
        )
        return 0
    if not (args.site / "index.html").exists():
        print(f"error: {args.site}/index.html does not exist: build the book first")
        return 2
    results = check_site(args.site, chromium, args.screenshots)
    bad = [r for r in results if r.problems]
    for r in bad:
        for problem in r.problems:
            print(f"FAIL {r.page} at {r.width} px: {problem}")
    n_pages = len({r.page for r in results})
    widths = " and ".join(f"{w}" for w in WIDTHS)
    print(
        f"site check: {n_pages} pages at {widths} px in {Path(chromium).name}, "
        f"{len(bad)} page views with problems"
        + (f"; screenshots in {args.screenshots}" if args.screenshots else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
