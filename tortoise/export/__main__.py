"""``python -m tortoise.export``: the same as the ``tortoise-export`` command."""
import sys

from tortoise.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
