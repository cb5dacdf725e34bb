"""The notebook a reader downloads from the book: the executed chapter with every glued number written
into the text, each ``{solution}`` folded into a collapsed ``<details>`` block, MyST ``{exercise}``
fences turned into plain Markdown, and a first cell that installs ``gradsim_utils`` (so the file runs
on Colab or any fresh Jupyter)."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Callable, Mapping

import nbformat
from myst_nb.core.variables import format_plain_text

__all__ = ["GLUE_PREFIX", "glue_values", "fill_glue", "fold_directives", "install_command", "download_copy",
           "write_download_copy"]

GLUE_PREFIX = "application/papermill.record/"  # how myst_nb.glue stores a value in a display output

# {glue}`key`, {glue:}`key`, {glue:text}`key:fmt`, {glue:md}`key`, {glue:any}`key`; key may be doc::key
_ROLE = re.compile(r"\{glue(?::(text|md|any)?)?\}`([^`]+)`")
# a fenced {exercise} or {solution} directive (backticks or colons, 3 or more), its argument and body
_FENCE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<kind>exercise|solution)\}[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_OPTION = re.compile(r"^:[\w-]+:.*$")


def glue_values(nb: nbformat.NotebookNode) -> dict[str, dict[str, str]]:
    """``{name: {mime type: data}}`` of every value ``myst_nb.glue`` recorded in ``nb``'s outputs."""
    values = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:
                values[name] = {mime[len(GLUE_PREFIX):]: data for mime, data in output.get("data", {}).items()
                                if mime.startswith(GLUE_PREFIX)}
    return values


def fill_glue(text: str, values: Mapping[str, Mapping[str, str]],
              other: Callable[[str], Mapping[str, Mapping[str, str]]] | None = None) -> str:
    """``text`` with each glue role replaced by its value as the book shows it (myst-nb's own text
    formatting). ``values`` are this notebook's glued values; ``other(doc)`` gives another notebook's,
    for ``doc::key`` references. An unknown key raises ``KeyError`` naming it (as the book build would warn)."""

    def replace(match: re.Match) -> str:
        kind, content = match.group(1) or "any", match.group(2)
        key, fmt = content, ""
        if ":" in content.replace("::", "\0"):  # key:fmt (the format follows the last single colon)
            key, fmt = content.rsplit(":", 1)
        doc, _, name = key.rpartition("::")
        source = values if not doc else (other(doc) if other else {})
        if name not in source:
            raise KeyError(f"glue {name!r} not found" + (f" in {doc}" if doc else ""))
        data = source[name]
        if kind == "md" or (kind == "any" and "text/markdown" in data):
            return data["text/markdown"]
        return format_plain_text(data["text/plain"], fmt)

    return _ROLE.sub(replace, text)


def fold_directives(markdown: str) -> str:
    """Markdown with each ``{solution}`` fence as a collapsed ``<details>`` block and each ``{exercise}``
    fence as a bold "Exercise." paragraph (their ``:option:`` lines dropped)."""

    def replace(match: re.Match) -> str:
        lines = match.group("body").rstrip("\n").split("\n")
        while lines and _OPTION.match(lines[0]):
            lines.pop(0)
        body = "\n".join(lines).strip()
        if match.group("kind") == "exercise":
            return f"**Exercise.** {body}"
        return f"<details>\n<summary>Solution (click to open)</summary>\n\n{body}\n\n</details>"

    return _FENCE.sub(replace, markdown)


def install_command(repository_url: str, branch: str = "") -> str:
    """The one ``pip install`` line that installs ``gradsim_utils`` and its dependencies from the
    book's repository (``git+<url>[@branch]``); empty when no repository is set."""
    if not repository_url:
        return ""
    ref = f"@{branch}" if branch else ""
    return f'pip install "gradsim_utils @ git+{repository_url.rstrip("/")}{ref}"'


def download_copy(nb: nbformat.NotebookNode, install: str,
                  other: Callable[[str], Mapping[str, Mapping[str, str]]] | None = None) -> nbformat.NotebookNode:
    """The reader's copy of an executed notebook (``nb`` is left unchanged): glue filled in Markdown
    cells and Markdown outputs, solutions folded, and a first Markdown cell plus a ``%pip`` cell that
    install the package (or, when ``install`` is empty, a note that the book names no repository)."""
    out = copy.deepcopy(nb)
    values = glue_values(out)
    for cell in out.cells:
        if cell.cell_type == "markdown":
            cell.source = fold_directives(fill_glue(cell.source, values, other))
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/markdown" in data:
                data["text/markdown"] = fill_glue(data["text/markdown"], values, other)
    if install:
        note = ("**Running this notebook on Colab or in a fresh Jupyter?** Run the next cell first: it "
                f"installs the `gradsim_utils` package the chapter imports, with its dependencies:\n\n`{install}`")
        head = [nbformat.v4.new_markdown_cell(note), nbformat.v4.new_code_cell(f"%{install}")]
    else:
        head = [nbformat.v4.new_markdown_cell(
            "**Running this notebook elsewhere?** This copy of the book names no repository "
            "(`repository.url` in `_config.yml`), so there is no install line: install `gradsim_utils` from "
            "a clone of the book with `pip install -e .`")]
    out.cells = head + out.cells
    return out


def write_download_copy(source: Path, target: Path, install: str) -> Path:
    """Write ``download_copy`` of the executed notebook ``source`` to ``target``; ``doc::key`` glue is
    read from the notebook ``doc`` beside ``source``."""
    source, target = Path(source), Path(target)
    others: dict[str, dict] = {}

    def other(doc: str) -> dict:
        if doc not in others:
            others[doc] = glue_values(nbformat.read(source.parent / doc, as_version=4))
        return others[doc]

    nb = download_copy(nbformat.read(source, as_version=4), install, other)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return target
