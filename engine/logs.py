"""Icechunk's logging functions over Python's ``logging``: filter directives, set-up, debug info."""

from __future__ import annotations

import logging
import os
import platform
import re
import sys
from typing import Any

from .errors import InvalidInputError

__all__ = ["LOGGER", "TRACE", "initialize_logs", "print_debug_info", "set_logs_filter"]

LOGGER = "frazil"
"""The name of the logger frazil logs to (its modules log to children of it)."""

TRACE = 5
"""The level of Icechunk's ``trace`` directive: below ``logging.DEBUG``."""
logging.addLevelName(TRACE, "TRACE")

ENV_VARS = ("FRAZIL_LOG", "ICECHUNK_LOG")
"""Where ``initialize_logs`` and ``set_logs_filter(None)`` read a directive, first found."""
NO_LOGS_VARS = ("FRAZIL_NO_LOGS", "ICECHUNK_NO_LOGS")
"""Set (to anything), ``initialize_logs`` does nothing, as Icechunk's ``ICECHUNK_NO_LOGS``."""

_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}
_OURS = ("frazil", "icechunk")  # targets that mean frazil's own logger
_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*((::|\.)[A-Za-z_][A-Za-z0-9_]*)*")
# ``target:level`` (one colon, as people write it for ``target=level``)
_COLON_LEVEL = re.compile(r"(?P<target>.*[^:]):(?P<level>[A-Za-z]+)")
_HANDLER_FLAG = "_frazil_logs_handler"
_MISSPELT_MIN_LEN = 6  # shorter names ("ice", "chunk") are other modules, not typos
_MISSPELT_MAX_EDITS = 2
_configured: set[str] = set()  # loggers a directive set a level on, reset by the next one


def _level(word: str, spec: str) -> int:
    level = _LEVELS.get(word.strip().lower())
    if level is None:
        raise InvalidInputError(
            f"log filter {spec!r}: unknown level {word!r} (use one of {', '.join(sorted(_LEVELS))})"
        )
    return level


def parse_filter(spec: str) -> dict[str, int]:
    """The Python logger levels an Icechunk filter directive asks for.

    ``spec`` is comma-separated directives, each ``level`` (the default, which applies to
    frazil's logger), ``target=level`` (also written ``target:level``) or ``target`` alone
    (every level, as in Icechunk).
    Targets ``icechunk`` and ``frazil`` (and their ``::``-separated children) name frazil's
    logger; any other target names the Python logger of that name (``::`` read as ``.``),
    so ``s3fs=debug`` reaches s3fs's logs. Spans (``[...]``) and field filters are not
    supported. ``InvalidInputError`` names the directive at fault.
    """
    if not isinstance(spec, str):
        raise InvalidInputError(f"a log filter is a string, got {type(spec).__name__}")
    out: dict[str, int] = {}
    default: int | None = None
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "[" in part or "{" in part:
            raise InvalidInputError(
                f"log filter {spec!r}: span and field filters ({part!r}) are not supported"
            )
        target, eq, word = part.partition("=")
        target = target.strip()
        colon = None if eq else _COLON_LEVEL.fullmatch(target)
        if colon is not None and colon["level"].lower() in _LEVELS:
            target, eq, word = colon["target"], "=", colon["level"]
        if not eq and target.lower() in _LEVELS:
            default = _level(target, spec)
            continue
        if not _TARGET.fullmatch(target):
            raise InvalidInputError(f"log filter {spec!r}: invalid directive {part!r}")
        level = _level(word, spec) if eq else TRACE
        head, _, rest = target.replace("::", ".").partition(".")
        name = LOGGER + ("." + rest if rest else "") if head in _OURS else target.replace("::", ".")
        out[name] = level
    if default is not None:
        out.setdefault(LOGGER, default)
    return out


def _edits(a: str, b: str) -> int:
    """The Levenshtein distance between ``a`` and ``b`` (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def misspelt_targets(spec: str) -> list[str]:
    """The targets of ``spec`` that look like misspellings of ``icechunk`` or ``frazil``
    (one or two edits away, at least six characters): their directives name some other
    logger, so they would silently show nothing."""
    out = []
    for part in spec.split(","):
        head = re.split(r"::|[.:=]", part.strip(), maxsplit=1)[0]
        if len(head) < _MISSPELT_MIN_LEN or head.lower() in _LEVELS:
            continue
        if any(0 < _edits(name, head) <= _MISSPELT_MAX_EDITS for name in _OURS):
            out.append("".join(c for c in head if c.isprintable()))
    return out


class _StdoutHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is at the time of each record (so
    that redirections made after set-up, such as pytest's capture, see the logs)."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


def _ensure_handler() -> None:
    """A stdout handler on frazil's logger (once), so that the levels asked for show
    (Icechunk prints its logs to stdout)."""
    logger = logging.getLogger(LOGGER)
    if not any(getattr(h, _HANDLER_FLAG, False) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        setattr(handler, _HANDLER_FLAG, True)
        logger.addHandler(handler)


def set_logs_filter(log_filter_directive: str | None) -> None:
    """Set the levels of frazil's logs (logger ``"frazil"``) from an Icechunk filter
    directive, such as ``"debug"``, ``"icechunk=trace,info"`` or ``"frazil:info"``, and
    print them to stdout (as Icechunk does). A target that looks like a misspelling of
    ``icechunk`` gets a warning on stderr.

    Parameters
    ----------
    log_filter_directive
        Comma-separated directives (see ``parse_filter``); None reads the environment
        variable ``FRAZIL_LOG``, else ``ICECHUNK_LOG`` (neither set: logs back to the
        default, warnings and up).

    Raises
    ------
    InvalidInputError
        A directive frazil cannot read (an unknown level, a malformed target).
    """
    if log_filter_directive is None:
        log_filter_directive = next((os.environ[v] for v in ENV_VARS if os.environ.get(v)), "warn")
    for name in misspelt_targets(log_filter_directive):
        print(
            f"WARNING: the log filter names {name!r}: did you mean 'icechunk' (or 'frazil')?",
            file=sys.stderr,
        )
    levels = parse_filter(log_filter_directive)
    for name in _configured - set(levels):  # directives replace, as in Icechunk
        logging.getLogger(name).setLevel(logging.NOTSET)
    _configured.clear()
    levels.setdefault(LOGGER, logging.WARNING)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
        _configured.add(name)
    _ensure_handler()


def initialize_logs() -> None:
    """Set frazil's logging up from the environment (``FRAZIL_LOG``, else
    ``ICECHUNK_LOG``): its directive sets the levels and a stdout handler shows them.
    Without either variable, or with ``FRAZIL_NO_LOGS`` or ``ICECHUNK_NO_LOGS`` set,
    nothing changes (Python's own configuration applies). ``import frazil`` calls it."""
    if any(os.environ.get(v) is not None for v in NO_LOGS_VARS):
        return
    if any(os.environ.get(v) for v in ENV_VARS):
        set_logs_filter(None)


def print_debug_info() -> None:
    """Print the versions of frazil, Python, the platform and frazil's key dependencies
    (for bug reports)."""
    from importlib import import_module, metadata

    print(f"platform:  {platform.platform()}")
    print(f"python:  {platform.python_version()}")
    try:
        print(f"frazil:  {metadata.version('frazil')}")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        print("frazil:  unknown (not installed)")
    for package in ("zarr", "numcodecs", "numpy", "pyarrow", "fsspec", "s3fs", "xarray", "dask"):
        try:
            version = getattr(import_module(package), "__version__", "unknown")
        except ImportError:
            continue
        print(f"{package}:  {version}")
