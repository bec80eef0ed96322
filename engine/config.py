"""Repository configuration: settings kept in ``config.json``, merged with those given at open."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInputError

DEFAULT_INLINE_THRESHOLD = 512
DEFAULT_MANIFEST_SPLIT_ROWS = 65_536
_SETTINGS = ("inline_chunk_threshold_bytes", "manifest_split_rows",
             "compact_when_segments_exceed")


@dataclass
class RepositoryConfig:
    """Settings of a repository. ``None`` means "not set here": the stored value or the
    default applies. Icechunk's name; fields frazil does not use are not accepted.

    * ``inline_chunk_threshold_bytes``: chunks of at most this many bytes are stored
      inside the manifest instead of as separate objects (default 512).
    * ``manifest_split_rows``: at most this many chunk references per manifest segment
      object, so a read of one chunk loads a bounded object (default 65,536).
    * ``compact_when_segments_exceed``: when a commit would leave an array with more than
      this many manifest segments, the commit first merges the array's older segments
      (as ``Repository.compact`` does); None (the default) never compacts on commit.
    """

    inline_chunk_threshold_bytes: int | None = None
    manifest_split_rows: int | None = None
    compact_when_segments_exceed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def default(cls) -> RepositoryConfig:
        return cls(DEFAULT_INLINE_THRESHOLD, DEFAULT_MANIFEST_SPLIT_ROWS)

    def __post_init__(self) -> None:
        for name in _SETTINGS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 0):
                raise InvalidInputError(f"RepositoryConfig.{name} must be a non-negative "
                                        f"int, got {value!r}")
        if self.manifest_split_rows == 0:
            raise InvalidInputError("RepositoryConfig.manifest_split_rows must be positive")
        if self.compact_when_segments_exceed == 0:
            raise InvalidInputError("RepositoryConfig.compact_when_segments_exceed must be "
                                    "positive (or None)")

    def merge(self, other: RepositoryConfig | None) -> RepositoryConfig:
        """A new config: ``other``'s set fields over this one's."""
        if other is None:
            return dataclasses.replace(self, extra=dict(self.extra))
        values = {f.name: getattr(other, f.name) if getattr(other, f.name) is not None
                  else getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "extra"}
        return RepositoryConfig(**values, extra={**self.extra, **other.extra})

    @property
    def inline_threshold(self) -> int:
        v = self.inline_chunk_threshold_bytes
        return DEFAULT_INLINE_THRESHOLD if v is None else v

    @property
    def split_rows(self) -> int:
        return self.manifest_split_rows or DEFAULT_MANIFEST_SPLIT_ROWS

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for name in _SETTINGS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RepositoryConfig:
        known = {k: d[k] for k in _SETTINGS if k in d}
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**known, extra=extra)
