"""Icechunk's configuration classes (caching, compression, manifests, storage): validated
values that ``RepositoryConfig`` carries and saves in ``config.json`` as JSON."""

from __future__ import annotations

import enum
import json
import re
from typing import Any, ClassVar

from .errors import InvalidInputError

_NONNEG = "a non-negative int"


def _check(owner: str, name: str, value: Any, kind: Any) -> None:
    """Raise InvalidInputError unless ``value`` is None or of ``kind`` (``int`` means a
    non-negative int, not a bool)."""
    if value is None:
        return
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        what = _NONNEG
    else:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        what = getattr(kind, "__name__", str(kind))
    if not ok:
        raise InvalidInputError(f"{owner}.{name} must be {what} (or None), got {value!r}")


def _repr_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


class _Settings:
    """A record of optional fields, each checked on every assignment; equal by value."""

    _fields: ClassVar[dict[str, Any]] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._fields:
            raise InvalidInputError(f"{type(self).__name__} has no setting {name!r}")
        _check(type(self).__name__, name, value, self._fields[name])
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    #: fields left out of ``repr`` while unset (those Icechunk's ``repr`` does not show)
    _quiet: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        """Icechunk's form: every field in order, strings in double quotes."""
        args = ", ".join(
            f"{n}={_repr_value(getattr(self, n))}"
            for n in self._fields
            if not (n in self._quiet and getattr(self, n) is None)
        )
        return f"{type(self).__name__}({args})"

    def to_dict(self) -> dict[str, Any]:
        """The set fields, as JSON values."""
        out: dict[str, Any] = {}
        for name in self._fields:
            value = getattr(self, name)
            if value is not None:
                if hasattr(value, "to_json"):
                    value = value.to_json()
                elif isinstance(value, _Settings):
                    value = value.to_dict()
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Any:
        """The settings ``to_dict`` gave; ``InvalidInputError`` on unknown keys or values."""
        if not isinstance(d, dict):
            raise InvalidInputError(f"{cls.__name__}: expected a JSON object, got {d!r}")
        unknown = set(d) - set(cls._fields)
        if unknown:
            raise InvalidInputError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
        values = {}
        for name, value in d.items():
            kind = cls._fields[name]
            if value is not None and hasattr(kind, "from_json"):
                value = kind.from_json(value)
            elif value is not None and isinstance(kind, type) and issubclass(kind, _Settings):
                value = kind.from_dict(value)
            values[name] = value
        return cls(**values)


class CompressionAlgorithm(enum.Enum):
    """The compression of metadata files (Icechunk: Zstd only)."""

    Zstd = 0

    @staticmethod
    def default() -> CompressionAlgorithm:
        return CompressionAlgorithm.Zstd

    def to_json(self) -> str:
        return self.name

    @staticmethod
    def from_json(value: Any) -> CompressionAlgorithm:
        if value == "Zstd":
            return CompressionAlgorithm.Zstd
        raise InvalidInputError(f"unknown compression algorithm {value!r} (known: 'Zstd')")


class CompressionConfig(_Settings):
    """Compression of metadata files. Accepted and saved; frazil does not use it (its
    manifests and snapshots are Parquet with their own compression)."""

    _fields = {"algorithm": CompressionAlgorithm, "level": int}

    def __init__(
        self, algorithm: CompressionAlgorithm | None = None, level: int | None = None
    ) -> None:
        self.algorithm = algorithm
        self.level = level

    @staticmethod
    def default() -> CompressionConfig:
        return CompressionConfig(CompressionAlgorithm.Zstd, 3)


