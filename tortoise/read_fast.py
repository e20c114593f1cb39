"""The original Tortoise's ``python tortoise/read_fast.py``, with its flags and file names, on this package's render
loop (:mod:`tortoise.original_scripts` says what it writes and what differs). Also ``python -m tortoise.read_fast``."""
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file: Python put tortoise/ itself first on sys.path, where this package's modules (api, utils, ...)
    # would shadow top-level names; the directory above it (the checkout) takes its place, so `tortoise` imports.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tortoise.original_scripts import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("read_fast"))
