"""Run the book: execute every chapter with papermill, then build the site with jupyter-book.

``python -m gradsim_utils.book --profile quick`` is what ``make book`` calls. Chapters are the
jupytext text notebooks ``notebooks/NN_*.md`` in name order; each is converted to ``.ipynb``
in the output folder (``book/`` by default) and executed there in place with the profile and
any ``-p name value`` parameters. Before anything runs, each ``-p`` name is checked against the
chapters' ``parameters`` cells: a name no selected chapter has is an error listing their parameters; a
name only some have is passed to those alone (one line names the chapters that ignore it). ``--only``
takes file-name prefixes; a number (``3`` or ``03``) selects the chapter with that number. The first
failing chapter stops the run with an error naming the chapter and the failing cell; a chapter whose
kernel dies (segfault, out of memory, killed) stops it with a short report: the cell, the signal or
exit code and what to try.

``<output>/_timings.json`` keeps, per chapter, the wall time and the parameters of its last execution
(``{"chapters": {stem: {"seconds", "parameters"}}, "up_to_date": [...]}``); a run of some chapters
updates their entries and keeps the others'. The kernel of each chapter gets three environment
variables: ``GRADSIM_RESULTS``, the folder ``<output>/_results`` its claims go to, and
``GRADSIM_RUN_PARAMETERS``, the parameters recorded with them (``run_parameters``; both read by
``gradsim_utils.report``); ``PYTHONPATH``, which starts with this checkout, so that the kernel runs
this checkout's package.

A chapter whose executed notebook is up to date is not run again: its inputs (the text notebook,
the parameters and the source of ``gradsim_utils``) are hashed into the executed notebook's
metadata, and an unchanged hash skips it (``--force`` runs everything). Pages whose front matter
sets ``gradsim: {always_execute: true}`` (the summary and reproducibility pages, which read the
other chapters' results) run every time.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import jupytext
import nbformat
import papermill
from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import DeadKernelError
from tqdm.auto import tqdm

from .report import RESULTS_ENV, RUN_ENV

__all__ = ["ChapterFailed", "KernelDied", "UsageError", "kernel_died_report", "chapter_sources",
           "chapter_parameters", "parameters_per_chapter", "run_parameters", "chapter_inputs_hash", "is_up_to_date",
           "execute_chapter", "run_chapters", "build_book", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class ChapterFailed(RuntimeError):
    """A chapter raised while papermill executed it."""


class KernelDied(ChapterFailed):
    """A chapter's kernel died (a signal such as SIGSEGV or SIGKILL, or an exit) while executing it."""


class UsageError(ValueError):
    """A command line that selects no chapter or names a parameter no selected chapter has."""


class _KernelManager(AsyncKernelManager):
    """nbclient's default kernel manager that keeps the exit status of the last kernel it cleaned up
    (``None`` when it was shut down normally), which nbclient's DeadKernelError does not carry."""
    last_returncode: int | None = None

    async def cleanup_resources(self, restart: bool = False) -> None:
        process = getattr(self.provisioner, "process", None)   # still set only when the kernel died
        _KernelManager.last_returncode = None if process is None else process.poll()
        await super().cleanup_resources(restart)


_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL}


def _signal(number: int) -> signal.Signals | None:
    return signal.Signals(number) if number in signal.valid_signals() else None