class CachingConfig(_Settings):
    """Cache sizes. ``num_snapshot_nodes`` bounds the snapshot cache by nodes,
    ``num_chunk_refs`` the manifest segment cache by chunk references and
    ``num_bytes_chunks`` the chunk cache by bytes (None: frazil's own bounds); a warning
    is logged, once, when one object takes much of a cache made small. The other two
    fields are accepted and saved, not used."""

    _fields = {
        "num_snapshot_nodes": int,
        "num_chunk_refs": int,
        "num_transaction_changes": int,
        "num_bytes_attributes": int,
        "num_bytes_chunks": int,
    }

    def __init__(
        self,
        num_snapshot_nodes: int | None = None,
        num_chunk_refs: int | None = None,
        num_transaction_changes: int | None = None,
        num_bytes_attributes: int | None = None,
        num_bytes_chunks: int | None = None,
    ) -> None:
        self.num_snapshot_nodes = num_snapshot_nodes
        self.num_chunk_refs = num_chunk_refs
        self.num_transaction_changes = num_transaction_changes
        self.num_bytes_attributes = num_bytes_attributes
        self.num_bytes_chunks = num_bytes_chunks


class StorageRetriesSettings(_Settings):
    """Retries of failed requests. Accepted and saved; not used (frazil's backends take
    theirs from ``S3Settings`` / ``RetryingStorage``)."""

    _fields = {"max_tries": int, "initial_backoff_ms": int, "max_backoff_ms": int}

    def __init__(
        self,
        max_tries: int | None = None,
        initial_backoff_ms: int | None = None,
        max_backoff_ms: int | None = None,
    ) -> None:
        self.max_tries = max_tries
        self.initial_backoff_ms = initial_backoff_ms
        self.max_backoff_ms = max_backoff_ms


class StorageConcurrencySettings(_Settings):
    """Concurrent requests per object. Accepted and saved; not used."""

    _fields = {"max_concurrent_requests_for_object": int, "ideal_concurrent_request_size": int}

    def __init__(
        self,
        max_concurrent_requests_for_object: int | None = None,
        ideal_concurrent_request_size: int | None = None,
    ) -> None:
        self.max_concurrent_requests_for_object = max_concurrent_requests_for_object
        self.ideal_concurrent_request_size = ideal_concurrent_request_size


