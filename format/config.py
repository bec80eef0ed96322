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
