"""`make slides`: a deck per lesson that opens and advances without a network, shows as many
slides as the notebook's slide metadata says, and whose figures fit the 1280×720 slide.

The decks are built once (into a temporary folder, through the Makefile target) and opened in
Chromium from the file system, as a teacher opens them; screenshots of each title slide land in
build/screenshots/slides/."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_slides import HEIGHT, WIDTH, slide_count  # noqa: E402
from test_browser import SHOTS, browser  # noqa: E402,F401 - the fixture, shared

LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# What a deck may load: its own folder, and what it builds in memory.
LOCAL = ("file://", "data:", "blob:", "about:blank")


@pytest.fixture(scope="module")
def decks(tmp_path_factory):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    out = tmp_path_factory.mktemp("slides")
    r = subprocess.run(["make", "--no-print-directory", "slides", f"SLIDES={out}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_a_deck_for_every_lesson(decks):
    assert len(LESSONS) >= 11
    missing = [p.stem for p in LESSONS if not (decks / f"{p.stem}.slides.html").exists()]
    assert not missing, missing
    assert (decks / "_assets" / "reveal.js" / "LICENSE").read_text().startswith("Copyright")
    assert "MIT" in (decks / "_assets" / "reveal.js" / "dist" / "reveal.js").read_text()[:200]
    assert "Apache License" in (decks / "_assets" / "mathjax" / "LICENSE").read_text()


def test_no_deck_loads_anything_from_a_server(decks):
    """Links to papers are fine; a script, style sheet, image or font from a URL is not."""
    loads = re.compile(r"""<(?:script|link|img|iframe|source)\b[^>]*?\b(?:src|href)\s*=\s*["']"""
                       r"""\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import\s+["']?"""
                       r"""(?:url\()?\s*["']?(?:https?:)?//""", re.I)
    for p in LESSONS:
        html = (decks / f"{p.stem}.slides.html").read_text(encoding="utf-8")
        found = [m.group(0) for m in loads.finditer(html)]
        assert not found, f"{p.stem}: {found[:3]}"


def test_decks_open_advance_and_fit_in_chromium(decks, browser):  # noqa: F811 - the fixture
    shots = SHOTS / "slides"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    problems = []
    for p in LESSONS:
        expected = slide_count(nbformat.read(p, as_version=4))
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        errors, remote = [], []
        page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc, e=errors: e.append(str(exc)))
        page.on("requestfailed", lambda r, e=errors: e.append(f"failed to load {r.url[:100]}"))
        page.on("request", lambda r, x=remote: None if r.url.startswith(LOCAL) else x.append(r.url))
        # Nothing leaves the machine, even by mistake: every other request is refused (and noted).
        page.route(lambda url: not url.startswith(LOCAL), lambda route: route.abort())
        page.goto((decks / f"{p.stem}.slides.html").as_uri(), wait_until="load")
        page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=30_000)
        page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                               timeout=30_000)
        page.evaluate("() => MathJax.startup.promise.then(() => true)")   # formulas typeset
        page.screenshot(path=shots / f"{p.stem}.png")
        walk = page.evaluate("""() => {
            const out = {total: Reveal.getTotalSlides(), too_big: [], moved: false};
            Reveal.slide(0, 0);
            Reveal.next();
            const i = Reveal.getIndices();
            out.moved = i.h + i.v > 0;
            for (const s of Reveal.getSlides()) {          // every slide, horizontal and vertical
                const k = Reveal.getIndices(s);
                Reveal.slide(k.h, k.v);
                const scale = Reveal.getScale();
                for (const img of s.querySelectorAll('img')) {
                    const r = img.getBoundingClientRect();
                    const w = r.width / scale, h = r.height / scale;
                    if (w > %d + 1 || h > %d + 1) out.too_big.push(`slide ${k.h}/${k.v}: ${w|0}×${h|0}`);
                }
            }
            return out;
        }""" % (WIDTH, HEIGHT))
        page.close()
        if expected == 0:
            problems.append(f"{p.stem}: no slide metadata (run `make pacing`)")
        elif walk["total"] != expected:
            problems.append(f"{p.stem}: {walk['total']} slides, the metadata says {expected}")
        if not walk["moved"]:
            problems.append(f"{p.stem}: the deck does not advance")
        problems += [f"{p.stem}: figure larger than {WIDTH}×{HEIGHT} on {t}" for t in walk["too_big"]]
        problems += [f"{p.stem}: {e}" for e in errors]
        problems += [f"{p.stem}: asked for {u[:100]}" for u in remote]
    assert not problems, "\n".join(problems)
