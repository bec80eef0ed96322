"""Makes a Python process look like Windows to frazil: ``import fcntl`` fails and there is no
``os.fork`` nor ``os.register_at_fork``. Not a test module: tests/test_portability.py puts
this folder first on ``PYTHONPATH``, so that every process it starts, and every process
those start by spawn (multiprocessing's workers too), loads this before anything else."""

import os
import sys

sys.modules["fcntl"] = None  # type: ignore[assignment]  # `import fcntl` raises ImportError
for _name in ("fork", "forkpty", "register_at_fork"):
    if hasattr(os, _name):
        delattr(os, _name)
