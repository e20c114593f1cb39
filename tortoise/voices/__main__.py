"""``python -m tortoise.voices``: the ``tortoise-voices`` command."""
import sys

from tortoise.voices.cli import main

if __name__ == "__main__":
    sys.exit(main())
