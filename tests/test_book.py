"""The book end to end: every chapter executed by papermill (smoke and paper-dryrun profiles),
the site built from those outputs, and the built site opened in headless Chromium."""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
import yaml
from PIL import Image

from gradsim_utils import book, plotting

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("GRADSIM_CHROMIUM", "/usr/bin/chromium")


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [entry for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]) for entry in part["chapters"]]
    return [toc["root"]] + [entry["file"] for entry in chapters]


def _copy_book_sources(dest: Path) -> None:
    """The site's sources without executed notebooks: config, toc and book/ narrative pages."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, dest / name)
    (dest / "book").mkdir()
    for page in (ROOT / "book").iterdir():
        if page.suffix in {".md", ".bib"}:
            shutil.copy(page, dest / "book" / page.name)
    shutil.copytree(ROOT / "book" / "_static", dest / "book" / "_static")


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
    assert len(images) >= _min_figures(f"book/{source.stem}"), f"{source.stem} shows too few figures"
    glued = [o for o in outputs if "application/papermill.record/text/plain" in o.get("data", {})
             or o.get("metadata", {}).get("scrapbook")]
    assert glued, f"{source.stem} glues no number into its text"
    params = nb.metadata["papermill"]["parameters"]
    assert params["profile"] == "smoke"


def test_every_chapter_is_in_the_table_of_contents():
    assert {f"book/{s.stem}" for s in book.chapter_sources()} <= set(_toc_files())


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


def _write_chapter(path: Path, body: str, front: str = "", parameters: str = "value = 1") -> None:
    path.write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n" + front + "---\n\n"
        f"# T\n\n```{{code-cell}} ipython3\n:tags: [parameters]\nprofile = 'quick'\n{parameters}\n```\n\n"
        f"```{{code-cell}} ipython3\n{body}\n```\n"
    )


def _kernel_killing_chapters(notebooks: Path, signal_name: str) -> None:
    """01_crash.md kills its own kernel with ``signal_name`` in cell 3 (after the title, the parameters
    cell and papermill's injected one); 02_never.md must not run after it."""
    notebooks.mkdir()
    _write_chapter(notebooks / "01_crash.md", f"import os, signal  # die\nos.kill(os.getpid(), signal.{signal_name})",
                   parameters="batch_size = 32")
    _write_chapter(notebooks / "02_never.md", "print('never')")


def test_segfaulting_kernel_is_a_short_report_without_traceback(tmp_path):
    """``python -m gradsim_utils.book`` (what ``make book`` runs) on a chapter whose kernel segfaults."""
    _kernel_killing_chapters(tmp_path / "notebooks", "SIGSEGV")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "gradsim_utils.book", "--profile", "smoke", "--notebook-dir", str(tmp_path / "notebooks"),
         "--output-dir", str(out), "--no-build"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    report = proc.stderr[proc.stderr.index("ERROR: "):]
    assert "chapter 01_crash.md died in cell 3 (starting 'import os, signal  # die')" in report
    assert "killed by SIGSEGV" in report
    assert "oneDNN channels_last" in report and "DESIGN.md section 5b" in report
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in report and "report the CPU" in report
    assert f"The partly executed notebook is {out / '01_crash.ipynb'}" in report
    assert (out / "01_crash.ipynb").is_file() and not (out / "02_never.ipynb").exists()
    assert len(report.strip().splitlines()) == 3, report


@pytest.mark.parametrize("kill", ["SIGKILL", "exit 137"])
def test_killed_kernel_suggests_a_smaller_batch_size(tmp_path, capsys, kill):
    """SIGKILL (the out-of-memory killer) or exit code 137 points at the chapter's batch size."""
    notebooks = tmp_path / "notebooks"
    _kernel_killing_chapters(notebooks, "SIGKILL")
    if kill == "exit 137":
        _write_chapter(notebooks / "01_crash.md", "import os, signal  # die\nos._exit(137)", parameters="batch_size = 32")
    code = book.main(["--profile", "smoke", "--notebook-dir", str(notebooks), "--output-dir", str(tmp_path / "out"),
                      "--no-build", "-p", "batch_size", "24"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "chapter 01_crash.md died in cell 3 (starting 'import os, signal  # die')" in err
    assert ("killed by SIGKILL" if kill == "SIGKILL" else "exited with code 137 (128 + SIGKILL)") in err
    assert "most likely out of memory" in err
    assert "lower the chapter's batch size (now 24)" in err
    assert "python -m gradsim_utils.book --only 01_crash -p batch_size 12" in err
    assert "oneDNN" not in err


def test_up_to_date_chapters_are_skipped_and_changes_rerun_them(tmp_path):
    notebooks, out = tmp_path / "notebooks", tmp_path / "out"
    notebooks.mkdir()
    _write_chapter(notebooks / "01_a.md", "print(value)")
    _write_chapter(notebooks / "02_summary.md", "print('summary')", front="gradsim:\n  always_execute: true\n")
    run = lambda **kw: book.run_chapters("smoke", output_dir=out, notebook_dir=notebooks, progress=False, **kw)
    run()
    stamp = lambda name: (out / f"{name}.ipynb").stat().st_mtime_ns
    first_a, first_summary = stamp("01_a"), stamp("02_summary")
    run()
    assert stamp("01_a") == first_a, "an unchanged chapter was executed again"
    assert stamp("02_summary") != first_summary, "an always_execute page was skipped"
    assert json.loads((out / "_timings.json").read_text())["up_to_date"] == ["01_a"]
    run(parameters={"value": 2})
    assert stamp("01_a") != first_a, "a parameter change did not rerun the chapter"
    second_a = stamp("01_a")
    _write_chapter(notebooks / "01_a.md", "print(value + 1)")
    run(parameters={"value": 2})
    assert stamp("01_a") != second_a, "a source change did not rerun the chapter"
    third_a = stamp("01_a")
    run(parameters={"value": 2}, force=True)
    assert stamp("01_a") != third_a


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


SCREENSHOT_DIR = ROOT / "_build" / "screenshots"
#: The widths the book must read well at: a laptop window and a phone.
VIEWPORTS = (1280, 400)
#: Least padding of a table cell, each side (the browser's default 1 px lets numbers run together).
MIN_CELL_PADDING_PX = 4
#: Endings of file names that linkify could mistake for a host (``http://METHODS.md``): a dead link.
FILE_SUFFIXES = {"md", "py", "ipynb", "txt", "csv", "json", "yml", "yaml", "toml", "cfg", "pt", "pth", "png", "sh"}
#: MyST source that must not reach the reader: escaped underscores, unresolved glue, roles, directives.
RAW_MARKUP = re.compile(r"\\_|\{glue|\{doc\}|\{[a-z][a-z:-]*\}`|^```\{", re.M)


def _min_figures(page: str) -> int:
    """Chapters show at least two figures; the intro and references none; appendix pages one."""
    stem = page.split("/")[-1]
    if not stem[:2].isdigit():
        return 0
    return 1 if _is_appendix(stem) else 2


def _is_appendix(stem: str) -> bool:
    import jupytext
    return jupytext.read(ROOT / "notebooks" / f"{stem}.md").metadata.get("gradsim", {}).get("always_execute", False)


#: Per page: every table cell's padding, the page's and each table box's widths, the first column's
#: position before and after the box is scrolled to its end, each output figure's sizes, and the links.
_LAYOUT_JS = """() => {
  const box = t => { let e = t.parentElement;
    while (e && !['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) e = e.parentElement; return e; };
  const tables = [...document.querySelectorAll('main article table')].map(t => {
    const b = box(t), first = t.querySelector('tbody tr > :first-child'), last = t.querySelector('tbody tr > :last-child');
    const row = {wide: t.scrollWidth > (b ? b.clientWidth : t.clientWidth) + 1, boxed: !!b, text: t.innerText.slice(0, 40)};
    if (row.wide && b && first && last) {
      b.scrollLeft = b.scrollWidth;
      const br = b.getBoundingClientRect(), fr = first.getBoundingClientRect(), lr = last.getBoundingClientRect();
      row.firstVisible = fr.left >= br.left - 1 && fr.left <= br.left + 1;
      row.lastReachable = lr.right <= br.right + 1 && br.right <= window.innerWidth + 1;
      b.scrollLeft = 0;
    }
    return row; });
  const cells = [...document.querySelectorAll('main article table th, main article table td')];
  const pad = c => Math.min(parseFloat(getComputedStyle(c).paddingLeft), parseFloat(getComputedStyle(c).paddingRight));
  return {
    pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth, tables,
    padding: cells.length ? Math.min(...cells.map(pad)) : null,
    figures: [...document.querySelectorAll('main article .cell_output img')].map(i =>
      ({src: i.src, natural: i.naturalWidth, shown: i.getBoundingClientRect().width})),
    links: [...document.querySelectorAll('main article a[href]')].map(a => a.href),
    mathBackslashes: document.querySelectorAll('main mjx-container mjx-c.mjx-c5C').length,
  };
}"""


def _figure_text_px(html: Path, figure: dict) -> float:
    """The smallest text of an output figure as shown: the size recorded in the PNG at save time
    (``plotting.TEXT_PX_KEY``, px of the image) scaled by the displayed over the natural width."""
    path = html / unquote(urlsplit(figure["src"]).path).lstrip("/")
    recorded = Image.open(path).info.get(plotting.TEXT_PX_KEY)
    if recorded is None:
        return 0.0
    return float(recorded) * figure["shown"] / figure["natural"]


def _dead_link(href: str) -> bool:
    """An http(s) link whose host is a file name (linkify's ``http://METHODS.md``) or has no domain."""
    parts = urlsplit(href)
    if parts.scheme not in {"http", "https"} or parts.hostname in {"127.0.0.1", "localhost"}:
        return False
    labels = (parts.hostname or "").split(".")
    return len(labels) < 2 or labels[-1].lower() in FILE_SUFFIXES


def reading_problems(page, html: Path, toc_page: str) -> list[str]:
    """What keeps the loaded page from reading well at its viewport's width (empty when nothing)."""
    width = page.viewport_size["width"]
    found = page.evaluate(_LAYOUT_JS)
    problems = []
    if found["pageWidth"] > width + 1:
        problems.append(f"the page scrolls sideways ({found['pageWidth']} px wide)")
    if found["padding"] is not None and found["padding"] < MIN_CELL_PADDING_PX:
        problems.append(f"table cells padded by only {found['padding']} px")
    for table in found["tables"]:
        if table["wide"] and not (table["boxed"] and table.get("firstVisible") and table.get("lastReachable")):
            problems.append(f"wide table {table['text']!r}: not scrollable in its box with its first column kept")
    for figure in found["figures"]:
        shown = _figure_text_px(html, figure)
        if shown < plotting.MIN_TEXT_PX:
            problems.append(f"figure {figure['src'].rsplit('/', 1)[-1]}: text {shown:.1f} px")
    raw = RAW_MARKUP.findall(page.inner_text("main article"))
    if raw or found["mathBackslashes"]:
        problems.append(f"raw markup shown: {raw[:3]}, {found['mathBackslashes']} backslashes in math")
    problems += [f"dead link {href}" for href in found["links"] if _dead_link(href)]
    return [f"{toc_page} at {width} px: {p}" for p in problems]


def test_site_renders_offline_in_headless_chromium(smoke_site, served_site):
    """Every TOC page loads with the network cut off: figures decode, math is typeset by the site's
    own MathJax, no cell shows an error, and nothing outside the local server is requested. At 1,280
    and 400 px every page reads well (:func:`reading_problems`); a screenshot of each is saved."""
    assert Path(CHROMIUM).exists(), f"headless Chromium not found at {CHROMIUM} (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    external: list[str] = []
    problems: list[str] = []

    def only_local(route):
        if route.request.url.startswith(served_site):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        for width in VIEWPORTS:
            context = browser.new_context(viewport={"width": width, "height": 900})
            context.route("**/*", only_local)
            page = context.new_page()
            for toc_page in _toc_files():
                response = page.goto(f"{served_site}/{toc_page}.html", wait_until="networkidle")
                assert response is not None and response.ok, toc_page
                assert page.locator("h1").count() >= 1, toc_page
                assert page.locator(".output.traceback, .output.error, .cell_output .error").count() == 0, toc_page
                assert "Traceback (most recent call last)" not in page.content(), toc_page
                assert "{glue" not in page.inner_text("main"), f"{toc_page}: an unresolved glue role"
                images = page.eval_on_selector_all(
                    "main img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
                assert len(images) >= _min_figures(toc_page) and all(images), f"{toc_page}: figures missing or broken"
                if page.locator("main .math").count():
                    page.wait_for_selector("main mjx-container", timeout=20_000)
                    assert page.locator("main mjx-container").count() >= 1, f"{toc_page}: math not typeset"
                    assert page.locator("main mjx-merror").count() == 0, f"{toc_page}: MathJax reported an error"
                problems += reading_problems(page, smoke_site[1], toc_page)
                page.screenshot(path=str(SCREENSHOT_DIR / f"{toc_page.split('/')[-1]}-{width}.png"), full_page=False)
            context.close()
        browser.close()
    assert not external, f"the site requested resources outside itself: {sorted(set(external))[:5]}"
    assert not problems, "\n".join(problems)


def _claiming_chapter(path: Path, extra_parameters: str = "") -> None:
    """A chapter that records one claim (its seed) as a real chapter does."""
    _write_chapter(path, "from gradsim_utils import report\n"
                         f"report.record_claim('c_{path.stem[:2]}', chapter='{path.stem}', source='000', claim='c', "
                         "source_value='1', ours=seed, verdict='reproduced')",
                   parameters="seed = 0" + extra_parameters)


def test_only_takes_chapter_numbers_and_names_the_chapters_when_nothing_matches(tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("01_a", "03_b", "10_c", "30_d"):
        _write_chapter(notebooks / f"{name}.md", "print(1)")
    stems = lambda only: [s.stem for s in book.chapter_sources(notebooks, only)]
    assert stems(["3"]) == stems(["03"]) == ["03_b"]
    assert stems(["1", "30"]) == ["01_a", "30_d"] and stems(["03_"]) == ["03_b"]
    code = book.main(["--only", "3", "42", "--notebook-dir", str(notebooks), "--output-dir", str(tmp_path / "out"),
                      "--no-build"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "--only 42 matches no chapter" in err and "the chapters are: 01_a, 03_b, 10_c, 30_d" in err
    assert not (tmp_path / "out").exists()


def test_only_rerun_merges_timings_and_a_full_run_reruns_only_what_changed(tmp_path):
    from gradsim_utils import report

    notebooks, out = tmp_path / "notebooks", tmp_path / "out"
    notebooks.mkdir()
    _claiming_chapter(notebooks / "01_a.md")
    _claiming_chapter(notebooks / "02_b.md")
    run = lambda **kw: book.run_chapters("smoke", output_dir=out, notebook_dir=notebooks, progress=False, **kw)
    record = lambda: json.loads((out / "_timings.json").read_text())
    stamp = lambda name: (out / f"{name}.ipynb").stat().st_mtime_ns
    run()
    first_a, first_b = stamp("01_a"), stamp("02_b")
    run(only=["2"], parameters={"seed": 3})
    chapters = record()["chapters"]
    assert sorted(chapters) == ["01_a", "02_b"], "an --only run dropped the other chapters' timings"
    assert chapters["01_a"]["parameters"] == {"profile": "smoke", "seed": 0}
    assert chapters["02_b"]["parameters"] == {"profile": "smoke", "seed": 3}
    assert stamp("01_a") == first_a and stamp("02_b") != first_b
    claims = report.load_claims(out / "_results")
    assert {c["chapter"]: c["parameters"]["seed"] for c in claims} == {"01_a": 0, "02_b": 3}
    with pytest.raises(ValueError, match=r"different runs(.|\n)*seed: 0 in 01_a; 3 in 02_b"):
        report.one_run(claims)
    second_b = stamp("02_b")
    run()
    assert stamp("01_a") == first_a, "the full run re-executed an unchanged chapter"
    assert stamp("02_b") != second_b, "the full run kept the chapter run with other parameters"
    assert record()["up_to_date"] == ["01_a"]
    assert {name: e["parameters"]["seed"] for name, e in record()["chapters"].items()} == {"01_a": 0, "02_b": 0}
    assert report.one_run(report.load_claims(out / "_results")) == {"profile": "smoke", "seed": 0}


def test_unknown_parameter_is_an_error_listing_the_chapters_parameters(tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _write_chapter(notebooks / "01_a.md", "print(value)", parameters="value = 1\nseed = 0  # a comment")
    _write_chapter(notebooks / "02_b.md", "print('b')", parameters="batch_size = 8")
    code = book.main(["--only", "1", "2", "-p", "n_analysis_per_class", "3", "--notebook-dir", str(notebooks),
                      "--output-dir", str(tmp_path / "out"), "--no-build"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert ("unknown parameter 'n_analysis_per_class': no selected chapter (01_a, 02_b) has it; "
            "their parameters are: batch_size, profile, seed, value") in err
    assert not list((tmp_path / "out").glob("*.ipynb")), "a chapter ran before the parameters were checked"


def test_a_parameter_only_some_chapters_have_is_passed_to_those_alone(tmp_path, capsys):
    notebooks, out = tmp_path / "notebooks", tmp_path / "out"
    notebooks.mkdir()
    _write_chapter(notebooks / "01_a.md", "print(value)")
    _write_chapter(notebooks / "02_b.md", "print('b')", parameters="batch_size = 8")
    book.run_chapters("smoke", {"value": 5}, output_dir=out, notebook_dir=notebooks, progress=False)
    injected = lambda name: nbformat.read(out / f"{name}.ipynb", as_version=4).metadata["papermill"]["parameters"]
    assert injected("01_a") == {"profile": "smoke", "value": 5} and injected("02_b") == {"profile": "smoke"}
    lines = [line for line in capsys.readouterr().out.splitlines() if "'value'" in line]
    assert lines == ["parameter 'value' is passed only to the chapters that have it; ignored by: 02_b"]


def test_papermill_run_from_the_repository_root_writes_nothing_there(tmp_path):
    """The README's jupytext + papermill route: claims go to $GRADSIM_CACHE/results, not ./_results."""
    _claiming_chapter(tmp_path / "02_b.md")
    notebook = tmp_path / "02_b.ipynb"
    subprocess.run([str(Path(sys.executable).with_name("jupytext")), "--to", "ipynb", "-o", str(notebook),
                    str(tmp_path / "02_b.md")], check=True, capture_output=True)
    before = set(os.listdir(ROOT))
    env = {k: v for k, v in os.environ.items() if k not in ("GRADSIM_RESULTS", "GRADSIM_RUN_PARAMETERS")}
    env["GRADSIM_CACHE"] = str(tmp_path / "cache")
    subprocess.run([sys.executable, "-m", "papermill", str(notebook), str(tmp_path / "out.ipynb"), "-k", "python3",
                    "-p", "seed", "2"], check=True, capture_output=True, cwd=ROOT, env=env, timeout=300)
    assert set(os.listdir(ROOT)) == before
    saved = json.loads((tmp_path / "cache" / "results" / "02_b.json").read_text())
    assert [r["ours"] for r in saved.values()] == [2]
