#!/usr/bin/env python3
"""Save a voice's conditioning latents as a .pth; the same as ``tortoise-get-conditioning-latents``."""
import sys

from tortoise.get_conditioning_latents import main

if __name__ == "__main__":
    sys.exit(main())
