"""Parameter checks for the chapters' parameters and the package's public functions.

Each check takes the parameters as keyword arguments, so that an error names the parameter as the
user typed it (``-p batch_size 0`` -> ``batch_size must be an integer >= 1, got 0``). Chapters run
them in their first code cell, before any slow step (DESIGN.md section 10: clear, early errors).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path

__all__ = ["integers", "numbers_in", "one_of", "names_in", "pairs", "folders", "files", "enough_per_class"]


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integers(minimum: int | None = None, maximum: int | None = None, *, optional: bool = False, **values):
    """Each value is an integer in ``[minimum, maximum]`` (a bound of None is open); with
    ``optional`` a value may also be None (the chapter then takes its profile's setting). Returns
    the values as Python ints (None kept): the value itself for one keyword, else a tuple."""
    bounds = (f" >= {minimum}" if minimum is not None else "") + (
        f"{' and' if minimum is not None else ''} <= {maximum}" if maximum is not None else "")
    for name, value in values.items():
        if optional and value is None:
            continue
        if (not _is_integer(value) or (minimum is not None and value < minimum)
                or (maximum is not None and value > maximum)):
            raise ValueError(f"{name} must be an integer{bounds}{' or None' if optional else ''}, got {value!r}")
    checked = tuple(None if v is None else int(v) for v in values.values())
    return checked[0] if len(checked) == 1 else checked


def numbers_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
               **values) -> None:
    """Each value is a real number in the interval from ``low`` to ``high`` (open at a side whose
    ``*_open`` is true)."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    for name, value in values.items():
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok:
            ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


def one_of(choices: Sequence, **values) -> None:
    """Each value is one of ``choices``."""
    for name, value in values.items():
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def names_in(allowed: Sequence[str], *, optional: bool = False, length: int | None = None, **values) -> None:
    """Each value is a non-empty list of names from ``allowed`` (of ``length`` names when given; or
    None with ``optional``)."""
    what = f"{length} names" if length else "names"
    for name, value in values.items():
        if optional and value is None:
            continue
        if (isinstance(value, str) or not isinstance(value, Sequence) or not value
                or (length is not None and len(value) != length)):
            raise ValueError(f"{name} must be a list of {what} from {list(allowed)}, got {value!r}")
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise ValueError(f"{name}: {unknown} not among {list(allowed)}")


def pairs(**values) -> None:
    """Each value is a non-empty list of two-element lists, e.g. ``[["cosine", 0.1]]`` (papermill
    passes a tuple inside a list as its text, so lists are the form that survives a rerun)."""
    for name, value in values.items():
        if (isinstance(value, str) or not isinstance(value, Sequence) or not value
                or any(isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2 for p in value)):
            raise ValueError(f"{name} must be a non-empty list of two-element lists, e.g. [['cosine', 0.1]], "
                             f"got {value!r}")


def _paths(kind: str, test, values) -> None:
    for name, value in values.items():
        if value is None or value == "":
            continue
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{name} must be a path to a {kind} (a string), got {value!r}")
        path = Path(value).expanduser()
        if not test(path):
            where = "does not exist" if not path.exists() else f"is not a {kind}"
            raise ValueError(f"{name}={str(value)!r}: {path.resolve()} {where}")


def folders(**values) -> None:
    """Each value that is given (not None or "") is an existing folder."""
    _paths("folder", Path.is_dir, values)


def files(**values) -> None:
    """Each value that is given (not None or "") is an existing file."""
    _paths("file", Path.is_file, values)


def enough_per_class(labels, class_names: Sequence[str], minimum: int, parameter: str, source: str) -> None:
    """Every class has at least ``minimum`` images, which ``parameter`` needs; the error names the
    classes short of it and where the images came from (``source``, e.g. ``image_folder='...'``)."""
    counts = [0] * len(class_names)
    for label in labels:
        counts[int(label)] += 1
    short = {class_names[c]: n for c, n in enumerate(counts) if n < minimum}
    if short:
        raise ValueError(f"{parameter} needs at least {minimum} images per class, but in {source} "
                         f"{', '.join(f'{name!r} has {n}' for name, n in list(short.items())[:5])}"
                         f"{' ...' if len(short) > 5 else ''}")
