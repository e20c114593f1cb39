"""The speech server on a Ray cluster (``tortoise-server --ray``): a Ray Serve deployment whose replicas each run the
speech server's FastAPI application with models of their own, one replica per GPU, behind Serve's HTTP proxy.

The deployment wraps an *app builder*: a picklable callable of no arguments that returns the ASGI application (the
speech server's, e.g. ``functools.partial(build_app, args)``). Serve evaluates it on each replica as the replica
starts (``serve.ingress(builder)``), so every replica loads its models on its own GPU and no model is ever loaded or
pickled on the driver. ``max_ongoing_requests`` bounds the requests Serve sends to one replica at once (default 2: one
generating, one ready to start); the rest wait in Serve's queue, at most ``max_queued_requests`` of them (beyond that
Serve answers 503), and go to whichever replica frees first.

Replicas: one per GPU (``num_gpus=1``; more replicas than GPUs share them), or on a cluster without GPUs one per CPU
(:func:`tortoise.distributed.reader.actor_layout`, the reader's layout); CPU replicas are told ``TORTOISE_DEVICE=cpu``
and their share of torch threads.
"""
import signal
import threading
from dataclasses import dataclass

from tortoise.distributed import require_ray
from tortoise.distributed.reader import RayOptions, actor_layout, connect
from tortoise.flags import UsageError

DEPLOYMENT = "tortoise-speech"
DEFAULT_MAX_ONGOING = 2


@dataclass(frozen=True)
class ServeOptions:
    """How the speech server is deployed: ``replicas`` (None: one per GPU, else one per CPU), the bounds of Serve's
    routing (``max_ongoing_requests`` per replica, ``max_queued_requests`` waiting in all, -1 for no bound), where
    Serve's HTTP proxy listens, and the cluster (``address``: None starts a local one)."""
    address: str = None
    replicas: int = None
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING
    max_queued_requests: int = -1
    host: str = "127.0.0.1"
    port: int = 8000
    gpus: bool = None
    threads: int = None
    quiet: bool = False

    def __post_init__(self):
        if self.replicas is not None and self.replicas < 1:
            raise ValueError("--ray_replicas must be at least 1")
        if self.max_ongoing_requests < 1:
            raise ValueError("--max_ongoing_requests must be at least 1")
        if self.max_queued_requests < -1:
            raise ValueError("--max_queued_requests must be -1 (no bound) or more")


def add_arguments(group):
    """``tortoise-server``'s Ray options, added to an argparse group: ``--ray [ADDRESS]``, ``--ray_replicas N``,
    ``--max_ongoing_requests N``, ``--max_queued_requests N``."""
    group.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="serve through Ray Serve, one replica per GPU: on a new local cluster, or the one at "
                            "ADDRESS (HOST:PORT, ray://HOST:PORT, auto); --host/--port are then Serve's HTTP proxy")
    group.add_argument("--ray_replicas", "--ray-replicas", type=int, default=None, metavar="N",
                       help="replicas, each with its own models (default: one per GPU, else one per CPU)")
    group.add_argument("--max_ongoing_requests", "--max-ongoing-requests", type=int, default=DEFAULT_MAX_ONGOING,
                       metavar="N", help=f"requests Serve sends one replica at once (default {DEFAULT_MAX_ONGOING})")
    group.add_argument("--max_queued_requests", "--max-queued-requests", type=int, default=-1, metavar="N",
                       help="requests waiting in Serve for a replica; more get 503 (default -1: no bound)")


def options_from_args(args, host="127.0.0.1", port=8000):
    """:class:`ServeOptions` of :func:`add_arguments`' flags (plus ``args.host`` / ``args.port`` when present),
    checked before anything starts; bad values, or Ray Serve not installed, raise the command line's
    :class:`tortoise.flags.UsageError` (one line, exit 2)."""
    from tortoise.distributed import RayUnavailable
    from tortoise.distributed.reader import check_address
    if args.ray is None:
        if args.ray_replicas is not None:
            raise UsageError("--ray_replicas needs --ray (serve through Ray Serve)")
        return None
    try:
        require_ray(serve=True)
        return ServeOptions(check_address(args.ray), args.ray_replicas, args.max_ongoing_requests,
                            args.max_queued_requests, getattr(args, "host", host), getattr(args, "port", port))
    except (ValueError, RayUnavailable) as e:
        raise UsageError(str(e)) from None


