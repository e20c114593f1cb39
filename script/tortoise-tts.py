#!/usr/bin/env python3
"""Command line for Tortoise text to speech; the same as the installed ``tortoise-tts`` command.

    python script/tortoise-tts.py --help
"""
import sys

from tortoise.cli import main

if __name__ == "__main__":
    sys.exit(main())
