"""Numbers from executed cells into the book's text (myst-nb glue), never typed by hand."""
from __future__ import annotations

import json
import numbers
import re
from pathlib import Path

import numpy as np
import torch
from myst_nb import glue as _myst_glue

from .cache import atomic_write

__all__ = ["glue", "as_builtin", "record_claim", "load_claims", "claims_for_profile", "claims_markdown_table",
           "VERDICTS"]


def as_builtin(value):
    """numpy / torch scalars as Python int, float or bool (their repr is what glue formats)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"only a one-element tensor can be glued, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def glue(name: str, value, display: bool = False):
    """``myst_nb.glue`` of ``value`` as a Python builtin, so ``{glue:text}`name:.3f``` formats it."""
    return _myst_glue(name, as_builtin(value), display=display)


VERDICTS = ("reproduced", "not reproduced", "explained by an artifact", "not testable offline")
RESULTS_DIR = "_results"


def record_claim(claim_id: str, *, chapter: str, source: str, claim: str, source_value: str, ours,
                 verdict: str, fmt: str = ".3f", ci: tuple[float, float] | None = None,
                 evidence: str = "", results_dir: str | Path = RESULTS_DIR) -> dict:
    """One claim of a source paper (``source``: the seed, e.g. "004"), our number for it and the verdict,
    for the book's summary page.

    ``ours`` is glued under ``claim_id`` (so the summary page can show it by cross-notebook glue,
    ``{glue:text}`<chapter>.ipynb::<claim_id>```) and the record is merged into
    ``<results_dir>/<chapter>.json`` (relative to the executing notebook, i.e. ``book/_results``).
    ``source_value`` is the paper's number quoted as text; ``verdict`` must be one of ``VERDICTS``
    and must be computed by the chapter from its numbers, never typed as a constant outcome.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", claim_id):
        raise ValueError(f"claim_id must be letters, digits, '_' or '-', got {claim_id!r}")
    ours = as_builtin(ours)
    record = {
        "claim_id": claim_id, "chapter": chapter, "source": source, "claim": claim,
        "source_value": str(source_value), "ours": ours, "fmt": fmt, "verdict": verdict,
        "ci": None if ci is None else [as_builtin(ci[0]), as_builtin(ci[1])], "evidence": evidence,
    }
    glue(claim_id, ours)
    path = Path(results_dir) / f"{chapter}.json"
    records = json.loads(path.read_text()) if path.exists() else {}
    records[claim_id] = record
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(records, indent=1)))
    return record


def load_claims(results_dir: str | Path = RESULTS_DIR) -> list[dict]:
    """Every recorded claim, in chapter order then recording order."""
    claims: list[dict] = []
    for path in sorted(Path(results_dir).glob("*.json")):
        claims.extend(json.loads(path.read_text()).values())
    return claims


def claims_for_profile(profile: str, results_dir: str | Path = RESULTS_DIR) -> list[dict]:
    """The claims recorded by chapters whose executed notebook (next to ``results_dir``) ran on ``profile``.

    Results left by a chapter executed on another profile, or whose notebook is gone, are skipped,
    so the summary never mixes profiles.
    """
    book_dir = Path(results_dir).parent
    kept = []
    for claim in load_claims(results_dir):
        notebook = book_dir / f"{claim['chapter']}.ipynb"
        if notebook.is_file() and _executed_profile(notebook) == profile:
            kept.append(claim)
    return kept


def _executed_profile(notebook: Path) -> str | None:
    metadata = json.loads(notebook.read_text()).get("metadata", {})
    return metadata.get("papermill", {}).get("parameters", {}).get("profile")


def claims_markdown_table(claims: list[dict]) -> str:
    """A MyST Markdown table of claims; our value is a cross-notebook glue reference to its chapter."""
    lines = ["| seed | chapter | claim | seed's number | ours [95 % CI] | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in claims:
        if isinstance(c["ours"], (int, float)) and not isinstance(c["ours"], bool):
            ours = f"{{glue:text}}`{c['chapter']}.ipynb::{c['claim_id']}:{c['fmt']}`"
            if c.get("ci"):
                ours += f" [{c['ci'][0]:{c['fmt']}}, {c['ci'][1]:{c['fmt']}}]"
        else:
            ours = f"{{glue:text}}`{c['chapter']}.ipynb::{c['claim_id']}`"
        cells = [c["source"], f"{{doc}}`{c['chapter']}`", c["claim"], c["source_value"], ours, f"**{c['verdict']}**"]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(lines)