def kernel_died_report(source: Path, target: Path, parameters: dict, returncode: int | None) -> str:
    """What ``main`` prints when the kernel of chapter ``source`` died: the cell that was running
    (from papermill's partly executed notebook ``target``), the signal or exit code, what to try."""
    cells = nbformat.read(target, as_version=4).cells
    started = [i for i, cell in enumerate(cells) if cell.metadata.get("papermill", {}).get("start_time")]
    where = "before its first cell"
    if started:
        lines = cells[started[-1]].source.strip().splitlines()
        where = f"in cell {started[-1]} (starting {lines[0] if lines else ''!r})"
    sig = None
    if returncode is None:
        how = "exit status unknown"
    elif returncode < 0:
        sig = _signal(-returncode)
        how = f"killed by {sig.name if sig else f'signal {-returncode}'}"
    else:
        sig = _signal(returncode - 128) if returncode > 128 else None   # a shell's 128 + signal number
        how = f"exited with code {returncode}" + (f" (128 + {sig.name})" if sig else "")
    rerun = f"python -m gradsim_utils.book --only {source.stem}"
    if sig in _CRASH_SIGNALS:
        hint = ("a crash in native code. In training or any backward pass on CPU this is most likely the "
                "oneDNN channels_last backward bug (DESIGN.md section 5b): any backward through a convolution "
                "must run on contiguous tensors. Workaround: rerun with ONEDNN_MAX_CPU_ISA=AVX2 set, e.g. "
                f"`ONEDNN_MAX_CPU_ISA=AVX2 {rerun}`, and report the CPU (`lscpu | grep 'Model name'`) "
                "with the chapter and cell.")
    elif sig == signal.SIGKILL:
        batch = parameters.get("batch_size", chapter_parameters(source).get("batch_size"))
        hint = ("most likely out of memory (Linux's out-of-memory killer sends SIGKILL; `dmesg` shows it): "
                + (f"lower the chapter's batch size (now {batch}), e.g. `{rerun} -p batch_size "
                   f"{max(1, batch // 2)}`, or use a smaller profile (`--profile smoke`)."
                   if isinstance(batch, int) else "use a smaller profile (`--profile smoke`) or more memory."))
    else:
        hint = f"rerun the chapter alone (`{rerun}`) and read the kernel's messages above."
    return (f"the kernel of chapter {source.name} died {where}, {how}.\n"
            f"What to try: {hint}\nThe partly executed notebook is {target}")


def chapter_sources(notebook_dir: Path = REPO_ROOT / "notebooks", only: list[str] | None = None) -> list[Path]:
    """The chapter notebooks ``NN_*.md`` in name order; ``only`` keeps those matching a prefix: a number
    (``3``, ``03``) matches the chapter with that number, other text the start of the file name."""
    sources = sorted(Path(notebook_dir).glob("[0-9][0-9]_*.md"))
    if not sources:
        raise FileNotFoundError(f"no chapter notebooks (NN_*.md) in {notebook_dir}")
    if not only:
        return sources

    def matches(source: Path, prefix: str) -> bool:
        if prefix.isdigit():
            return int(prefix) == int(source.stem[:2])
        return source.stem.startswith(prefix)

    unmatched = [prefix for prefix in only if not any(matches(s, prefix) for s in sources)]
    if unmatched:
        raise UsageError(f"--only {' '.join(unmatched)} matches no chapter in {notebook_dir}; the chapters are: "
                         + ", ".join(s.stem for s in sources))
    return [s for s in sources if any(matches(s, prefix) for prefix in only)]


