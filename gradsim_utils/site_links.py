"""Sphinx extension (listed in ``_config.yml``) for what a chapter page offers to run and download.

One setting decides: ``repository.url`` in ``_config.yml`` (with ``repository.branch``). When it is
set, each chapter page gets the repository button and a Binder button that opens the chapter's text
notebook ``notebooks/<chapter>.md`` of that repository (Binder's environment has jupytext, which opens
it as a notebook); a page whose text notebook is not in the built folder gets no Binder button. When
the url is empty, neither button is built. Either way the page's ``.ipynb``
download is the reader's copy of ``notebook_download``: glued numbers filled in, solutions folded,
and a first cell with the ``pip install`` line for the repository (or a note that there is none).
"""
from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import quote

from sphinx.application import Sphinx
from sphinx.util import logging

from . import notebook_download

__all__ = ["BINDERHUB_URL", "DOWNLOAD_DIR", "repository", "binder_url", "setup"]

BINDERHUB_URL = "https://mybinder.org"
DOWNLOAD_DIR = "_notebooks"  # under the html output: the reader's copies, one per chapter
SOURCE_DIR = "notebooks"     # the chapters' text notebooks, relative to the book's folder

_LOG = logging.getLogger(__name__)


def repository(app: Sphinx) -> tuple[str, str, str]:
    """(url, branch, path of the book in the repository) from ``_config.yml``'s ``repository``
    section; url is empty when unset."""
    opts = app.config.html_theme_options
    return (opts.get("repository_url") or "").rstrip("/"), opts.get("repository_branch") or "main", \
        opts.get("path_to_docs") or ""


def binder_url(repository_url: str, branch: str, path_in_repo: str, hub: str = BINDERHUB_URL) -> str:
    """mybinder.org link that builds ``repository_url`` at ``branch`` and opens ``path_in_repo``."""
    if repository_url.startswith("https://github.com/"):
        spec = "gh/" + repository_url[len("https://github.com/"):].removesuffix(".git")
    else:
        spec = "git/" + quote(repository_url, safe="")
    return f"{hub}/v2/{spec}/{branch}?urlpath=tree/{quote(path_in_repo)}"


def _buttons_follow_repository(app: Sphinx, config) -> None:
    config.html_theme_options["use_repository_button"] = bool(repository(app)[0])


def _page_links(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    source = Path(app.env.doc2path(pagename))
    if source.suffix != ".ipynb" or "header_buttons" not in context:
        return
    url, branch, book_path = repository(app)
    try:
        notebook_download.write_download_copy(source, Path(app.outdir, DOWNLOAD_DIR, source.name),
                                              notebook_download.install_command(url, branch))
    except (KeyError, OSError) as exc:  # a glue name or notebook that myst-nb also warns about
        _LOG.warning(f"{pagename}: no reader's copy of the notebook ({exc}); the download is the executed file")
    else:
        for group in context["header_buttons"]:
            for button in group.get("buttons", []):
                if button.get("label") == "download-source-button":
                    button["url"] = context["pathto"](f"{DOWNLOAD_DIR}/{source.name}", 1)
                    button["tooltip"] = "Download the executed notebook (numbers filled in, solutions folded)"
    if not url:
        return
    text_notebook = Path(app.srcdir, SOURCE_DIR, source.stem + ".md")
    if not text_notebook.exists():  # a page built outside the repository (tests/test_book's smoke site)
        return
    path_in_repo = posixpath.normpath(posixpath.join(book_path or ".", SOURCE_DIR, text_notebook.name))
    context["header_buttons"].append({
        "type": "group", "tooltip": "Launch interactive content", "icon": "fas fa-rocket",
        "label": "launch-buttons",
        "buttons": [{"type": "link", "text": "Binder", "tooltip": "Launch on Binder",
                     "icon": "_static/images/logo_binder.svg", "url": binder_url(url, branch, path_in_repo)}],
    })


def setup(app: Sphinx) -> dict:
    """Connect the two hooks; the page hook runs after sphinx-book-theme's header buttons (501)."""
    app.connect("config-inited", _buttons_follow_repository)
    app.connect("html-page-context", _page_links, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
