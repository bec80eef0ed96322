"""``SpecVersion``: the on-disk format versions (``format/SPEC.md`` §8) a repository is
created at, under Icechunk 2.x's name, and the check of ``spec_version=``."""

from __future__ import annotations

from enum import IntEnum

from frazil.format.common import FORMAT_VERSION

from .errors import ErrorKind, InvalidInputError


class SpecVersion(IntEnum):
    """frazil's format versions (not Icechunk's: frazil reads and writes only its own).

    ``v1``: the objects every frazil release reads. ``v2``: adds transaction logs that
    list chunks by manifest segment (SPEC §4.3), written only by commits that stage
    millions of virtual references in one array. A repository this frazil creates is at
    ``current()``, ``v2``: most of its objects stay version 1, and older releases read
    all but those logs (SPEC §8).
    """

    v1 = 1
    v2 = 2

    @staticmethod
    def current() -> SpecVersion:
        """The version repositories are created at: frazil's newest format."""
        return SpecVersion(FORMAT_VERSION)


def check_spec_version(value: object) -> SpecVersion:
    """The version ``spec_version=`` asks for, if frazil can create a repository at it:
    None or ``current()``; anything else is an ``InvalidInputError`` saying why."""
    if value is None:
        return SpecVersion.current()
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(
            f"spec_version must be a SpecVersion or an int, got {value!r}",
            kind=ErrorKind.UNSUPPORTED_SPEC_VERSION,
        )
    current = SpecVersion.current()
    if value == current:
        return current
    if value in (v.value for v in SpecVersion):
        raise InvalidInputError(
            f"spec_version={int(value)}: frazil creates repositories at its format version "
            f"{int(current)} only (SpecVersion.current()); it cannot promise to write "
            f"nothing newer than version {int(value)}. (This is frazil's format, not "
            "Icechunk's: frazil never writes Icechunk repositories.)",
            kind=ErrorKind.UNSUPPORTED_SPEC_VERSION,
        )
    raise InvalidInputError(
        f"spec_version={value!r} is no frazil format version (known: "
        f"{', '.join(str(int(v)) for v in SpecVersion)}; this frazil creates "
        f"{int(current)})",
        kind=ErrorKind.UNSUPPORTED_SPEC_VERSION,
    )
