"""The site check (tools/site_check.py) finds each fault it promises to find.

A small site is written with one fault per page (a page wider than a phone, raw TeX, a
broken image, a link to a missing file and to a missing anchor, a console error, a
request to another host) next to a clean page; the check must name every fault on its
own page and nothing on the clean one. The link checks need no browser; the page checks
run in the system's Chromium and are skipped, saying so, where there is none.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import site_check  # noqa: E402

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head><body><h1 id="top">{title}</h1>{body}</body></html>"""

PNG = bytes.fromhex(  # a 1 x 1 PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)

FAULTS = {
    "index.html": ('<p>The first page: <a href="clean.html">on</a>.</p>', []),
    "clean.html": (
        '<p>A formula that is not TeX any more, a <a href="other/page.html#part">link</a>, '
        'an <img src="dot.png" alt="dot">, <a href="https://example.org/">a link out</a> '
        "(not followed) and a wide block that scrolls inside its own box:</p>"
        '<pre style="overflow-x: auto">' + "x" * 400 + "</pre>",
        [],
    ),
    "wide.html": ('<div style="width: 1600px">too wide for any screen</div>', ["scrolls sideways"]),
    "tex.html": (r"<p>The bound \(b = \sqrt{6/(2H)}\) is left as text.</p>", ["raw TeX"]),
    "image.html": (
        '<img src="missing.png" alt="missing">',
        ["broken image: missing.png", "resource did not load: file://"],
    ),
    "file.html": ('<a href="nowhere.html">a page that does not exist</a>', ["no such file"]),
    "anchor.html": ('<a href="clean.html#nope">a section that does not exist</a>', ["no element"]),
    "console.html": ("<script>console.error('boom')</script>", ["console error"]),
    "outside.html": (
        '<script src="https://cdn.example.org/lib.js"></script>',
        ["request to another host"],
    ),
    "redirect.html": (
        '<meta http-equiv="Refresh" content="0; url=missing/page.html">',
        ["broken redirect"],
    ),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    for name, (body, _) in FAULTS.items():
        if name == "redirect.html":
            (root / name).write_text(body)
        else:
            (root / name).write_text(PAGE.format(title=name, body=body))
    (root / "dot.png").write_bytes(PNG)
    (root / "other").mkdir()
    (root / "other" / "page.html").write_text(
        PAGE.format(title="other", body='<h2 id="part">Part</h2><a href="../clean.html">back</a>')
    )
    (root / "_static").mkdir()
    (root / "_static" / "not-a-page.html").write_text("<p>assets are not pages</p>")
    return root


def test_pages_are_every_html_file_but_the_static_assets(site):
    names = [p.relative_to(site).as_posix() for p in site_check.pages(site)]
    assert sorted(names) == sorted([*FAULTS, "other/page.html"])


@pytest.mark.parametrize(
    ("href", "problem"),
    [
        ("other/page.html#part", None),
        ("other/page.html", None),
        ("other/", "no such file"),  # a folder means its index.html, which is missing
        ("#top", None),
        ("#bottom", "no element with id 'bottom'"),
        ("nowhere.html", "no such file"),
        ("clean.html#nope", "no element with id 'nope'"),
        ("../outside.html", "leaves the site"),
        ("https://example.org/x", None),
        ("mailto:someone@example.org", None),
        ("ftp://example.org/x", "unknown scheme"),
    ],
)
def test_links_inside_the_site_must_reach_a_file_and_an_anchor(site, href, problem):
    why = site_check.broken_link(href, site / "clean.html", site)
    if problem is None:
        assert why is None
    else:
        assert why is not None and problem in why


def test_raw_tex_is_each_delimiter_but_not_dollar_amounts():
    for text in (r"\(x\)", r"\[x\]", "$$x$$", r"\begin{align}"):
        assert site_check.RAW_TEX.search(text), text
    assert not site_check.RAW_TEX.search("costs $5 and (x) [y]")


@pytest.fixture(scope="module")
def checked(site):
    chromium = site_check.find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine: the browser checks were not run")
    results = site_check.check_site(site, chromium, screenshots=site / "_shots")
    return {(r.page, r.width): r.problems for r in results}


@pytest.mark.parametrize("width", site_check.WIDTHS)
@pytest.mark.parametrize("name", [*sorted(FAULTS), "other/page.html"])
def test_each_planted_fault_is_found_on_its_page_and_no_other(checked, name, width):
    problems = checked[name, width]
    expected = FAULTS.get(name, ("", []))[1]
    if name in ("file.html", "anchor.html") and width != min(site_check.WIDTHS):
        expected = []  # links do not depend on the width: checked once, at the narrow one
    assert len(problems) == len(expected), problems
    for fault in expected:
        assert any(fault in p for p in problems), (name, width, problems)


def test_a_screenshot_of_every_page_at_both_widths(checked, site):
    shots = sorted(p.name for p in (site / "_shots").iterdir())
    pages = [n for n in [*FAULTS, "other/page.html"] if n != "redirect.html"]
    expected = sorted(
        f"{n.removesuffix('.html').replace('/', '__')}-{w}.png"
        for n in pages
        for w in site_check.WIDTHS
    )
    assert shots == expected
    assert all((site / "_shots" / s).read_bytes()[:8] == PNG[:8] for s in shots)


def test_the_command_fails_on_a_faulty_site_and_passes_a_clean_one(site, tmp_path, capsys):
    if site_check.find_chromium() is None:
        pytest.skip("no Chromium on this machine: the browser checks were not run")
    assert site_check.main([str(site)]) == 1
    out = capsys.readouterr().out
    assert "FAIL wide.html at 390 px: page scrolls sideways" in out
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "index.html").write_text(PAGE.format(title="index", body="<p>fine</p>"))
    assert site_check.main([str(clean)]) == 0
    assert "0 page views with problems" in capsys.readouterr().out


def test_without_a_browser_the_check_says_it_was_skipped(site, monkeypatch, capsys):
    monkeypatch.setattr(site_check, "find_chromium", lambda explicit=None: None)
    assert site_check.main([str(site)]) == 0
    assert "site check SKIPPED: no Chromium" in capsys.readouterr().out
