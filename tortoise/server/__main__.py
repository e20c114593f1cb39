"""``python -m tortoise.server``: the same as ``tortoise-server``."""
import sys

from tortoise.server import main

if __name__ == "__main__":
    sys.exit(main())
