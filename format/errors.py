"""The root of frazil's exception hierarchy, and the error for undecodable objects.

Defined here, in the bottom layer, so that ``format`` imports nothing of ours and every
other layer can subclass the same root.
"""

from __future__ import annotations


class FrazilError(Exception):
    """Root of every error frazil raises on purpose."""

    @property
    def message(self) -> str:
        """The error's text (Icechunk's ``IcechunkError.message``)."""
        return str(self)


class FormatError(FrazilError):
    """An on-disk object cannot be decoded: wrong type, unknown version, or damaged bytes.

    The message names the object (its type and, where known, its id or key).
    """
