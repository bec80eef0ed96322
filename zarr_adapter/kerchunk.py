"""Importing kerchunk reference sets: their zarr v2 hierarchy becomes zarr v3 groups and
arrays in a frazil session, their chunk references virtual refs, staged in bulk.

How kerchunk's locations become frazil's URLs (frazil stores only URLs):

* a location with a scheme (``s3://…``, ``https://…``, ``file:///…``) is kept as it is;
* a bare absolute path (``/data/a.nc``, as kerchunk writes for local files) is the
  ``file://`` URL of that path;
* a relative path (``a.nc``) is joined to ``base`` (a URL or an absolute directory) when
  one is given, and refused otherwise, naming the reference: frazil never guesses from
  the current directory.

Every resulting URL must still fall under a declared virtual chunk container (as for
``set_virtual_refs``). A reference kerchunk stores inline (its bytes in the JSON, plain
or ``base64:``) becomes a chunk written into the session. A reference to a whole file
(``[url]`` with no offset and length) is refused: its length would have to be guessed.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import numpy as np
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata.v2 import ArrayV2Metadata
from zarr.core.metadata.v3 import ArrayV3Metadata

from frazil.errors import InvalidInputError
from frazil.session import Session

_META = (".zarray", ".zattrs", ".zgroup", ".zmetadata")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DIMS = "_ARRAY_DIMENSIONS"


def kerchunk_url(location: str, base: str | None = None, *, key: str = "") -> str:
    """The URL frazil stores for kerchunk's ``location`` (rules in the module docstring)."""
    where = f" (reference {key!r})" if key else ""
    if not isinstance(location, str) or not location:
        raise InvalidInputError(f"kerchunk location {location!r}{where} is not a path or URL")
    if _SCHEME.match(location):
        return location
    if location.startswith("/"):
        return "file://" + quote(posixpath.normpath(location), safe="/")
    if base is None:
        raise InvalidInputError(
            f"kerchunk location {location!r}{where} is a relative path; pass base= (the "
            "URL or absolute directory it is relative to): frazil does not resolve it "
            "against the current directory"
        )
    root = base if _SCHEME.match(base) else kerchunk_url(base)
    return root.rstrip("/") + "/" + quote(location.lstrip("./"), safe="/")


def _refs(source: Any) -> dict[str, Any]:
    if isinstance(source, (str, bytes)):
        try:
            source = json.loads(source)
        except ValueError as e:
            raise InvalidInputError(f"kerchunk references: not JSON: {e}") from None
    if not isinstance(source, Mapping):
        raise InvalidInputError("kerchunk references must be a dict (or its JSON text)")
    if "refs" in source and isinstance(source.get("refs"), Mapping):
        version = source.get("version")
        if version not in (None, 1):
            raise InvalidInputError(f"kerchunk reference version {version!r} is not supported")
        if source.get("templates") or source.get("gen"):
            raise InvalidInputError(
                "kerchunk references with templates or generators are not supported: "
                "expand them first (kerchunk.utils.consolidate / fsspec's ReferenceFileSystem)"
            )
        return dict(source["refs"])
    return dict(source)


def _json(value: Any, key: str) -> dict[str, Any]:
    try:
        doc = json.loads(value) if isinstance(value, (str, bytes)) else value
    except ValueError as e:
        raise InvalidInputError(f"kerchunk {key!r}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInputError(f"kerchunk {key!r}: a JSON object expected")
    return doc


def _v3_codec(config: dict[str, Any], key: str) -> Any:
    """zarr's v3 wrapper of the numcodecs codec ``config`` (``{"id": ..., ...}``)."""
    from zarr.registry import get_codec_class

    cid = config.get("id") if isinstance(config, dict) else None
    if not isinstance(cid, str):
        raise InvalidInputError(f"kerchunk {key!r}: codec {config!r} has no id")
    try:
        cls = get_codec_class(f"numcodecs.{cid}")
    except KeyError:
        raise InvalidInputError(f"kerchunk {key!r}: no zarr v3 codec for {cid!r}") from None
    conf = {k: v for k, v in config.items() if k != "id"}
    return cls.from_dict({"name": f"numcodecs.{cid}", "configuration": conf})


def _v3_array(zarray: dict[str, Any], attrs: dict[str, Any], key: str) -> ArrayV3Metadata:
    """zarr v3 metadata for a v2 ``.zarray``: its filters and compressor become numcodecs'
    zarr v3 codecs, array-to-array ones before the bytes codec, bytes-to-bytes ones after
    it, in kerchunk's order (kerchunk lists HDF5's shuffle and deflate as filters)."""
    from zarr.abc.codec import ArrayArrayCodec, BytesBytesCodec
    from zarr.codecs import BytesCodec, TransposeCodec

    attrs = dict(attrs)
    dims = attrs.pop(_DIMS, None)
    try:
        v2 = ArrayV2Metadata.from_dict({**zarray, "filters": None, "compressor": None})
    except (TypeError, ValueError, KeyError) as e:
        raise InvalidInputError(f"kerchunk {key!r}: not a zarr v2 array: {e}") from None
    configs = list(zarray.get("filters") or [])
    if zarray.get("compressor") is not None:
        configs.append(zarray["compressor"])
    before: list[Any] = []
    after: list[Any] = []
    if v2.order == "F":
        before.append(TransposeCodec(order=list(range(len(v2.shape) - 1, -1, -1))))
    for config in configs:
        codec = _v3_codec(config, key)
        if isinstance(codec, ArrayArrayCodec) and not after:
            before.append(codec)
        elif isinstance(codec, BytesBytesCodec):
            after.append(codec)
        else:
            raise InvalidInputError(
                f"kerchunk {key!r}: codec {config!r} cannot be placed in a zarr v3 pipeline"
            )
    endian = getattr(v2.dtype, "endianness", None)
    try:
        return ArrayV3Metadata(
            shape=v2.shape,
            data_type=v2.dtype,
            chunk_grid=v2.chunk_grid,
            chunk_key_encoding={"name": "default", "configuration": {"separator": "/"}},
            fill_value=v2.fill_value if v2.fill_value is not None else v2.dtype.default_scalar(),
            codecs=[*before, BytesCodec(endian=endian), *after],
            attributes=attrs,
            dimension_names=dims if isinstance(dims, list) else None,
            storage_transformers=None,
        )
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"kerchunk {key!r}: cannot convert to zarr v3: {e}") from None


