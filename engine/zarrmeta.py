"""The few facts the engine needs from a node's ``zarr.json``: type, chunk grid, key encoding."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from frazil.format import ARRAY, GROUP, FormatError
from frazil.format.common import load_json

from .errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class NodeMeta:
    node_type: str
    ndim: int = 0
    grid: tuple[int, ...] | None = None  # chunks per dimension (regular grids only)
    key_encoding: str = "default"
    separator: str = "/"
    dimension_names: tuple[str | None, ...] | None = None


@lru_cache(maxsize=4096)
def parse_zarr_json(data: bytes, path: str) -> NodeMeta:
    """Validate a zarr.json document for ``path``; refuses anything that is not Zarr v3."""
    try:
        doc = load_json(data, f"zarr.json for {path!r}")
    except FormatError as e:
        raise InvalidInputError(str(e)) from None
    if not isinstance(doc, dict):
        raise InvalidInputError(f"zarr.json for {path!r} must be a JSON object")
    if doc.get("zarr_format") != 3:
        raise InvalidInputError(
            f"zarr.json for {path!r}: only zarr_format 3 is supported, "
            f"got {doc.get('zarr_format')!r}"
        )
    node_type = doc.get("node_type")
    if node_type == GROUP:
        return NodeMeta(GROUP)
    if node_type != ARRAY:
        raise InvalidInputError(
            f"zarr.json for {path!r}: node_type must be 'group' or 'array', got {node_type!r}"
        )
    shape = doc.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise InvalidInputError(f"zarr.json for {path!r}: invalid shape {shape!r}")
    grid = None
    cg = doc.get("chunk_grid") or {}
    if isinstance(cg, dict) and cg.get("name") == "regular":
        chunk_shape = (cg.get("configuration") or {}).get("chunk_shape")
        if (
            isinstance(chunk_shape, list)
            and len(chunk_shape) == len(shape)
            and all(isinstance(c, int) and c > 0 for c in chunk_shape)
        ):
            grid = tuple(-(-s // c) for s, c in zip(shape, chunk_shape))
    cke = doc.get("chunk_key_encoding") or {"name": "default"}
    name = cke.get("name", "default") if isinstance(cke, dict) else "default"
    conf = (cke.get("configuration") or {}) if isinstance(cke, dict) else {}
    sep = conf.get("separator", "/" if name == "default" else ".")
    if name not in ("default", "v2") or sep not in ("/", "."):
        raise InvalidInputError(f"zarr.json for {path!r}: unsupported chunk_key_encoding {cke!r}")
    names = doc.get("dimension_names")
    dims = (
        tuple(n if isinstance(n, str) else None for n in names)
        if isinstance(names, list) and len(names) == len(shape)
        else None
    )
    return NodeMeta(ARRAY, len(shape), grid, name, sep, dims)
