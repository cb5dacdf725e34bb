"""What a chapter page offers to run and download (gradsim_utils.site_links, notebook_download): the
reader's notebook copy on a made-up executed notebook, and the launch links of a small book built with
the repository's own _config.yml, once with repository.url empty and once set."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest
import yaml

from gradsim_utils import book, notebook_download, site_links

ROOT = Path(__file__).resolve().parent.parent
URL = "https://github.com/example-org/gradsim-copy"
CHAPTER = "03_made_up"  # a made-up chapter: book/03_made_up.ipynb executed, notebooks/03_made_up.md its text

SOLUTION = "The interval is narrower because pairs are correlated."


def _glue_output(name: str, mime: str, text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data={notebook_download.GLUE_PREFIX + mime: text},
                                  metadata={"scrapbook": {"name": name, "mime_prefix": notebook_download.GLUE_PREFIX}})


def _executed_notebook() -> nbformat.NotebookNode:
    """What papermill writes for a chapter that glues two numbers and a string, cites them in the text
    (one by a cross-notebook reference) and ends with an exercise and its solution."""
    glue_cell = nbformat.v4.new_code_cell("glue('auc', 0.912345); glue('n', 12); glue('model', 'tiny')")
    glue_cell.outputs = [_glue_output("auc", "text/plain", "0.912345"), _glue_output("n", "text/plain", "12"),
                         _glue_output("model", "text/plain", "'tiny'")]
    table = nbformat.v4.new_code_cell("display(Markdown(table))")
    table.outputs = [nbformat.v4.new_output("display_data", data={
        "text/markdown": f"| model | AUC |\n| --- | --- |\n| {{glue:text}}`{CHAPTER}.ipynb::model:s` | "
                         f"{{glue:text}}`{CHAPTER}.ipynb::auc:.2f` |",
        "text/plain": "<Markdown>"})]
    text = nbformat.v4.new_markdown_cell(
        "# A made-up chapter\n\nFor {glue:text}`model` the AUC is {glue:text}`auc:.3f` over {glue:text}`n` "
        "images.\n\n```{exercise}\n:label: ex-made-up\nWhy is the interval narrower?\n```\n\n"
        f"```{{solution}} ex-made-up\n:class: dropdown\n{SOLUTION}\n```\n")
    nb = nbformat.v4.new_notebook(cells=[glue_cell, table, text])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _markdown(nb: nbformat.NotebookNode) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_download_copy_fills_glue_folds_solutions_and_installs_first(tmp_path):
    source = tmp_path / f"{CHAPTER}.ipynb"
    nbformat.write(_executed_notebook(), source)
    install = notebook_download.install_command(URL, "main")
    copy = nbformat.read(notebook_download.write_download_copy(source, tmp_path / "out" / source.name, install), 4)
    text = _markdown(copy)
    assert "For tiny the AUC is 0.912 over 12 images." in text
    table = copy.cells[3].outputs[0].data["text/markdown"]
    assert table.endswith("| tiny | 0.91 |")
    assert "{glue" not in nbformat.writes(copy)
    details = re.search(r"<details>\n<summary>[^<]*</summary>\n\n(.*?)\n\n</details>", text, re.DOTALL)
    assert details and details.group(1) == SOLUTION
    assert text.count(SOLUTION) == 1 and "{solution}" not in text and ":class:" not in text
    assert "**Exercise.** Why is the interval narrower?" in text
    assert copy.cells[1].cell_type == "code" and copy.cells[1].source == f"%{install}"
    assert install in copy.cells[0].source
    assert "{glue:text}`auc:.3f`" in source.read_text()  # the executed notebook itself is unchanged
    nbformat.validate(copy)


def test_install_command_is_one_pip_line_from_the_repository_or_empty():
    assert notebook_download.install_command(URL + "/", "dev") == f'pip install "gradsim_utils @ git+{URL}@dev"'
    assert notebook_download.install_command("", "main") == ""


def test_download_copy_without_repository_says_there_is_no_install_line():
    copy = notebook_download.download_copy(_executed_notebook(), "", lambda doc: notebook_download.glue_values(
        _executed_notebook()))
    assert "names no repository" in copy.cells[0].source and "pip install -e ." in copy.cells[0].source
    assert all(c.cell_type == "markdown" or "pip" not in c.source for c in copy.cells)


def test_unknown_glue_name_is_an_error_naming_it():
    with pytest.raises(KeyError, match="missing"):
        notebook_download.fill_glue("{glue:text}`missing:.2f`", {"auc": {"text/plain": "0.5"}})


def test_binder_url_is_well_formed():
    assert site_links.binder_url(URL, "main", "notebooks/03_x.md") == \
        "https://mybinder.org/v2/gh/example-org/gradsim-copy/main?urlpath=tree/notebooks/03_x.md"


def test_every_chapter_in_the_toc_has_the_text_notebook_its_binder_button_opens():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [e["file"] for part in toc["parts"] for e in part["chapters"] if Path(e["file"]).name[:2].isdigit()]
    assert chapters
    missing = [c for c in chapters if not (ROOT / site_links.SOURCE_DIR / f"{Path(c).name}.md").exists()]
    assert not missing


def _build_small_book(root: Path, repository_url: str) -> Path:
    """The repository's _config.yml (repository.url replaced) over one made-up executed chapter."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["repository"]["url"] = repository_url
    (root / "_config.yml").write_text(yaml.safe_dump(config))
    (root / "_toc.yml").write_text(f"format: jb-book\nroot: book/{CHAPTER}\n")
    (root / "book").mkdir()
    shutil.copy(ROOT / "book" / "references.bib", root / "book" / "references.bib")
    shutil.copytree(ROOT / "book" / "_static", root / "book" / "_static")  # the config's html_static_path
    nbformat.write(_executed_notebook(), root / "book" / f"{CHAPTER}.ipynb")
    (root / site_links.SOURCE_DIR).mkdir()
    (root / site_links.SOURCE_DIR / f"{CHAPTER}.md").write_text("# A made-up chapter\n")
    return book.build_book(root, strict=True)


