"""Tortoise on a Ray cluster: a book read by a pool of actors (:mod:`tortoise.distributed.reader`) and the speech
server as a Ray Serve deployment (:mod:`tortoise.distributed.serve`).

Ray is the optional extra ``ray`` (``pip install -e '.[ray]'`` in a checkout); nothing here imports it until it is
used, so the package imports without it.
"""
from tortoise.utils.errors import install_hint


class RayUnavailable(ImportError):
    """Ray (or Ray Serve) is not installed; the message says what to install."""


def require_ray(serve=False):
    """The ``ray`` module (``ray.serve`` with ``serve=True``), or :class:`RayUnavailable` in one line."""
    try:
        import ray
        if serve:
            from ray import serve as ray_serve
            return ray_serve
    except ImportError as e:
        what = "Ray Serve" if serve else "Ray"
        raise RayUnavailable(f"{what} is not installed (no module {e.name or '?'}): {install_hint('ray')}") from None
    return ray
