"""Numbers from executed cells into the book's text (myst-nb glue), never typed by hand; each chapter's
claims recorded per regime, and the summary's verdict matrix built from those records.

Where claims are saved (``results_folder``): ``$GRADSIM_RESULTS``, which ``gradsim_utils.book`` sets to
``<output>/_results`` (``book/_results``) for each chapter it runs; a chapter run another way (e.g.
papermill directly) saves them under the cache, ``<cache_dir>/results``, never in the working directory.
Each claim carries the parameters of the run that made it (``run_parameters``), and the summary takes
claims of one run only (``one_run``)."""
from __future__ import annotations

import json
import math
import numbers
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from myst_nb import glue as _myst_glue

from .cache import atomic_write, cache_dir

__all__ = ["glue", "as_builtin", "value_range", "names_text", "glue_name", "results_folder", "run_parameters",
           "record_claim", "load_claims", "claims_for_profile", "compare_runs", "one_run", "parameters_text",
           "regimes_recorded", "claims_by_id", "depends_on_setting", "regime_comparison", "agreement_text", "verdict_counts", "counts_text",
           "missing_regimes_text", "claim_cell", "claims_markdown_table", "VERDICTS", "UNTESTED", "REGIMES",
           "BOOK_REGIMES", "YOURS",
           "DEFAULT_REGIME", "DEPENDS", "DASH", "RESULTS_ENV", "RUN_ENV"]


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


def value_range(values, fmt: str = ".3f") -> str:
    """``"low-high"`` of ``values`` in ``fmt``: how a quoted seed table's spread over models is cited."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values must not be empty")
    return f"{min(values):{fmt}}-{max(values):{fmt}}"


def names_text(names) -> str:
    """Names as a chapter's sentence lists them: ``"a"``, ``"a and b"``, ``"a, b and c"``."""
    names = [str(name) for name in names]
    if not names:
        raise ValueError("names must not be empty")
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def glue(name: str, value, display: bool = False):
    """``myst_nb.glue`` of ``value`` as a Python builtin, so ``{glue:text}`name:.3f``` formats it."""
    return _myst_glue(name, as_builtin(value), display=display)


UNTESTED = "not testable offline"
VERDICTS = ("reproduced", "not reproduced", "explained by an artifact", UNTESTED)
#: The settings a claim is judged in (DESIGN.md section 5a), in the summary's column order: tiny
#: ResNets trained here on the 32 px benchmark; EfficientNet-Lite0/1/2 with ImageNet weights, frozen,
#: on the benchmark at 224/240/260 px; the seeds' own setting, run by the ``paper`` profile.
REGIMES = {
    "tiny": "tiny ResNets trained here",
    "lite": "pretrained EfficientNet-Lite family",
    "paper": "ImageNet ResNets on Stable Diffusion images",
    "yours": "your models and images",
}
#: the regimes the book itself runs; "yours" is a reader's run with model_names or image_folder,
#: recorded in its own column so that it never passes for the profile's regime
BOOK_REGIMES = ("tiny", "lite", "paper")
YOURS = "yours"
DEFAULT_REGIME = "tiny"
DEPENDS = "depends on the setting"
DASH = "\u2014"
RESULTS_ENV = "GRADSIM_RESULTS"
RUN_ENV = "GRADSIM_RUN_PARAMETERS"


def results_folder() -> Path:
    """The folder claims are saved to and read from: ``$GRADSIM_RESULTS`` (set by ``gradsim_utils.book``
    to ``<output>/_results``), else ``<cache_dir>/results``."""
    folder = os.environ.get(RESULTS_ENV)
    return Path(folder) if folder else cache_dir() / "results"


def run_parameters() -> dict | None:
    """The parameters of the chapter's run as ``gradsim_utils.book`` passes them in ``$GRADSIM_RUN_PARAMETERS``
    (the profile, the seed and every parameter given on its command line); None when it ran another way."""
    text = os.environ.get(RUN_ENV)
    return json.loads(text) if text else None


def glue_name(claim_id: str, regime: str = DEFAULT_REGIME) -> str:
    """The glue key of a claim's number: ``claim_id`` in the default regime, ``<claim_id>__<regime>``
    in another (claim ids never hold ``__``, so the keys cannot collide)."""
    return claim_id if regime == DEFAULT_REGIME else f"{claim_id}__{regime}"


