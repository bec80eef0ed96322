"""Icechunk's logging functions over Python's ``logging``: filter directives, set-up, debug info."""

from __future__ import annotations

import logging
import os
import platform
import re
import sys

from .errors import InvalidInputError

__all__ = ["LOGGER", "TRACE", "initialize_logs", "print_debug_info", "set_logs_filter"]

LOGGER = "frazil"
"""The name of the logger frazil logs to (its modules log to children of it)."""

TRACE = 5
"""The level of Icechunk's ``trace`` directive: below ``logging.DEBUG``."""

ENV_VARS = ("FRAZIL_LOG", "ICECHUNK_LOG")
"""Where ``initialize_logs`` and ``set_logs_filter(None)`` read a directive, first found."""

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
_HANDLER_FLAG = "_frazil_logs_handler"
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
    frazil's logger), ``target=level`` or ``target`` alone (every level, as in Icechunk).
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


def _ensure_handler() -> None:
    """A stderr handler on frazil's logger (once), so that the levels asked for show."""
    logger = logging.getLogger(LOGGER)
    if not any(getattr(h, _HANDLER_FLAG, False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        setattr(handler, _HANDLER_FLAG, True)
        logger.addHandler(handler)


def set_logs_filter(log_filter_directive: str | None) -> None:
    """Set the levels of frazil's logs (logger ``"frazil"``) from an Icechunk filter
    directive, such as ``"debug"``, ``"icechunk=trace,info"`` or ``"frazil=info"``.

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
    ``ICECHUNK_LOG``): its directive sets the levels and a stderr handler shows them.
    Without either variable, nothing changes (Python's own configuration applies)."""
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
