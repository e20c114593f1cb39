"""Reading a book on a Ray cluster: the clips of a :class:`tortoise.render.RenderJob` fan out to a pool of Ray actors,
each holding one loaded :class:`tortoise.session.Session`.

Nothing of the render loop is re-implemented here. The driver runs :func:`tortoise.render.run_plan` (the loop the
command line runs) with :class:`ClipPool` as its clip renderer: :func:`tortoise.render.plan` decides which clips to
render and which to keep (the staleness rule: a clip is kept only when its file carries a record made from the same
text, voice and settings, so a resumed run renders nothing twice); each actor renders with
:func:`tortoise.render.render_clip` (per-clip seed = run seed + clip index, so a clip's audio does not depend on which
actor rendered it, nor on how many there are); the driver writes each clip atomically with its record as its result
arrives (:func:`tortoise.render.write_clip`) and puts each voice's combined file together in text order.

The pool: one actor per GPU (``num_gpus=1``; more actors than GPUs share them, fractionally), or on a cluster without
GPUs one actor per CPU (each with ``cpus // actors`` threads). An actor sends one clip at a time. When an actor dies
(its process killed, its node lost, out of memory), its clip goes back to the queue and is tried on another actor, at
most ``retries`` more times, and a new actor takes the dead one's place while work remains. A clip whose rendering
raises (not a dead actor: an error in the clip itself, which would repeat) is not tried again. Failed clips are
reported in the result at the end; every finished clip is on disk.
"""
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from tortoise.distributed import require_ray
from tortoise.progress import silent

DEFAULT_RETRIES = 2
START_TIMEOUT_S = 600.0
WAIT_S = 5.0  # how often the driver looks up from waiting (for the start timeout)


# ---------------------------------------------------------------- where to run

@dataclass(frozen=True)
class RayOptions:
    """Where and how widely to read.

    ``address``: None starts a new local cluster; otherwise what :func:`ray.init` takes (``auto``, ``HOST:PORT``,
    ``ray://HOST:PORT``). A driver already connected (``ray.is_initialized()``) keeps its connection.
    ``actors``: None for one per GPU, or one per CPU on a cluster without GPUs. ``gpus``: None uses GPUs when the
    cluster has any; False forces CPU actors. ``retries``: how many more times a clip whose actor died is tried.
    ``start_timeout``: seconds to wait for an actor to start when no actor is alive (then the remaining clips fail).
    ``threads``: torch threads of each CPU actor (None: the cluster's CPUs shared out). On CPU the thread count
    changes float sums in the last bits, so bit-identical audio across runs needs the same threads per actor.
    ``quiet``: Ray's own output (the actors' prints, its warnings) is not shown."""
    address: str = None
    actors: int = None
    gpus: bool = None
    threads: int = None
    retries: int = DEFAULT_RETRIES
    start_timeout: float = START_TIMEOUT_S
    quiet: bool = False

    def __post_init__(self):
        if self.actors is not None and self.actors < 1:
            raise ValueError("--ray_actors must be at least 1")
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")


def check_address(address):
    """``address`` as :func:`ray.init` takes it, or ValueError in one line (so that ``--ray "Some text."`` is not taken
    for a cluster)."""
    if address in (None, "", "local"):
        return None
    if address == "auto":
        return address
    client = address.startswith("ray://")  # Ray Client: the port may be left out (10001)
    host, _, port = address[len("ray://"):].rpartition(":") if client else address.rpartition(":")
    if client and not host:
        host, port = port, "10001"
    if not host or not port.isdigit() or any(c.isspace() for c in address):
        raise ValueError(f"--ray {address!r} is not a cluster address: give HOST:PORT, ray://HOST:PORT or auto "
                         "(or nothing for a local cluster)")
    return address