def record_claim(claim_id: str, *, chapter: str, source: str, claim: str, source_value: str, ours,
                 verdict: str, fmt: str = ".3f", ci: tuple[float, float] | None = None,
                 evidence: str = "", regime: str = DEFAULT_REGIME, quantity: str = "",
                 results_dir: str | Path | None = None) -> dict:
    """One claim of a source paper (``source``: the seed, e.g. "004"), our number for it in one
    ``regime`` (a key of ``REGIMES``) and the verdict, for the book's summary page.

    ``ours`` is glued under ``glue_name(claim_id, regime)`` (so the summary page can show it by
    cross-notebook glue, ``{glue:text}`<chapter>.ipynb::<name>```) and the record, with the run's
    ``run_parameters()``, is merged into ``<results_dir>/<chapter>.json`` (default ``results_folder()``),
    keyed by claim id and regime: a rerun replaces that pair's record and keeps the other regimes'.
    ``source_value`` is the paper's number quoted as text; ``quantity`` names what ``ours`` measures
    with its unit ("SFAM minus best baseline, accuracy points"; ``evidence`` when left empty);
    ``verdict`` must be one of ``VERDICTS`` and must be computed by the chapter from its numbers,
    never typed as a constant outcome.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {tuple(REGIMES)}, got {regime!r}")
    if not re.fullmatch(r"[A-Za-z0-9\-]+(_[A-Za-z0-9\-]+)*", claim_id):
        raise ValueError(f"claim_id must be letters, digits, '-' or single inner '_', got {claim_id!r}")
    ours = as_builtin(ours)
    record = {
        "claim_id": claim_id, "regime": regime, "chapter": chapter, "source": source, "claim": claim,
        "source_value": str(source_value), "ours": ours, "fmt": fmt, "verdict": verdict,
        "ci": None if ci is None else [as_builtin(ci[0]), as_builtin(ci[1])],
        "quantity": quantity or evidence, "evidence": evidence, "parameters": run_parameters(),
    }
    glue(glue_name(claim_id, regime), ours)
    path = Path(results_dir or results_folder()) / f"{chapter}.json"
    records = json.loads(path.read_text()) if path.exists() else {}
    records[f"{claim_id}@{regime}"] = record
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(records, indent=1)))
    return record


def load_claims(results_dir: str | Path | None = None) -> list[dict]:
    """Every claim recorded in ``results_dir`` (default ``results_folder()``), in chapter order then recording order."""
    claims: list[dict] = []
    for path in sorted(Path(results_dir or results_folder()).glob("*.json")):
        records = json.loads(path.read_text())
        stale = [key for key, record in records.items() if "regime" not in record]
        if stale:
            raise ValueError(f"{path} holds records written before results were kept per regime ({stale[:3]}); "
                             f"delete it (or run `make clean`) and rerun its chapter")
        claims.extend(records.values())
    return claims


def claims_for_profile(profile: str, results_dir: str | Path | None = None) -> list[dict]:
    """The claims in ``results_dir`` (default ``results_folder()``) recorded by chapters whose executed notebook
    (in the folder above it) ran on ``profile``.

    Results left by a chapter executed on another profile, or whose notebook is gone, are skipped,
    so the summary never mixes profiles.
    """
    folder = Path(results_dir or results_folder())
    kept = []
    for claim in load_claims(folder):
        notebook = folder.parent / f"{claim['chapter']}.ipynb"
        if notebook.is_file() and _executed_profile(notebook) == profile:
            kept.append(claim)
    return kept


def _executed_profile(notebook: Path) -> str | None:
    metadata = json.loads(notebook.read_text()).get("metadata", {})
    return metadata.get("papermill", {}).get("parameters", {}).get("profile")


def parameters_text(parameters: dict) -> str:
    """``name=value`` pairs, comma-separated, in the dict's order."""
    return ", ".join(f"{name}={value!r}" for name, value in parameters.items())