class SpeechReplica:
    """One replica of the speech server; its routes are those of the application the builder returns (Serve's
    ``ingress`` adds them)."""


def _build_on_replica(app_builder, threads):
    """Runs on the replica as it starts: its share of CPU threads, then the application (which loads the models)."""
    if threads:
        import torch
        torch.set_num_threads(threads)
    return app_builder()


def speech_deployment(app_builder, resources, options=ServeOptions()):
    """The bound Serve application: ``options.replicas`` (or one per GPU / CPU of ``resources``) replicas of the app
    ``app_builder()`` builds on each replica."""
    serve = require_ray(serve=True)
    count, actor_resources, threads = actor_layout(resources, options.replicas, options.gpus, options.threads)
    actor_options = dict(actor_resources)
    if "num_gpus" not in actor_resources:
        actor_options["runtime_env"] = {"env_vars": {"TORTOISE_DEVICE": "cpu"}}
    def build():  # Serve takes a builder only when it is a plain function (inspect.isfunction), not a partial
        return _build_on_replica(app_builder, threads)

    ingress = serve.ingress(build)(SpeechReplica)
    deployment = serve.deployment(ingress, name=DEPLOYMENT, num_replicas=count,
                                  max_ongoing_requests=options.max_ongoing_requests,
                                  max_queued_requests=options.max_queued_requests, ray_actor_options=actor_options)
    return deployment.bind(), count, actor_resources


def start(app_builder, options=ServeOptions(), say=None):
    """Connect to (or start) the cluster, start Serve's HTTP proxy on ``options.host:port`` and deploy the speech
    server; returns once every replica has started (their models may still be loading: ``GET /ready``)."""
    say = say or (lambda message: None)
    ray = connect(RayOptions(options.address, quiet=options.quiet))
    serve = require_ray(serve=True)
    app, count, resources = speech_deployment(app_builder, ray.cluster_resources(), options)
    serve.start(http_options={"host": options.host, "port": options.port})
    per = ", ".join(f"{v:g} {k[4:-1].upper()}" for k, v in resources.items())
    say(f"Ray Serve: {count} replica(s) of {per} each, at most {options.max_ongoing_requests} request(s) at once "
        f"per replica; starting...")
    try:
        serve.run(app, name=DEPLOYMENT, route_prefix="/", blocking=False)
    except RuntimeError as e:  # Serve gave up on the replicas (their builder raised, every retry)
        reason = _replica_error(serve) or " ".join(str(e).split())
        serve.shutdown()
        raise ServeFailed(f"the speech server did not start on Ray: {reason}") from None
    say(f"Serving on http://{options.host}:{options.port} through Ray Serve (Ctrl-C stops it)")
    return serve


class ServeFailed(RuntimeError):
    """The deployment did not start; the message is one line with the replicas' own error."""


def _replica_error(serve):
    """The last line of the error Serve recorded for the deployment's replicas (e.g. ``CheckpointError: ...``)."""
    try:
        deployments = serve.status().applications[DEPLOYMENT].deployments
        message = deployments[DEPLOYMENT].message
    except Exception:  # noqa: BLE001 - no status to read: the caller falls back to Serve's own message
        return None
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1][:400] if lines else None


def run(app_builder, options=ServeOptions(), say=None, stop=None):
    """:func:`start`, then serve until SIGINT / SIGTERM (or until ``stop``, a :class:`threading.Event`, is set), then
    shut Serve down. Returns 0."""
    stop = stop or threading.Event()
    serve = start(app_builder, options, say)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve.shutdown()
    return 0