class StorageSettings(_Settings):
    """How objects are written. Accepted and saved; not used (frazil's storage takes its
    settings where it is made, e.g. ``s3_storage(settings=S3Settings(...))``)."""

    _fields = {
        "concurrency": StorageConcurrencySettings,
        "retries": StorageRetriesSettings,
        "unsafe_use_conditional_create": bool,
        "unsafe_use_conditional_update": bool,
        "unsafe_use_metadata": bool,
        "storage_class": str,
        "metadata_storage_class": str,
        "chunks_storage_class": str,
        "minimum_size_for_multipart_upload": int,
    }
    _quiet = frozenset({"minimum_size_for_multipart_upload"})

    def __init__(
        self,
        concurrency: StorageConcurrencySettings | None = None,
        retries: StorageRetriesSettings | None = None,
        unsafe_use_conditional_create: bool | None = None,
        unsafe_use_conditional_update: bool | None = None,
        unsafe_use_metadata: bool | None = None,
        storage_class: str | None = None,
        metadata_storage_class: str | None = None,
        chunks_storage_class: str | None = None,
        minimum_size_for_multipart_upload: int | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.retries = retries
        self.unsafe_use_conditional_create = unsafe_use_conditional_create
        self.unsafe_use_conditional_update = unsafe_use_conditional_update
        self.unsafe_use_metadata = unsafe_use_metadata
        self.storage_class = storage_class
        self.metadata_storage_class = metadata_storage_class
        self.chunks_storage_class = chunks_storage_class
        self.minimum_size_for_multipart_upload = minimum_size_for_multipart_upload


# -- conditions -------------------------------------------------------------------------------
class _Condition:
    """A condition tree: (kind, args), JSON as ``[kind, *args]``; equal and hashable by value."""

    _kinds: ClassVar[frozenset[str]] = frozenset()
    __slots__ = ("kind", "args")

    def __init__(self, kind: str, *args: Any) -> None:
        self.kind, self.args = kind, args

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(repr(self.to_json()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.to_json()!r}"

    def to_json(self) -> list[Any]:
        out: list[Any] = [self.kind]
        for a in self.args:
            out.append([c.to_json() for c in a] if isinstance(a, tuple) else a)
        return out

    @classmethod
    def from_json(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value or value[0] not in cls._kinds:
            raise InvalidInputError(f"{cls.__name__}: not a condition: {value!r}")
        kind, args = value[0], value[1:]
        if kind in ("or", "and"):
            if len(args) != 1 or not isinstance(args[0], list):
                raise InvalidInputError(f"{cls.__name__}: not a condition: {value!r}")
            return cls._combine(kind, [cls.from_json(v) for v in args[0]])
        try:
            return getattr(cls, _MAKERS[kind])(*args)
        except TypeError as e:
            raise InvalidInputError(f"{cls.__name__}: not a condition: {value!r}") from e

    @classmethod
    def _combine(cls, kind: str, conditions: Any) -> Any:
        conditions = list(conditions)
        if not all(isinstance(c, cls) for c in conditions):
            raise InvalidInputError(f"{cls.__name__}.{kind}_conditions takes {cls.__name__}s")
        return cls(kind, tuple(conditions))

    @classmethod
    def _regex(cls, kind: str, regex: Any) -> Any:
        if not isinstance(regex, str):
            raise InvalidInputError(f"{cls.__name__}.{kind}: regex must be a str")
        try:
            re.compile(regex)
        except re.error as e:
            raise InvalidInputError(f"{cls.__name__}.{kind}: invalid regex {regex!r}: {e}") from e
        return cls(kind, regex)

    @classmethod
    def or_conditions(cls, conditions: list[Any]) -> Any:
        """Matches if any of ``conditions`` matches."""
        return cls._combine("or", conditions)

    @classmethod
    def and_conditions(cls, conditions: list[Any]) -> Any:
        """Matches if all of ``conditions`` match."""
        return cls._combine("and", conditions)

    @classmethod
    def path_matches(cls, regex: str) -> Any:
        """Matches arrays whose absolute path matches ``regex``."""
        return cls._regex("path_matches", regex)

    @classmethod
    def name_matches(cls, regex: str) -> Any:
        """Matches arrays whose name matches ``regex``."""
        return cls._regex("name_matches", regex)

    def __or__(self, other: Any) -> Any:
        return self._combine("or", [self, other])

    def __and__(self, other: Any) -> Any:
        return self._combine("and", [self, other])


_MAKERS = {
    "path_matches": "path_matches",
    "name_matches": "name_matches",
    "num_refs": "num_refs",
    "true": "true",
    "false": "false",
    "any_array": "AnyArray",
}


class ManifestPreloadCondition(_Condition):
    """When manifests are read at session start (Icechunk). Accepted and saved; not used:
    frazil reads manifest segments when a chunk of their array is read."""

    _kinds = frozenset({"or", "and", "path_matches", "name_matches", "num_refs", "true", "false"})

    @staticmethod
    def num_refs(from_refs: int | None, to_refs: int | None) -> ManifestPreloadCondition:
        """Matches manifests with from_refs <= references < to_refs (None: unbounded)."""
        for v in (from_refs, to_refs):
            _check("ManifestPreloadCondition", "num_refs", v, int)
        return ManifestPreloadCondition("num_refs", from_refs, to_refs)

    @staticmethod
    def true() -> ManifestPreloadCondition:
        return ManifestPreloadCondition("true")

    @staticmethod
    def false() -> ManifestPreloadCondition:
        return ManifestPreloadCondition("false")


class ManifestSplitCondition(_Condition):
    """Which arrays a manifest split size applies to."""

    _kinds = frozenset({"or", "and", "path_matches", "name_matches", "any_array"})

    def matches(self, path: str) -> bool:
        """Whether the array at absolute ``path`` matches (regexes match anywhere in the
        path or the name, as Icechunk's)."""
        kind, args = self.kind, self.args
        if kind == "any_array":
            return True
        if kind == "path_matches":
            return re.search(args[0], path) is not None
        if kind == "name_matches":
            return re.search(args[0], path.rsplit("/", 1)[-1]) is not None
        parts = [c.matches(path) for c in args[0]]
        return any(parts) if kind == "or" else all(parts)

    @staticmethod
    def AnyArray() -> ManifestSplitCondition:  # noqa: N802 - Icechunk's name
        """Matches every array."""
        return ManifestSplitCondition("any_array")


class _DimCondition:
    kind: ClassVar[str]
    arg: Any = None

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.arg == other.arg

    def __hash__(self) -> int:
        return hash((self.kind, self.arg))

    def __repr__(self) -> str:
        return f"ManifestSplitDimCondition.{type(self).__name__}({self.arg!r})"

    def to_json(self) -> list[Any]:
        return [self.kind] if self.arg is None else [self.kind, self.arg]


class ManifestSplitDimCondition:
    """Which dimension of an array a split size applies to."""

    class Axis(_DimCondition):
        """The dimension at integer ``axis``."""

        kind = "axis"

        def __init__(self, axis: int) -> None:
            _check("ManifestSplitDimCondition", "Axis", axis, int)
            if axis is None:
                raise InvalidInputError("ManifestSplitDimCondition.Axis needs an axis")
            self.arg = axis

    class DimensionName(_DimCondition):
        """Dimensions whose name matches ``regex``."""

        kind = "dimension_name"

        def __init__(self, regex: str) -> None:
            if not isinstance(regex, str):
                raise InvalidInputError("ManifestSplitDimCondition.DimensionName takes a regex")
            self.arg = regex

    class Any(_DimCondition):
        """Every dimension not named by another condition."""

        kind = "any"

        def __init__(self) -> None:
            self.arg = None

    @staticmethod
    def from_json(value: Any) -> _DimCondition:
        makers = {
            "axis": ManifestSplitDimCondition.Axis,
            "dimension_name": ManifestSplitDimCondition.DimensionName,
            "any": ManifestSplitDimCondition.Any,
        }
        if not isinstance(value, list) or not value or value[0] not in makers:
            raise InvalidInputError(f"not a ManifestSplitDimCondition: {value!r}")
        try:
            return makers[value[0]](*value[1:])
        except TypeError as e:
            raise InvalidInputError(f"not a ManifestSplitDimCondition: {value!r}") from e


SplitSizes = tuple[tuple[ManifestSplitCondition, tuple[tuple[Any, int], ...]], ...]
SplitSizesDict = dict[ManifestSplitCondition, dict[Any, int]]


class ManifestPreloadConfig(_Settings):
    """Manifest preloading (Icechunk). Accepted and saved; not used."""

    _fields = {"max_total_refs": int, "preload_if": ManifestPreloadCondition}

    def __init__(
        self,
        max_total_refs: int | None = None,
        preload_if: ManifestPreloadCondition | None = None,
    ) -> None:
        self.max_total_refs = max_total_refs
        self.preload_if = preload_if


class ManifestSplittingConfig:
    """Manifest split sizes per array condition and dimension (Icechunk).

    The first entry whose condition matches an array gives its split sizes, in chunks
    per dimension (``region_sizes``); a commit writes what it changed in such an array as
    one manifest segment (one object) per region of the chunk grid those sizes cut, and
    the merge policy merges segments only within a region (segments also stay within
    ``RepositoryConfig.manifest_split_rows`` references)."""

    def __init__(self, split_sizes: SplitSizes) -> None:
        self.split_sizes = split_sizes

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "split_sizes":
            raise InvalidInputError(f"ManifestSplittingConfig has no setting {name!r}")
        object.__setattr__(self, name, _check_split_sizes(value))

    @staticmethod
    def from_dict(split_sizes: SplitSizesDict) -> ManifestSplittingConfig:
        if not isinstance(split_sizes, dict) or not all(
            isinstance(v, dict) for v in split_sizes.values()
        ):
            raise InvalidInputError(
                "ManifestSplittingConfig.from_dict takes {condition: {dim condition: size}}"
            )
        return ManifestSplittingConfig(
            tuple((c, tuple(dims.items())) for c, dims in split_sizes.items())
        )

    def to_dict(self) -> SplitSizesDict:
        """Icechunk's form: {condition: {dim condition: size}}."""
        return {c: dict(dims) for c, dims in self.split_sizes}

    def to_json(self) -> list[Any]:
        return [[c.to_json(), [[d.to_json(), n] for d, n in dims]] for c, dims in self.split_sizes]

    @staticmethod
    def from_json(value: Any) -> ManifestSplittingConfig:
        try:
            return ManifestSplittingConfig(
                tuple(
                    (
                        ManifestSplitCondition.from_json(c),
                        tuple((ManifestSplitDimCondition.from_json(d), n) for d, n in dims),
                    )
                    for c, dims in value
                )
            )
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"ManifestSplittingConfig: invalid {value!r}") from e

    def region_sizes(
        self, path: str, ndim: int, dimension_names: tuple[str | None, ...] | None
    ) -> tuple[int, ...] | None:
        """Split sizes (chunks per region, per dimension; 0 where a dimension is not
        split) for the array at ``path``, or None if no entry matches it or splits any of
        its dimensions. Within an entry, the first dimension condition naming a dimension
        wins (``Any()`` names those still unnamed)."""
        for condition, dims in self.split_sizes:
            if not condition.matches(path):
                continue
            sizes = [0] * ndim
            for dim, n in dims:
                for axis in range(ndim):
                    if sizes[axis]:
                        continue
                    if isinstance(dim, ManifestSplitDimCondition.Axis):
                        hit = dim.arg == axis
                    elif isinstance(dim, ManifestSplitDimCondition.DimensionName):
                        name = dimension_names[axis] if dimension_names else None
                        hit = name is not None and re.search(dim.arg, name) is not None
                    else:
                        hit = True
                    if hit:
                        sizes[axis] = n
            return tuple(sizes) if any(sizes) else None
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ManifestSplittingConfig) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ManifestSplittingConfig({self.split_sizes!r})"


def _check_split_sizes(value: Any) -> SplitSizes:
    bad = InvalidInputError(
        "ManifestSplittingConfig.split_sizes must be a tuple of (ManifestSplitCondition, "
        f"((ManifestSplitDimCondition, size >= 1), ...)) pairs, got {value!r}"
    )
    if not isinstance(value, tuple | list):
        raise bad
    out = []
    for entry in value:
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise bad
        condition, dims = entry
        if not isinstance(condition, ManifestSplitCondition) or not isinstance(dims, tuple | list):
            raise bad
        pairs = []
        for pair in dims:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise bad
            dim, size = pair
            if not isinstance(dim, _DimCondition) or not (
                isinstance(size, int) and not isinstance(size, bool) and size >= 1
            ):
                raise bad
            pairs.append((dim, size))
        out.append((condition, tuple(pairs)))
    return tuple(out)


class ManifestConfig(_Settings):
    """How manifests are preloaded (not used) and split (see ``ManifestSplittingConfig``)."""

    _fields = {"preload": ManifestPreloadConfig, "splitting": ManifestSplittingConfig}

    def __init__(
        self,
        preload: ManifestPreloadConfig | None = None,
        splitting: ManifestSplittingConfig | None = None,
    ) -> None:
        self.preload = preload
        self.splitting = splitting


def from_dict(split_sizes: SplitSizesDict) -> ManifestSplittingConfig:
    """Icechunk's module-level ``from_dict``: ``ManifestSplittingConfig.from_dict``."""
    return ManifestSplittingConfig.from_dict(split_sizes)


def to_dict(config: ManifestSplittingConfig) -> SplitSizesDict:
    """Icechunk's module-level ``to_dict``: a splitting config as
    {condition: {dim condition: size}}."""
    if not isinstance(config, ManifestSplittingConfig):
        raise InvalidInputError("to_dict takes a ManifestSplittingConfig")
    return config.to_dict()