def import_kerchunk(
    session: Session,
    references: Any,
    *,
    path: str = "",
    base: str | None = None,
    validate_containers: bool = True,
) -> dict[str, int]:
    """Write the hierarchy of a kerchunk reference set (a dict, version 0 or 1, or its
    JSON text) into ``session`` under group ``path``: groups and arrays become zarr v3
    nodes, chunk references virtual refs staged in bulk per array (one
    ``set_virtual_refs_arrays`` call each), inline chunks ordinary chunks. Returns the
    number of virtual refs staged per array path. Locations become URLs by the rules of
    this module's docstring; with ``validate_containers`` a location under no declared
    container refuses the whole import before anything is staged for that array."""
    refs = _refs(references)
    prefix = path.strip("/")
    store = session.store
    proto = default_buffer_prototype()

    def node(p: str) -> str:
        return "/".join(x for x in (prefix, p) if x)

    arrays: dict[str, ArrayV3Metadata] = {}
    separators: dict[str, str] = {}
    groups: set[str] = set()
    for key, value in refs.items():
        folder, _, name = key.rpartition("/")
        if name == ".zarray":
            attrs = _json(refs.get(f"{folder}/.zattrs" if folder else ".zattrs", "{}"), key)
            zarray = _json(value, key)
            arrays[folder] = _v3_array(zarray, attrs, key)
            separators[folder] = zarray.get("dimension_separator") or "."
        elif name == ".zgroup":
            groups.add(folder)
    for g in sorted(groups | {""}):
        attrs = _json(refs.get(f"{g}/.zattrs" if g else ".zattrs", "{}"), f"{g}/.zattrs")
        doc = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
        key = f"{node(g)}/zarr.json" if node(g) else "zarr.json"
        _set(store, key, json.dumps(doc).encode(), proto)
    for a, meta in arrays.items():
        buf = meta.to_buffer_dict(proto)["zarr.json"].to_bytes()
        _set(store, f"{node(a)}/zarr.json", buf, proto)

    # kerchunk's references are a Python dict of lists: reading them is one pass in Python;
    # staging is one bulk call per array
    by_array: dict[str, list[tuple[str, Any]]] = {}
    for key, value in refs.items():
        folder, _, name = key.rpartition("/")
        if name in _META or folder not in arrays:
            continue
        by_array.setdefault(folder, []).append((name, value))
    staged: dict[str, int] = {}
    for a, items in by_array.items():
        meta = arrays[a]
        ndim = len(meta.shape)
        sep = separators[a]
        coords = np.zeros((len(items), ndim), np.int64)
        virtual = np.zeros(len(items), bool)
        locations: list[str | None] = [None] * len(items)
        offsets = np.zeros(len(items), np.int64)
        lengths = np.zeros(len(items), np.int64)
        for i, (name, value) in enumerate(items):
            parts = name.split(sep) if ndim else []
            if len(parts) != ndim or not all(p.isdigit() for p in parts):
                raise InvalidInputError(
                    f"kerchunk {a}/{name!r}: not a chunk key of a {ndim}-d array"
                )
            coords[i] = [int(p) for p in parts]
            if isinstance(value, (str, bytes)):  # inline bytes
                data = value.encode() if isinstance(value, str) else value
                if data.startswith(b"base64:"):
                    data = base64.b64decode(data[len(b"base64:") :])
                key = f"{node(a)}/c/" + "/".join(parts) if ndim else f"{node(a)}/c"
                _set(store, key, data, proto)
                continue
            if not isinstance(value, (list, tuple)) or len(value) not in (1, 3):
                raise InvalidInputError(
                    f"kerchunk {a}/{name!r}: a reference is [url, offset, length], got {value!r}"
                )
            if len(value) == 1:
                raise InvalidInputError(
                    f"kerchunk {a}/{name!r} references the whole file {value[0]!r} with no "
                    "length; give [url, offset, length]"
                )
            locations[i] = kerchunk_url(value[0], base, key=f"{a}/{name}")
            offsets[i], lengths[i] = int(value[1]), int(value[2])
            virtual[i] = True
        if virtual.any():
            staged[node(a) or "/"] = session.set_virtual_refs_arrays(
                node(a),
                [loc for loc, v in zip(locations, virtual) if v],
                offsets[virtual],
                lengths[virtual],
                indices=coords[virtual],
                validate_containers=validate_containers,
            )
    return staged


def _set(store: Any, key: str, data: bytes, proto: Any) -> None:
    from zarr.core.sync import sync

    sync(store.set(key, proto.buffer.from_bytes(data)))
