"""Repository configuration: settings kept in ``config.json``, merged with those given at open."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from frazil.format import NodeRecord
from frazil.format.config import decode_containers

from .errors import FormatError, InvalidInputError
from .settings import CachingConfig, CompressionConfig, ManifestConfig, StorageSettings
from .virtual.containers import VirtualChunkContainer
from .zarrmeta import parse_zarr_json

VCC_KEY = "virtual_chunk_containers"
DEFAULT_INLINE_THRESHOLD = 512
DEFAULT_MANIFEST_SPLIT_ROWS = 65_536
DEFAULT_MERGE_FANOUT = 8
_SETTINGS = (
    "inline_chunk_threshold_bytes",
    "manifest_split_rows",
    "compact_when_segments_exceed",
    "manifest_merge_fanout",
    "get_partial_values_concurrency",
    "max_concurrent_requests",
)
# Icechunk's settings objects: accepted, saved and compared; only ``manifest.splitting``
# acts (see ``ManifestSplittingConfig``)
_OBJECTS: dict[str, Any] = {
    "compression": CompressionConfig,
    "caching": CachingConfig,
    "storage": StorageSettings,
    "manifest": ManifestConfig,
}


@dataclass
class RepositoryConfig:
    """Settings of a repository. ``None`` means "not set here": the stored value or the
    default applies. Icechunk's name and positional parameters; frazil's own settings are
    keyword-only.

    * ``inline_chunk_threshold_bytes``: chunks of at most this many bytes are stored
      inside the manifest instead of as separate objects (default 512).
    * ``manifest_split_rows``: at most this many chunk references per manifest segment
      object, so a read of one chunk loads a bounded object (default 65,536).
    * ``compact_when_segments_exceed``: when a commit would leave an array with more than
      this many manifest segments, the commit first merges the array's older segments
      (as ``Repository.compact`` does); None (the default) never compacts on commit.
    * ``manifest_merge_fanout``: every commit merges, in the arrays it writes, runs of this
      many small manifest segments of one size tier (``frazil.merging``), so an array's
      segment list stays bounded as history grows (default 8; 0 never merges).
    * ``virtual_chunk_containers``: url prefix -> ``VirtualChunkContainer``, the external
      locations virtual chunks may point at (none by default). Merging configs adds the
      other's containers (same prefix: the other's wins).
    * ``manifest``: Icechunk's ``ManifestConfig``. Its ``splitting`` cuts the manifest
      segments of the arrays it matches by regions of their chunk grid (see
      ``ManifestSplittingConfig``); ``preload`` is saved, not used.
    * ``get_partial_values_concurrency``, ``max_concurrent_requests``, ``compression``,
      ``caching``, ``storage``: Icechunk's settings, accepted, validated, saved in
      ``config.json`` and merged, but not used by frazil (COMPATIBILITY.md).
    """

    inline_chunk_threshold_bytes: int | None = None
    get_partial_values_concurrency: int | None = None
    compression: CompressionConfig | None = None
    max_concurrent_requests: int | None = None
    caching: CachingConfig | None = None
    storage: StorageSettings | None = None
    virtual_chunk_containers: dict[str, VirtualChunkContainer] | None = None
    manifest: ManifestConfig | None = None
    _: KW_ONLY
    manifest_split_rows: int | None = None
    compact_when_segments_exceed: int | None = None
    manifest_merge_fanout: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def default(cls) -> RepositoryConfig:
        """A config that sets nothing (as Icechunk's): each setting the stored config and
        the opener leave unset takes its default where it is used (``inline_threshold``,
        ``split_rows``, ``merge_fanout``); a repository stores only what was set."""
        return cls()

    def __repr__(self) -> str:
        """Icechunk's form (its fields first, in its order), then frazil's own settings."""
        names = (
            "inline_chunk_threshold_bytes",
            "get_partial_values_concurrency",
            "compression",
            "caching",
            "storage",
            "manifest",
            "max_concurrent_requests",
            "virtual_chunk_containers",
            "manifest_split_rows",
            "compact_when_segments_exceed",
            "manifest_merge_fanout",
        )
        return f"RepositoryConfig({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OBJECTS and value is not None and not isinstance(value, _OBJECTS[name]):
            raise InvalidInputError(
                f"RepositoryConfig.{name} must be a {_OBJECTS[name].__name__} (or None), "
                f"got {value!r}"
            )
        if (
            name in _SETTINGS
            and value is not None
            and (not isinstance(value, int) or isinstance(value, bool) or value < 0)
        ):
            raise InvalidInputError(
                f"RepositoryConfig.{name} must be a non-negative int, got {value!r}"
            )
        object.__setattr__(self, name, value)

    def __post_init__(self) -> None:
        for name in _SETTINGS:
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise InvalidInputError(
                    f"RepositoryConfig.{name} must be a non-negative int, got {value!r}"
                )
        if self.manifest_split_rows == 0:
            raise InvalidInputError("RepositoryConfig.manifest_split_rows must be positive")
        if self.compact_when_segments_exceed == 0:
            raise InvalidInputError(
                "RepositoryConfig.compact_when_segments_exceed must be positive (or None)"
            )
        if self.manifest_merge_fanout == 1:
            raise InvalidInputError(
                "RepositoryConfig.manifest_merge_fanout must be at least 2 (or 0: never merge)"
            )
        vcc = self.virtual_chunk_containers
        if vcc is not None:
            if not isinstance(vcc, dict) or not all(
                isinstance(c, VirtualChunkContainer) and k == c.url_prefix for k, c in vcc.items()
            ):
                raise InvalidInputError(
                    "RepositoryConfig.virtual_chunk_containers must map "
                    "url prefixes to their VirtualChunkContainer"
                )
            self.virtual_chunk_containers = dict(vcc)
        if not isinstance(self.extra, dict):
            raise InvalidInputError("RepositoryConfig.extra must be a dict")

    def merge(self, other: RepositoryConfig | None) -> RepositoryConfig:
        """A new config: ``other``'s set fields over this one's."""
        if other is None:
            return dataclasses.replace(self, extra=dict(self.extra))
        values = {
            f.name: getattr(other, f.name)
            if getattr(other, f.name) is not None
            else getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra"
        }
        mine, theirs = self.virtual_chunk_containers, other.virtual_chunk_containers
        if mine is not None and theirs is not None:
            values["virtual_chunk_containers"] = {**mine, **theirs}
        return RepositoryConfig(**values, extra={**self.extra, **other.extra})

    @property
    def inline_threshold(self) -> int:
        v = self.inline_chunk_threshold_bytes
        return DEFAULT_INLINE_THRESHOLD if v is None else v

    @property
    def merge_fanout(self) -> int:
        v = self.manifest_merge_fanout
        return DEFAULT_MERGE_FANOUT if v is None else v

    @property
    def split_rows(self) -> int:
        return self.manifest_split_rows or DEFAULT_MANIFEST_SPLIT_ROWS

    @property
    def region_sizes(self) -> Callable[[NodeRecord], tuple[int, ...] | None] | None:
        """The manifest split sizes of an array (``ManifestSplittingConfig.region_sizes``
        for its path and dimensions), or None when no splitting is configured."""
        splitting = self.manifest.splitting if self.manifest is not None else None
        if splitting is None:
            return None

        def sizes(node: NodeRecord) -> tuple[int, ...] | None:
            try:
                meta = parse_zarr_json(node.zarr_json, node.path)
            except InvalidInputError:
                return None
            return splitting.region_sizes(node.path, meta.ndim, meta.dimension_names)

        return sizes

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for name in _SETTINGS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in _OBJECTS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).to_dict()
        if self.virtual_chunk_containers is not None:
            out[VCC_KEY] = [c.to_dict() for _, c in sorted(self.virtual_chunk_containers.items())]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RepositoryConfig:
        """The config ``to_dict`` gave: ``InvalidInputError`` on wrong values of known
        settings, ``FormatError`` on damaged containers; unknown keys are kept (``extra``)."""
        if not isinstance(d, dict):
            raise InvalidInputError(f"RepositoryConfig.from_dict takes a dict, got {d!r}")
        known = {k: d[k] for k in _SETTINGS if k in d}
        for name, kind in _OBJECTS.items():
            if d.get(name) is not None:
                known[name] = kind.from_dict(d[name])
        extra = {
            k: v for k, v in d.items() if k not in known and k != VCC_KEY and k not in _OBJECTS
        }
        containers = None
        if VCC_KEY in d:
            try:
                containers = {
                    c.url_prefix: c
                    for c in map(VirtualChunkContainer.from_dict, decode_containers(d[VCC_KEY]))
                }
            except (TypeError, KeyError, ValueError) as e:
                raise FormatError(f"config.json: invalid {VCC_KEY} ({e})") from e
        return cls(**known, extra=extra, virtual_chunk_containers=containers)

    # -- virtual chunk containers (Icechunk's names) -----------------------------------------
    def set_virtual_chunk_container(self, container: VirtualChunkContainer) -> None:
        """Declare (or replace, by url prefix) a virtual chunk container."""
        if not isinstance(container, VirtualChunkContainer):
            raise InvalidInputError("set_virtual_chunk_container takes a VirtualChunkContainer")
        if self.virtual_chunk_containers is None:
            self.virtual_chunk_containers = {}
        self.virtual_chunk_containers[container.url_prefix] = container

    def clear_virtual_chunk_containers(self) -> None:
        """Forget every declared container (saved as an empty list)."""
        self.virtual_chunk_containers = {}

    def get_virtual_chunk_container(self, url_prefix: str) -> VirtualChunkContainer | None:
        return (self.virtual_chunk_containers or {}).get(url_prefix)