def chapter_parameters(source: Path) -> dict:
    """The names and default values of the ``parameters`` cell of chapter ``source`` (a default that
    is not a Python literal is given as its source text)."""
    cells = [c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", [])]
    defaults = {}
    for cell in cells:
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets = [node.target]
            else:
                continue
            for target in (t for t in targets if isinstance(t, ast.Name)):
                try:
                    defaults[target.id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError):
                    defaults[target.id] = ast.unparse(node.value)
    return defaults


def parameters_per_chapter(sources: list[Path], parameters: dict) -> tuple[dict[Path, dict], list[str]]:
    """Which of the command-line ``parameters`` each chapter gets: those its ``parameters`` cell has.

    Returns ``{source: parameters}`` and one line per name that some chapters ignore (naming them).
    Raises ``UsageError`` for a name that no chapter in ``sources`` has, listing their parameters.
    """
    known = {source: chapter_parameters(source) for source in sources}
    unknown = [name for name in parameters if not any(name in names for names in known.values())]
    if unknown:
        names = sorted(set().union(*known.values()))
        raise UsageError(f"unknown parameter {', '.join(map(repr, unknown))}: no selected chapter "
                         f"({', '.join(s.stem for s in sources)}) has it; their parameters are: {', '.join(names)}")
    notes = []
    for name in parameters:
        ignoring = [s.stem for s in sources if name not in known[s]]
        if ignoring:
            notes.append(f"parameter {name!r} is passed only to the chapters that have it; ignored by: {', '.join(ignoring)}")
    return {s: {k: v for k, v in parameters.items() if k in known[s]} for s in sources}, notes


def run_parameters(source: Path, parameters: dict) -> dict:
    """What a chapter's results and timings record of its run: the ``parameters`` it was given and
    its seed (the default when none was given)."""
    defaults = chapter_parameters(source)
    return {**parameters, **({"seed": parameters.get("seed", defaults["seed"])} if "seed" in defaults else {})}


@contextmanager
def _environment(**variables: str):
    """Set environment variables (which a kernel started now inherits) for the block, then restore them."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def chapter_inputs_hash(source: Path, parameters: dict) -> str:
    """sha256 of what an executed chapter depends on: its text, the parameters, gradsim_utils' code."""
    digest = hashlib.sha256(Path(source).read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    for module in sorted((REPO_ROOT / "gradsim_utils").glob("*.py")):
        digest.update(module.name.encode() + module.read_bytes())
    return digest.hexdigest()


def is_up_to_date(source: Path, target: Path, parameters: dict) -> bool:
    """True when ``target`` was executed without error from the same inputs as ``source`` now has."""
    if not target.is_file():
        return False
    if jupytext.read(source).metadata.get("gradsim", {}).get("always_execute", False):
        return False
    try:
        meta = nbformat.read(target, as_version=4).metadata.get("gradsim", {})
    except (OSError, ValueError):   # unreadable or half-written notebook: run it again
        return False
    return meta.get("inputs_hash") == chapter_inputs_hash(source, parameters) and meta.get("complete", False)


_DISPLAY_TAGS = {"remove-cell", "remove-input", "hide-cell", "hide-input"}


def _hide_injected_parameters_like_defaults(notebook) -> None:
    """Give papermill's injected-parameters cell the display tags of the chapter's parameters cell."""
    def tags_of(cell) -> set[str]:
        return set(cell.get("metadata", {}).get("tags", []))

    display = set().union(*(tags_of(c) & _DISPLAY_TAGS for c in notebook.cells if "parameters" in tags_of(c)))
    for cell in notebook.cells:
        if "injected-parameters" in tags_of(cell):
            cell.metadata["tags"] = sorted(tags_of(cell) | display)


def _kernel_python_path() -> str:
    """``PYTHONPATH`` for a chapter's kernel: this checkout first, so the kernel imports the
    ``gradsim_utils`` whose source ``chapter_inputs_hash`` hashed (not another checkout's editable
    install that shares the environment)."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


def execute_chapter(source: Path, output_dir: Path, parameters: dict, kernel_name: str = "python3",
                    progress: bool = True) -> Path:
    """Convert ``source`` to ``output_dir/<stem>.ipynb`` and execute it there with ``parameters``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{source.stem}.ipynb"
    notebook = jupytext.read(source)
    notebook.metadata.setdefault("gradsim", {}).update(
        inputs_hash=chapter_inputs_hash(source, parameters), complete=False)
    jupytext.write(notebook, target)
    try:
        with _environment(**{RESULTS_ENV: str(output_dir.resolve() / "_results"),
                             RUN_ENV: json.dumps(run_parameters(source, parameters), default=str),
                             "PYTHONPATH": _kernel_python_path()}):
            papermill.execute_notebook(
                str(target), str(target), parameters=parameters, kernel_name=kernel_name,
                cwd=str(output_dir), progress_bar=progress, kernel_manager_class=_KernelManager,
            )
    except DeadKernelError:
        raise KernelDied(kernel_died_report(source, target, parameters, _KernelManager.last_returncode)) from None
    except papermill.PapermillExecutionError as err:
        first_line = err.source.strip().splitlines()[0] if err.source.strip() else ""
        raise ChapterFailed(
            f"chapter {source.name} failed in cell {err.cell_index} (execution count "
            f"{err.exec_count}, starting {first_line!r}): {err.ename}: {err.evalue}\n"
            f"The executed notebook with the traceback is {target}"
        ) from None
    executed = nbformat.read(target, as_version=4)
    _hide_injected_parameters_like_defaults(executed)
    executed.metadata["gradsim"]["complete"] = True
    nbformat.write(executed, target)
    return target


def run_chapters(profile: str = "quick", parameters: dict | None = None,
                 output_dir: Path = REPO_ROOT / "book", only: list[str] | None = None,
                 notebook_dir: Path = REPO_ROOT / "notebooks", progress: bool = True,
                 force: bool = False) -> dict[str, float]:
    """Execute the chapters in order, skipping up-to-date ones unless ``force``; returns the wall
    time of each (seconds; a skipped chapter keeps the time of its last execution). Each chapter gets
    the profile and those ``parameters`` its parameters cell has (``parameters_per_chapter``, checked
    before any chapter runs). Its time and ``run_parameters`` are merged into
    ``<output_dir>/_timings.json`` after it, keeping the entries of chapters not run now."""
    output_dir = Path(output_dir)
    sources = chapter_sources(notebook_dir, only)
    per_chapter, notes = parameters_per_chapter(sources, parameters or {})
    for note in notes:
        tqdm.write(note)
    timings_path = output_dir / "_timings.json"
    record = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    chapters: dict[str, dict] = record.get("chapters", {})
    timings: dict[str, float] = {}
    skipped: list[str] = []
    for source in tqdm(sources, desc=f"chapters ({profile})", unit="chapter", disable=not progress):
        params = {"profile": profile, **per_chapter[source]}
        target = output_dir / f"{source.stem}.ipynb"
        if not force and source.stem in chapters and is_up_to_date(source, target, params):
            timings[source.stem] = chapters[source.stem]["seconds"]
            skipped.append(source.stem)
            tqdm.write(f"{source.name}: up to date, not executed (last run {timings[source.stem]} s)")
        else:
            tqdm.write(f"executing {source.name} ...")
            start = time.perf_counter()
            execute_chapter(source, output_dir, params, progress=progress)
            timings[source.stem] = round(time.perf_counter() - start, 1)
            chapters[source.stem] = {"seconds": timings[source.stem], "parameters": run_parameters(source, params)}
            tqdm.write(f"  {source.name}: {timings[source.stem]} s")
        timings_path.write_text(json.dumps({"chapters": dict(sorted(chapters.items())), "up_to_date": skipped},
                                           indent=1, default=str))
    return timings


def build_book(root: Path = REPO_ROOT, strict: bool = False) -> Path:
    """``jupyter-book build root`` (execution off in _config.yml); returns the html folder."""
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(root)]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True)
    return Path(root) / "_build" / "html"


def _parse_value(text: str):
    """A command-line parameter value: a Python literal if it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradsim_utils.book", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="smoke | quick | paper | paper-dryrun")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a papermill parameter for every chapter (repeatable)")
    parser.add_argument("--only", nargs="+", help="run only these chapters: numbers (3 or 03) or file-name prefixes")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "book")
    parser.add_argument("--notebook-dir", type=Path, default=REPO_ROOT / "notebooks",
                        help="folder of the chapter text notebooks NN_*.md (default: notebooks/)")
    parser.add_argument("--no-build", action="store_true", help="execute the chapters but do not build the site")
    parser.add_argument("--strict", action="store_true", help="treat Sphinx warnings as errors")
    parser.add_argument("--force", action="store_true", help="execute every chapter, even up-to-date ones")
    args = parser.parse_args(argv)
    params = {name: _parse_value(value) for name, value in args.parameter}
    try:
        run_chapters(args.profile, params, args.output_dir, args.only, args.notebook_dir, force=args.force)
    except (ChapterFailed, UsageError) as err:
        print(f"\nERROR: {err}", file=sys.stderr)
        return 1
    if not args.no_build:
        html = build_book(REPO_ROOT, strict=args.strict)
        print(f"site built: {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
