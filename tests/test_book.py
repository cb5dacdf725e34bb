"""The book end to end: every chapter executed by papermill (smoke and paper-dryrun profiles),
the site built from those outputs, and the built site opened in headless Chromium."""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import nbformat
import pytest
import yaml

from gradsim_utils import book

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("GRADSIM_CHROMIUM", "/usr/bin/chromium")


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [entry["file"] for entry in toc["chapters"]]


def _copy_book_sources(dest: Path) -> None:
    """The site's sources without executed notebooks: config, toc and book/ narrative pages."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, dest / name)
    (dest / "book").mkdir()
    for page in (ROOT / "book").iterdir():
        if page.suffix in {".md", ".bib"}:
            shutil.copy(page, dest / "book" / page.name)


@pytest.fixture(scope="session")
def smoke_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    _copy_book_sources(root)
    timings = book.run_chapters("smoke", output_dir=root / "book", progress=False)
    html = book.build_book(root, strict=True)
    return root, html, timings


def _executed_notebooks(folder: Path) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def test_every_chapter_was_executed(smoke_site):
    root, _, timings = smoke_site
    sources = book.chapter_sources()
    assert [p.stem for p in _executed_notebooks(root / "book")] == [s.stem for s in sources]
    assert set(timings) == {s.stem for s in sources}


@pytest.mark.parametrize("source", book.chapter_sources(), ids=lambda p: p.stem)
def test_chapter_has_figures_glue_and_no_errors(smoke_site, source):
    root, _, _ = smoke_site
    nb = nbformat.read(root / "book" / f"{source.stem}.ipynb", as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{source.stem} shows fewer than two figures"
    glued = [o for o in outputs if "application/papermill.record/text/plain" in o.get("data", {})
             or o.get("metadata", {}).get("scrapbook")]
    assert glued, f"{source.stem} glues no number into its text"
    params = nb.metadata["papermill"]["parameters"]
    assert params["profile"] == "smoke"


def test_every_toc_page_was_built(smoke_site):
    _, html, _ = smoke_site
    for page in _toc_files():
        assert (html / f"{page}.html").is_file(), page


def test_failing_chapter_names_chapter_and_cell(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_broken.md").write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
        "# Broken\n\n```{code-cell} ipython3\n:tags: [parameters]\nprofile = 'quick'\n```\n\n"
        "```{code-cell} ipython3\nx = 1\n```\n\n```{code-cell} ipython3\nraise KeyError('boom')\n```\n"
    )
    (notebooks / "02_never.md").write_text((notebooks / "01_broken.md").read_text())
    with pytest.raises(book.ChapterFailed) as info:
        book.run_chapters("smoke", output_dir=tmp_path / "out", notebook_dir=notebooks, progress=False)
    message = str(info.value)
    assert "01_broken.md" in message and "KeyError" in message and "raise KeyError" in message
    assert not (tmp_path / "out" / "02_never.ipynb").exists()


def test_paper_dryrun_runs_the_paper_code_path(tmp_path):
    """The paper profile's calls with random weights and a tiny random diffusion pipeline."""
    timings = book.run_chapters("paper-dryrun", output_dir=tmp_path, progress=False)
    executed = sorted(tmp_path.glob("[0-9][0-9]_*.ipynb"))
    assert len(executed) == len(book.chapter_sources()) == len(timings)
    for nb_path in executed:
        nb = nbformat.read(nb_path, as_version=4)
        assert nb.metadata["papermill"]["parameters"]["profile"] == "paper-dryrun"
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, nb_path.name


@pytest.fixture(scope="module")
def served_site(smoke_site):
    _, html, _ = smoke_site
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_site_renders_in_headless_chromium(served_site):
    assert Path(CHROMIUM).exists(), f"headless Chromium not found at {CHROMIUM} (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        for toc_page in _toc_files():
            response = page.goto(f"{served_site}/{toc_page}.html", wait_until="load")
            assert response is not None and response.ok, toc_page
            assert page.locator("h1").count() >= 1, toc_page
            assert page.locator(".output.traceback, .output.error").count() == 0, toc_page
            assert "Traceback (most recent call last)" not in page.content(), toc_page
            if toc_page == "book/intro":
                continue
            images = page.eval_on_selector_all(
                "main img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
            assert len(images) >= 2 and all(images), f"{toc_page}: figures missing or broken"
        browser.close()