def compare_runs(runs: list[tuple[str, dict]]) -> tuple[dict, list[str]]:
    """Whether ``(chapter, parameters)`` pairs come from one run: every parameter name given by several
    chapters has one value (a parameter only one chapter has may differ from other chapters' defaults).
    Returns the parameters (each name's first value) and, for each name whose values differ, one line
    naming the chapters with each value (empty when they come from one run)."""
    values: dict[str, dict[str, tuple[object, list[str]]]] = {}
    for chapter, parameters in runs:
        for name, value in parameters.items():
            _, chapters = values.setdefault(name, {}).setdefault(repr(value), (value, []))
            if chapter not in chapters:
                chapters.append(chapter)
    differ = [f"{name}: " + "; ".join(f"{shown} in {', '.join(sorted(chapters))}" for shown, (_, chapters) in by_value.items())
              for name, by_value in values.items() if len(by_value) > 1]
    return {name: next(iter(by_value.values()))[0] for name, by_value in values.items()}, differ


def one_run(claims: list[dict]) -> dict:
    """The parameters the claims were made with (``compare_runs`` of their chapters' recorded
    parameters; a claim recorded without them counts as none). Raises ``ValueError`` naming each
    parameter whose values differ and the chapters with each value: the summary never mixes runs."""
    parameters, differ = compare_runs([(c["chapter"], c.get("parameters") or {}) for c in claims])
    if differ:
        raise ValueError("the chapters' results come from different runs, so the summary would mix them:\n  "
                         + "\n  ".join(differ) + "\nrerun those chapters with the same parameters "
                         "(python -m gradsim_utils.book reruns every chapter whose parameters changed)")
    return parameters


def regimes_recorded(claims: list[dict]) -> list[str]:
    """The regimes with at least one record, in ``REGIMES`` order."""
    present = {c["regime"] for c in claims}
    return [r for r in REGIMES if r in present]


def claims_by_id(claims: list[dict]) -> dict[str, dict[str, dict]]:
    """``{claim_id: {regime: record}}``, claims in first-recorded order."""
    rows: dict[str, dict[str, dict]] = {}
    for c in claims:
        rows.setdefault(c["claim_id"], {})[c["regime"]] = c
    return rows


def depends_on_setting(records: dict[str, dict]) -> bool:
    """Whether the regimes that could test a claim (verdict other than ``UNTESTED``) disagree."""
    return len({r["verdict"] for r in records.values() if r["verdict"] != UNTESTED}) > 1


def regime_comparison(claims: list[dict]) -> pd.DataFrame:
    """A chapter's claims side by side: one row per claim, per recorded regime its number
    (formatted with the claim's ``fmt``) and verdict, and whether the regimes agree ("yes"/"no",
    ``depends_on_setting``; a dash for a claim judged in one regime only)."""
    regimes = regimes_recorded(claims)
    rows = []
    for claim_id, records in claims_by_id(claims).items():
        row = {"claim": claim_id}
        for r in regimes:
            record = records.get(r)
            ours = record and record["ours"]
            shown = record is not None and _is_number(ours) and math.isfinite(ours)
            row[f"{r}: ours"] = f"{ours:{record['fmt']}}" if shown else DASH
            row[f"{r}: verdict"] = record["verdict"] if record else DASH
        row["regimes agree"] = ("no" if depends_on_setting(records) else "yes") if len(records) > 1 else DASH
        rows.append(row)
    return pd.DataFrame(rows)


def agreement_text(claims: list[dict]) -> str:
    """How a chapter's verdicts compare across regimes, as one plain sentence: how many of the
    claims judged in more than one regime agree, and each one that does not with its verdicts."""
    compared = {cid: records for cid, records in claims_by_id(claims).items() if len(records) > 1}
    if not compared:
        return "no claim of this chapter was judged in more than one regime"
    differ = []
    for cid, records in compared.items():
        if depends_on_setting(records):
            verdicts = ", ".join(f"{r}: {records[r]['verdict']}" for r in REGIMES if r in records)
            differ.append(f"{cid} ({verdicts})")
    text = f"the regimes agree on {len(compared) - len(differ)} of {len(compared)} claims"
    return text + (f"; they differ on {'; '.join(differ)}" if differ else "")