def connect(options):
    """The ``ray`` module, connected: an existing connection is kept; else ``ray.init(address)``, or a new local
    cluster when there is no address."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=check_address(options.address) or "local", log_to_driver=not options.quiet,
                 include_dashboard=False, logging_level="ERROR" if options.quiet else "WARNING")
    return ray


def actor_layout(resources, actors=None, gpus=None, threads=None):
    """``(number of actors, Ray resources of each, torch threads of each)`` for a cluster's ``resources``
    (:func:`ray.cluster_resources`): one actor per GPU, sharing the GPUs when asked for more; without GPUs (or with
    ``gpus=False``) one actor per CPU, or ``actors`` of them with the CPUs shared out as threads (or ``threads``
    each)."""
    n_gpus = int(resources.get("GPU", 0)) if gpus is not False else 0
    n_cpus = max(1, int(resources.get("CPU", 1)))
    if gpus and not n_gpus:
        raise ValueError("the Ray cluster has no GPUs: drop the GPU request or add GPU nodes")
    if n_gpus:
        n = actors or n_gpus
        return n, {"num_gpus": 1 if n <= n_gpus else n_gpus / n, "num_cpus": 1}, None
    n = actors or n_cpus
    threads = threads or max(1, n_cpus // n)
    return n, {"num_cpus": threads}, threads


# ---------------------------------------------------------------- the actor

class ClipRenderer:
    """What one Ray actor holds: a loaded :class:`~tortoise.session.Session`, rendering clips with
    :func:`tortoise.render.render_clip`. A failure to load is kept and reported by :meth:`ready` in one line (so the
    driver can say why), instead of killing the actor."""

    def __init__(self, model_options, stream=False, threads=None):
        self.tts, self.error = None, None
        try:
            from tortoise.session import Session
            self.tts = Session.load(model_options.replace(threads=threads or model_options.threads), stream)
        except Exception as e:  # noqa: BLE001 - reported by ready()
            self.error = _one_line(f"{type(e).__name__}: {e}")

    def ready(self):
        """``{"pid", "node", "device"}`` once the models are loaded, or ``{"error": one line}``."""
        if self.error:
            return {"error": self.error, "pid": os.getpid(), "node": socket.gethostname()}
        return {"pid": os.getpid(), "node": socket.gethostname(), "device": str(self.tts.device)}

    def render(self, voice, text, settings, index):
        """The candidates of clip ``index`` (:func:`tortoise.render.render_clip`): ``[S]`` float32 CPU tensors."""
        from tortoise.render import render_clip
        return render_clip(self.tts, voice, text, settings, index)


@dataclass
class Actor:
    """One actor of the pool, as the driver sees it."""
    number: int
    handle: object
    pid: int = None
    node: str = None
    device: str = None
    clips: int = 0


class ClipFailed(RuntimeError):
    """A clip that could not be rendered (after its retries); the message says why in one line."""


class NoActors(RuntimeError):
    """No actor of the pool could load the models (a missing checkpoint, a device that is not there): the message is
    one line with the actors' own error."""


def _one_line(e):
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 400 else text[:397] + "..."


# ---------------------------------------------------------------- the pool

@dataclass
class PoolStats:
    """What happened to the pool: actors started and ready, actors that died, clips sent again after a death."""
    started: int = 0
    ready: int = 0
    died: list = field(default_factory=list)      # [(actor number, one-line reason)]
    retried: list = field(default_factory=list)   # [(label, index, attempt)]


