"""Voices: the package's own voices directory, the original Tortoise voices on request, and the catalog of voices.

This directory is also a voices directory (a subdirectory per voice; it ships no recordings, see README.md).
The original Tortoise voices (``tom``, ``emma``, the ``train_*`` voices, ...) are not part of this package: the
``tortoise-voices fetch`` command (``python -m tortoise.voices fetch``) downloads them from the original's public
package on request (:mod:`tortoise.utils.original_voices`); :mod:`tortoise.voices.catalog` lists every voice found.
Importing this package does nothing else.
"""