def verdict_counts(claims: list[dict], per_chapter: bool = False) -> pd.DataFrame:
    """Claims per verdict (columns, ``VERDICTS`` order) in each recorded regime (rows, ``REGIMES``
    order), or with ``per_chapter`` in each chapter and regime (rows "<chapter> · <regime>")."""
    order = {r: i for i, r in enumerate(regimes_recorded(claims))}

    def label(c: dict) -> str:
        return f"{c['chapter']} \u00b7 {c['regime']}" if per_chapter else c["regime"]

    ordered = sorted(claims, key=lambda c: (c["chapter"] if per_chapter else "", order[c["regime"]]))
    labels = list(dict.fromkeys(label(c) for c in ordered))
    table = pd.DataFrame(0, index=pd.Index(labels, name="regime"), columns=pd.Index(VERDICTS, name="verdict"))
    for c in claims:
        table.loc[label(c), c["verdict"]] += 1
    return table


def counts_text(claims: list[dict]) -> str:
    """The verdict counts of each recorded regime as one plain sentence, for the summary's opening."""
    parts = []
    for regime, row in verdict_counts(claims).iterrows():
        counts = ", ".join(f"{int(n)} {verdict}" for verdict, n in row.items() if n)
        parts.append(f"{REGIMES[regime]}: {counts} (of {int(row.sum())})")
    return "; ".join(parts)


def missing_regimes_text(claims: list[dict]) -> str:
    """Which regimes have no column in the summary, as one plain sentence."""
    missing = [r for r in BOOK_REGIMES if r not in regimes_recorded(claims)]
    if not missing:
        return "every regime has run, so each has a column"
    names = " or ".join(f"'{r}' ({REGIMES[r]})" for r in missing)
    return f"no column for {names}, which {'has' if len(missing) == 1 else 'have'} not run"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def claim_cell(record: dict | None) -> str:
    """One regime's cell of the summary: the verdict, then the measured quantity with our value (a
    cross-notebook glue reference) and its interval; a dash where the regime has no record or no number."""
    if record is None:
        return DASH
    verdict = f"**{record['verdict']}**"
    ours = record["ours"]
    if record["verdict"] == UNTESTED or (_is_number(ours) and not math.isfinite(ours)):
        return f"{DASH} ({verdict})"
    key = f"{record['chapter']}.ipynb::{glue_name(record['claim_id'], record['regime'])}"
    if _is_number(ours):
        value = f"{{glue:text}}`{key}:{record['fmt']}`"
        if record.get("ci") and all(map(math.isfinite, record["ci"])):
            value += f" [{record['ci'][0]:{record['fmt']}}, {record['ci'][1]:{record['fmt']}}]"
    else:
        value = f"{{glue:text}}`{key}`"
    quantity = _markdown_text(record.get("quantity") or record["evidence"])
    return f"{verdict} \u00b7 {quantity}: {value}" if quantity else f"{verdict} \u00b7 {value}"


def _markdown_text(text: str) -> str:
    """Free text safe inside a Markdown table cell: no column break, no emphasis, no line break."""
    return str(text).replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def _chapter_link(chapter: str) -> str:
    number = re.match(r"\d+", chapter)
    label = f"ch. {int(number.group())}" if number else chapter
    return f"{{doc}}`{label} <{chapter}>`"


def claims_markdown_table(claims: list[dict]) -> str:
    """The verdict matrix as a MyST Markdown table: one row per claim (its seed, chapter, text and the
    seed's number), one column per recorded regime (``claim_cell``), and the claims whose verdicts
    differ between regimes marked ``DEPENDS``."""
    regimes = regimes_recorded(claims)
    lines = ["| claim (seed, chapter) | seed's number | " + " | ".join(REGIMES[r] for r in regimes) + " |",
             "| --- | --- | " + " | ".join("---" for _ in regimes) + " |"]
    for records in claims_by_id(claims).values():
        first = next(iter(records.values()))
        claim = f"{_markdown_text(first['claim'])} (seed {first['source']}, {_chapter_link(first['chapter'])})"
        if depends_on_setting(records):
            claim += f" \u00b7 ***{DEPENDS}***"
        cells = [claim, _markdown_text(first["source_value"])] + [claim_cell(records.get(r)) for r in regimes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
