"""Lay out the sources as they are installed (``engine/`` as ``frazil``, ``format/`` as
``frazil.format``, ...) in a tree of symbolic links, so that mypy checks every import
between the layers (it cannot follow setuptools' editable-install mapping).

    python dev/typecheck_tree.py build/typecheck    # then: mypy build/typecheck/frazil
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(out: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shutil.rmtree(out, ignore_errors=True)
    for package, folder in config["package-dir"].items():
        target = out.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted((ROOT / folder).glob("*.py")):
            (target / source.name).symlink_to(source)
        for extra in ("py.typed",):
            if (ROOT / folder / extra).exists():
                (target / extra).symlink_to(ROOT / folder / extra)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "typecheck")
