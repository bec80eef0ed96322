"""The repository config document ``config.json``: settings kept with the repository.

Unknown keys are kept as they are, so an older frazil does not drop settings a newer
one wrote (their meaning is the newer version's to define).
"""

from __future__ import annotations

from typing import Any

from .common import CONFIG, decode_json, encode_json


def encode_config(settings: dict[str, Any]) -> bytes:
    return encode_json({"format_version": 1, "object_type": CONFIG, **settings})


def decode_config(data: bytes, what: str = "config.json") -> dict[str, Any]:
    obj = decode_json(data, CONFIG, what)
    return {k: v for k, v in obj.items() if k not in ("format_version", "object_type")}


_STORE_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "s3": {
        "region": (str, type(None)),
        "endpoint_url": (str, type(None)),
        "allow_http": (bool,),
        "anonymous": (bool,),
        "force_path_style": (bool,),
    },
    "gcs": {"opts": (dict,)},
    "azure": {"opts": (dict,)},
    "http": {"opts": (dict,)},
    "local": {"path": (str,)},
}


def decode_containers(value: Any) -> list[dict[str, Any]]:
    """Check the shape of the config's ``virtual_chunk_containers`` list (§7 of SPEC.md):
    each item ``{"url_prefix": str, "store": {"type": ..., <that type's fields>}}``, with
    distinct prefixes. Raises ValueError naming what is wrong."""
    if not isinstance(value, list):
        raise ValueError("virtual_chunk_containers must be a list")
    seen: set[str] = set()
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("url_prefix"), str):
            raise ValueError(f"container {item!r} has no url_prefix")
        store: Any = item.get("store")
        fields = _STORE_FIELDS.get(str(store.get("type"))) if isinstance(store, dict) else None
        if fields is None:
            raise ValueError(f"container {item['url_prefix']!r} has an unknown store")
        for name, value_types in fields.items():
            if name in store and not isinstance(store[name], value_types):
                raise ValueError(
                    f"container {item['url_prefix']!r}: store field {name!r} has the wrong type"
                )
        if set(store) - set(fields) - {"type"}:
            raise ValueError(
                f"container {item['url_prefix']!r}: unknown store fields "
                f"{sorted(set(store) - set(fields) - {'type'})}"
            )
        if item["url_prefix"] in seen:
            raise ValueError(f"container {item['url_prefix']!r} is declared twice")
        seen.add(item["url_prefix"])
    return value
