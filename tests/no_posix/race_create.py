"""One contender of tests/test_portability.py's races: waits for a line on stdin, then
creates each key with its own bytes (``put_if_absent``) and prints one JSON line per key:
whether it won and the version it was given; then adds one to the counter at ``counter``
``increments`` times by compare-and-swap (``put_if_version``, under the ref lock). Its first
line says what this process can import (to show the test that the Windows-like set-up is
in force)."""

import asyncio
import json
import os
import sys

from frazil.storage import local_filesystem_storage


async def contend(root: str, keys: list[str], me: str, increments: int) -> None:
    storage = local_filesystem_storage(root)
    for key in keys:
        got = await storage.put_if_absent(key, f"{me} {key}".encode())
        print(json.dumps({"key": key, "won": got.ok, "version": got.version}), flush=True)
    for _ in range(increments):
        while True:
            data, version = await storage.get_with_version("counter")
            if (await storage.put_if_version("counter", b"%d" % (int(data) + 1), version)).ok:
                break


def main() -> None:
    root, me, n, increments = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    try:
        import fcntl  # noqa: F401

        has_fcntl = True
    except ImportError:
        has_fcntl = False
    print(json.dumps({"fcntl": has_fcntl, "fork": hasattr(os, "register_at_fork")}), flush=True)
    sys.stdin.readline()  # the start signal: every contender is ready when it comes
    keys = [f"refs/tag.t{i}/ref.json" for i in range(n)]
    asyncio.run(contend(root, keys, me, increments))


if __name__ == "__main__":
    main()
