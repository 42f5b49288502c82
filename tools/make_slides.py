"""`make slides`: one reveal.js deck per lesson, for lecturing from the notebooks.

    python tools/make_slides.py                       # every notebook -> slides/
    python tools/make_slides.py --out DIR notebooks/03_rope.ipynb

Each notebook becomes ``slides/NN_topic.slides.html`` through nbconvert's reveal.js exporter,
with the outputs as committed (nothing is re-executed) and the slide metadata that
``tools/pacing.py`` wrote (``metadata.slideshow.slide_type``: the lecture path, deep dives and
exercise solutions skipped). ``slides/index.html`` lists the decks.

The decks work without a network. Nothing in them names a server: reveal.js (MIT) and MathJax
(Apache-2.0, TeX to SVG, so no font files) are the copies the course ships in ``tools/vendor/``
(unmodified, each with its licence; ``tools/vendor/README.md`` says which versions), copied with
their licences into ``slides/_assets/``, which the decks name by relative path: to lecture on
another machine, copy the whole ``slides/`` folder. Slides are 1280×720; a figure is
shrunk to fit one, and a slide longer than the screen scrolls (``tools/slides/course.css``).

``slides/`` is ignored by git: the decks are built from the committed notebooks in seconds, and
each embeds its figures (up to 2 MB), so committing them would double the repository's weight
with every re-executed notebook. ``tests/test_slides.py`` builds them and opens each in Chromium.
"""
from __future__ import annotations

import argparse
import html
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"   # reveal.js and MathJax, unmodified, with their licences
TEMPLATES = HERE / "slides"
WIDTH, HEIGHT = 1280, 720


def copy_assets(out: Path) -> None:
    """reveal.js and MathJax, each with its licence, and the course theme into out/_assets/."""
    assets = out / "_assets"
    shutil.rmtree(assets, ignore_errors=True)
    shutil.copytree(VENDOR, assets, ignore=shutil.ignore_patterns("README.md"))
    (assets / "reveal.js" / "dist" / "theme").mkdir()
    shutil.copy2(TEMPLATES / "course.css", assets / "reveal.js" / "dist" / "theme" / "course.css")


def slide_count(nb) -> int:
    """How many slides reveal.js will show (horizontal and vertical): the cells that open a slide
    or a sub-slide, as nbconvert's reveal preprocessor groups them."""
    kinds = [c.metadata.get("slideshow", {}).get("slide_type", "-") for c in nb.cells]
    return sum(k in ("slide", "subslide") for k in kinds)


def exporter():
    from nbconvert import SlidesExporter  # noqa: PLC0415
    from traitlets.config import Config  # noqa: PLC0415

    c = Config()
    c.SlidesExporter.reveal_url_prefix = "_assets/reveal.js"
    c.SlidesExporter.reveal_theme = "course"
    c.SlidesExporter.reveal_width = str(WIDTH)
    c.SlidesExporter.reveal_height = str(HEIGHT)
    c.SlidesExporter.reveal_number = "c/t"
    c.SlidesExporter.reveal_transition = "none"
    c.TemplateExporter.exclude_input_prompt = True
    c.TemplateExporter.exclude_output_prompt = True
    return SlidesExporter(config=c, template_name="course_reveal",
                          extra_template_basedirs=[str(TEMPLATES)])


def build(paths: list[Path], out: Path) -> list[tuple[str, int, float]]:
    import nbformat  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    copy_assets(out)
    ex, made = exporter(), []
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        body, _ = ex.from_notebook_node(nb, resources={"metadata": {"name": p.stem}})
        target = out / f"{p.stem}.slides.html"
        target.write_text(body, encoding="utf-8")
        made.append((target.name, slide_count(nb), target.stat().st_size / 2**20))
    rows = "\n".join(f'<li><a href="{html.escape(n)}">{html.escape(n.split(".")[0])}</a> '
                     f"({k} slides)</li>" for n, k, _ in made)
    (out / "index.html").write_text(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Lecture decks"
        f"</title></head>\n<body><h1>Lecture decks</h1>\n<ul>\n{rows}\n</ul>\n"
        "<p>Arrow keys advance; <kbd>S</kbd> opens the speaker view with the notes; "
        "<kbd>Esc</kbd> shows all slides. reveal.js is MIT-licensed "
        "(<a href=\"_assets/reveal.js/LICENSE\">licence</a>); MathJax is Apache-2.0 "
        "(<a href=\"_assets/mathjax/LICENSE\">licence</a>).</p>\n</body></html>\n",
        encoding="utf-8")
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    ap.add_argument("--out", default=str(ROOT / "slides"), help="folder of the decks (default slides/)")
    args = ap.parse_args(argv)
    paths = ([Path(p) for p in args.notebooks]
             or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    start = time.monotonic()
    made = build(paths, Path(args.out))
    for name, k, mb in made:
        hint = "  (no slide metadata yet: run `make pacing`)" if k == 0 else ""
        print(f"{name:<40} {k:3d} slides  {mb:4.1f} MB{hint}")
    print(f"{len(made)} decks in {args.out} ({time.monotonic() - start:.0f} s); "
          f"open {Path(args.out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