def _links(page: Path) -> list[str]:
    return re.findall(r'href="([^"]+)"', page.read_text())


@pytest.mark.parametrize("repository_url", ["", URL])
def test_built_page_links_follow_the_configured_repository(tmp_path, repository_url):
    html = _build_small_book(tmp_path, repository_url)
    page = html / "book" / f"{CHAPTER}.html"
    links = _links(page)
    download = [link for link in links if link.endswith(f"{site_links.DOWNLOAD_DIR}/{CHAPTER}.ipynb")]
    assert len(download) == 1
    copy = (page.parent / download[0]).resolve()
    assert copy.exists() and "{glue" not in copy.read_text() and "0.912" in copy.read_text()
    binder = [link for link in links if "mybinder" in link]
    assert not [link for link in links if "colab" in link]
    if not repository_url:
        assert binder == [] and not [link for link in links if "github.com" in link]
        assert "names no repository" in copy.read_text()
        return
    assert len(binder) == 1 and "/./" not in binder[0]
    parts = urlsplit(binder[0])
    assert parts.path == "/v2/gh/" + urlsplit(repository_url).path.strip("/") + "/main"
    target = parts.query.removeprefix("urlpath=tree/")
    assert (tmp_path / target).is_file() and target == f"{site_links.SOURCE_DIR}/{CHAPTER}.md"
    assert repository_url in links  # the repository button
    assert f"git+{repository_url}@main" in copy.read_text()


def test_binder_environment_opens_text_notebooks_as_notebooks():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert any(req.startswith("jupytext") for req in pip)
    post_build = ROOT / "postBuild"
    assert post_build.stat().st_mode & 0o111
    assert re.search(r"^jupytext-config set-default-viewer .*\bmarkdown\b", post_build.read_text(), re.MULTILINE)