class ClipPool:
    """A pool of :class:`ClipRenderer` actors on a connected Ray cluster; a clip renderer for
    :func:`tortoise.render.run_plan`. Use it as a context manager (the actors are killed on exit), and for as many
    jobs as you like with the same models (:meth:`read`).

    ``model_options``: the :class:`~tortoise.options.ModelOptions` of every actor's pipeline (the command line's
    :func:`tortoise.cli.model_options`); on CPU actors ``device`` defaults to ``cpu``. ``on_dispatch(actor, task)`` is
    called as each clip is sent to an actor."""

    def __init__(self, ray, model_options, stream=False, options=RayOptions(), say=None, on_dispatch=None):
        self.ray, self.options = ray, options
        self.say = say or (lambda message: None)
        self.on_dispatch = on_dispatch
        self.count, resources, threads = actor_layout(ray.cluster_resources(), options.actors, options.gpus,
                                                      options.threads)
        if "num_gpus" not in resources and not model_options.device:
            model_options = model_options.replace(device="cpu")
        if "num_gpus" in resources and ":" in str(model_options.device or ""):
            raise ValueError(f"--device {model_options.device} with --ray: Ray gives each actor its own GPU (its "
                             "device 0); give the device type only (cuda, xpu) or leave --device out")
        self._remote = ray.remote(ClipRenderer).options(max_restarts=0, max_concurrency=1, **resources)
        self._init = (model_options, stream, threads)
        self.resources = resources
        self.stats = PoolStats()
        self.starting = {}  # ready ref -> Actor
        self.idle = []
        self.busy = {}      # render ref -> (Actor, task, attempt)
        self.failed_start = []
        for _ in range(self.count):
            self._start()
        per = ", ".join(f"{v:g} {k[4:-1].upper()}" for k, v in resources.items())
        have = ray.cluster_resources()
        self.say(f"Ray: {self.count} actor(s) of {per} each, on a cluster of {have.get('CPU', 0):g} CPU and "
                 f"{have.get('GPU', 0):g} GPU")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def actors(self):
        """The live actors (starting, idle or busy)."""
        return list(self.starting.values()) + self.idle + [a for a, _, _ in self.busy.values()]

    def wait_ready(self):
        """Wait until every actor has loaded its models (or failed to); returns the actors ready to render."""
        while self.starting:
            ready, _ = self.ray.wait(list(self.starting), num_returns=1)
            for ref in ready:
                self._started(ref)
        return list(self.idle)

    def close(self):
        for actor in self.actors:
            self.ray.kill(actor.handle)
        self.starting, self.idle, self.busy = {}, [], {}

    def _start(self):
        self.stats.started += 1
        actor = Actor(self.stats.started, self._remote.remote(*self._init))
        self.starting[actor.handle.ready.remote()] = actor

    # -------------------------------------------------------------- the clip renderer of run_plan

    def read(self, job, tasks=None, progress=silent, say=None, on_clip=None):
        """Run ``job`` on the pool (:func:`tortoise.render.run_plan`); failed clips are reported in the result, not
        raised, and every finished clip is written as it arrives."""
        from dataclasses import replace

        from tortoise import render
        tasks = render.plan(job) if tasks is None else tasks
        job = replace(job, keep_going=True)
        return render.run_plan(job, tasks, self.renderer(job), progress, say or self.say, on_clip)

    def renderer(self, job):
        """``clips(tasks)`` for :func:`tortoise.render.run_plan`: yields ``(task, audio, error)`` as clips finish."""
        def clips(tasks):
            return self._clips(job, tasks)
        return clips

    def _clips(self, job, tasks):
        try:
            yield from self._dispatch(job, tasks)
        finally:  # stopped early (a write failed, an interrupt): the clips in flight are abandoned with their actors
            for actor, _, _ in self.busy.values():
                self.ray.kill(actor.handle)
            self.busy = {}

    def _dispatch(self, job, tasks):
        ray = self.ray
        while len(self.actors) < self.count and tasks:  # a pool used before may have lost actors
            self._start()
        settings = ray.put(job.settings)
        voices = {}
        queue = deque((task, 0) for task in tasks)
        waiting_since = time.monotonic()
        while queue or self.busy:
            while queue and self.idle:
                task, attempt = queue.popleft()
                if task.voice.label not in voices:
                    voices[task.voice.label] = ray.put(task.voice)
                self._send(self.idle.pop(0), task, attempt, voices[task.voice.label], settings)
            if not self.busy and not self.starting:
                if not self.stats.ready and self.failed_start:  # nothing can run: the models did not load anywhere
                    raise NoActors(f"no Ray actor could load the models: {self.failed_start[-1]}")
                for task, _ in queue:
                    yield task, None, ClipFailed(self._no_actor_reason())
                return
            if not self.busy and time.monotonic() - waiting_since > self.options.start_timeout:
                for task, _ in queue:
                    yield task, None, ClipFailed(f"no Ray actor started within {self.options.start_timeout:g} s "
                                                 "(does the cluster have the resources?)")
                return
            ready, _ = ray.wait(list(self.busy) + list(self.starting), num_returns=1, timeout=WAIT_S)
            for ref in ready:
                if ref in self.starting:
                    self._started(ref)
                    waiting_since = time.monotonic()
                else:
                    outcome = self._finished(ref, queue)
                    if outcome is not None:
                        yield outcome
                    if self.busy or self.idle:
                        waiting_since = time.monotonic()

    def _send(self, actor, task, attempt, voice, settings):
        ref = actor.handle.render.remote(voice, task.text, settings, task.index)
        self.busy[ref] = (actor, task, attempt)
        where = f"actor {actor.number}" + (f" on {actor.node}" if actor.node else "")
        again = f", attempt {attempt + 1}" if attempt else ""
        self.say(f"Rendering {task.voice.label}_{task.index:02d} on {where}{again}: {task.text}")
        if self.on_dispatch is not None:
            self.on_dispatch(actor, task)

    def _started(self, ref):
        actor = self.starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            info = {"error": _reason(self.ray, e)}
        if "error" in info:
            self.failed_start.append(info["error"])
            self.say(f"Ray actor {actor.number} could not start: {info['error']}")
            self.ray.kill(actor.handle)
            return
        actor.pid, actor.node, actor.device = info["pid"], info["node"], info["device"]
        self.stats.ready += 1
        self.say(f"Ray actor {actor.number} ready on {actor.node} ({actor.device}, pid {actor.pid})")
        self.idle.append(actor)

    def _finished(self, ref, queue):
        """The outcome of one clip: ``(task, audio, None)``, ``(task, None, error)``, or None when it went back to the
        queue because its actor died."""
        ray = self.ray
        actor, task, attempt = self.busy.pop(ref)
        try:
            audio = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError) as e:
            return self._died(actor, task, attempt, _reason(ray, e), queue)
        except ray.exceptions.RayError as e:  # the clip itself failed (it would fail again): not retried
            self.idle.append(actor)
            return task, None, ClipFailed(_reason(ray, e))
        actor.clips += 1
        self.idle.append(actor)
        return task, audio, None

    def _died(self, actor, task, attempt, reason, queue):
        self.stats.died.append((actor.number, reason))
        self.ray.kill(actor.handle)
        clip = f"{task.voice.label}_{task.index:02d}"
        if attempt >= self.options.retries:
            self.say(f"Ray actor {actor.number} died ({reason}); {clip} failed {attempt + 1} time(s), giving up")
            if queue or self.busy:
                self._start()
            return task, None, ClipFailed(f"its Ray actor died {attempt + 1} time(s); last: {reason}")
        self.stats.retried.append((task.voice.label, task.index, attempt + 1))
        self.say(f"Ray actor {actor.number} died ({reason}); {clip} goes to another actor")
        queue.appendleft((task, attempt + 1))
        self._start()  # work remains: a new actor takes the dead one's place
        return None

    def _no_actor_reason(self):
        if self.failed_start:
            return f"no Ray actor could start: {self.failed_start[-1]}"
        return "every Ray actor died"


def _reason(ray, error):
    """One line for a Ray error: the clip's own exception when there is one, else Ray's first line."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        return _one_line(f"{type(cause).__name__}: {cause}")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return _one_line(" ".join(lines[:1] + [line for line in lines[1:] if line.startswith(("pid", "ip"))]))


# ---------------------------------------------------------------- the whole read

def read(job, model_options, options=RayOptions(), tasks=None, stream=False, progress=silent, say=None,
         on_clip=None):
    """Read ``job`` on a Ray cluster (connecting, or starting a local one), with a fresh pool of actors; returns the
    :class:`tortoise.render.RenderResult` (``failed`` lists the clips that could not be rendered)."""
    ray = connect(options)
    with ClipPool(ray, model_options, stream, options, say) as pool:
        return pool.read(job, tasks, progress, say, on_clip)
