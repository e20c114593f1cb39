"""One model set, one worker thread, a bounded queue of jobs served in order.

The worker loads the models (a :class:`~tortoise.session.Session`) once, then runs one job at a time, first come first
served. A job is ``work(tts, progress)``, a generator whose items go to the job's asyncio queue as they are made
(``("item", x)``, then ``("done", None)``, or ``("error", exception)``). The job's ``progress`` callback is handed to
the pipeline, which calls it at every stage step: it raises :class:`~tortoise.progress.Cancelled` once the job is
cancelled (its client went away) or past its deadline, so a job stops at the next stage boundary. Whatever a job
raises is reported to its client and counted; the worker goes on with the next job.

At most ``queue_size`` jobs wait behind the running one; :meth:`Engine.submit` refuses more with :class:`QueueFull`,
which carries a retry estimate from the median duration of recent jobs (``/health`` reports it, and the queue's
depth; :meth:`Engine.position` tells a waiting job its place).
"""
from __future__ import annotations

import asyncio
import collections
import math
import statistics
import threading
import time

from tortoise.progress import Cancelled

LOADING, READY, FAILED = "loading", "ready", "failed"
RECENT_JOBS = 20           # durations kept for the median behind the estimates
FIRST_RETRY_GUESS_S = 10.0  # before any job finished


class QueueFull(Exception):
    """The queue holds ``queue_size`` waiting jobs; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after):
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


class Job:
    """One request's generation: what to run, how it may be stopped, and where its results go."""

    def __init__(self, work, loop, deadline=None):
        self.work = work
        self.deadline = deadline  # time.monotonic() value, or None
        self.items = asyncio.Queue()
        self._loop = loop
        self._reason = None
        self.started = threading.Event()

    # ---- stopping
    def cancel(self, reason="cancelled"):
        """Stop the job at its next stage boundary (or skip it when it has not started)."""
        if self._reason is None:
            self._reason = reason

    @property
    def cancelled(self):
        return self._reason

    def expired(self):
        return self.deadline is not None and time.monotonic() >= self.deadline

    def progress(self, stage, done, total):
        """The pipeline's progress callback: raises :class:`Cancelled` when the job should stop."""
        if self._reason is None and self.expired():
            self._reason = "timeout"
        if self._reason is not None:
            raise Cancelled(self._reason)

    # ---- results, from the worker thread to the event loop
    def emit(self, kind, value=None):
        try:
            self._loop.call_soon_threadsafe(self.items.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    async def poll(self, seconds):
        """The next ``(kind, value)``, or None when none came within ``seconds``; :class:`TimeoutError` at the
        deadline (a waiting client's chance to hear its place in the queue between polls)."""
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 and self.items.empty():
                raise TimeoutError
            seconds = min(seconds, max(remaining, 0.001))
        try:
            return await asyncio.wait_for(self.items.get(), seconds)
        except asyncio.TimeoutError:
            if self.expired() and self.items.empty():
                raise TimeoutError from None
            return None

    async def next(self):
        """The next ``(kind, value)``; raises :class:`TimeoutError` at the deadline."""
        if self.deadline is None:
            return await self.items.get()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0 and self.items.empty():
            raise TimeoutError
        return await asyncio.wait_for(self.items.get(), max(remaining, 0.001))


class Engine:
    """Holds the :class:`~tortoise.session.Session` of one device and serves jobs in order from a bounded queue."""

    def __init__(self, load, queue_size=8, on_fatal=None):
        """:param load: ``load() -> Session``, called once on the worker thread.
        :param on_fatal: ``on_fatal(message)`` when loading fails (the server then stops)."""
        self.load = load
        self.queue_size = int(queue_size)
        self.on_fatal = on_fatal
        self.state = LOADING
        self.error = None
        self.tts = None
        self._waiting = collections.deque()
        self._cond = threading.Condition()
        self._running = None
        self._stopping = False
        self._durations = collections.deque(maxlen=RECENT_JOBS)
        self.counts = {"served": 0, "failed": 0, "cancelled": 0, "timed_out": 0}
        self._thread = threading.Thread(target=self._main, name="tortoise-engine", daemon=True)
        self._loaded = threading.Event()

    # ---- lifecycle
    def start(self):
        self._thread.start()

    def stop(self):
        """Cancel every job and end the worker (server shutdown)."""
        with self._cond:
            self._stopping = True
            for job in list(self._waiting) + ([self._running] if self._running else []):
                job.cancel("shutdown")
            self._cond.notify_all()

    @property
    def ready(self):
        return self.state == READY

    def wait_loaded(self, timeout=None):
        """Block until the models have loaded or failed to (``self.error`` then holds why)."""
        self._loaded.wait(timeout)

    # ---- the queue
    def submit(self, work, loop, timeout=None):
        """Queue ``work``; returns its :class:`Job`. Raises :class:`QueueFull` when ``queue_size`` jobs wait."""
        deadline = time.monotonic() + timeout if timeout else None
        job = Job(work, loop, deadline)
        with self._cond:
            self._drop_cancelled()
            if len(self._waiting) >= self.queue_size and not (self.queue_size == 0 and self._idle()):
                raise QueueFull(self.retry_after())
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    def _idle(self):
        return self._running is None and not self._waiting

    def _drop_cancelled(self):
        for job in [j for j in self._waiting if j.cancelled or j.expired()]:
            self._waiting.remove(job)
            self._finish(job, "timed_out" if job.expired() else "cancelled", Cancelled(job.cancelled or "timeout"))

    def median_s(self):
        """The median time of the last ``RECENT_JOBS`` served jobs (None before the first): a median, so that one
        long text does not set everyone's estimate."""
        return statistics.median(self._durations) if self._durations else None

    def _per_job_s(self):
        median = self.median_s()
        return FIRST_RETRY_GUESS_S if median is None else median

    def retry_after(self):
        """Whole seconds until a place in the full queue is likely free: the recent median job time for each job
        waiting (a place frees each time one starts), 1 to 3600."""
        return max(1, min(3600, math.ceil(self._per_job_s() * max(1, len(self._waiting)))))

    def position(self, job):
        """How many jobs are ahead of ``job`` (the running one included): 0 once it runs, or when nothing is ahead of
        it (the worker takes it now); None once it was dropped."""
        with self._cond:
            if job.started.is_set() or job is self._running:
                return 0
            try:
                return self._waiting.index(job) + int(self._running is not None)
            except ValueError:
                return None

    def wait_estimate(self, position):
        """Seconds a job with ``position`` jobs ahead will likely wait: a recent median for each."""
        return round(self._per_job_s() * position, 1)

    def status(self):
        """``/health``'s queue fields: state, the depth (``queued`` waiting, ``running``), the recent median seconds
        per request, the wait a request arriving now would likely have, and the counters."""
        with self._cond:
            median = self.median_s()
            depth = len(self._waiting) + int(self._running is not None)
            return {"state": self.state, "queued": len(self._waiting), "running": int(self._running is not None),
                    "queue_size": self.queue_size, "queue_depth": depth,
                    "median_s": None if median is None else round(median, 3), "recent_jobs": len(self._durations),
                    "estimated_wait_s": round(self._per_job_s() * depth, 1), **self.counts}

    # ---- the worker
    def _main(self):
        try:
            self.tts = self.load()
        except BaseException as e:  # noqa: BLE001 - reported in one line; the server stops
            self.state, self.error = FAILED, e
            self._loaded.set()
            if self.on_fatal is not None:
                self.on_fatal(e)
            return
        self.state = READY
        self._loaded.set()
        while True:
            job = self._take()
            if job is None:
                return
            self._run(job)

    def _take(self):
        with self._cond:
            while True:
                if self._stopping:
                    return None
                self._drop_cancelled()
                if self._waiting:
                    self._running = self._waiting.popleft()
                    return self._running
                self._cond.wait()

    def _run(self, job):
        t0 = time.monotonic()
        job.started.set()
        outcome, error = "served", None
        try:
            job.progress("queue", 0, 0)  # cancelled or expired while waiting: stop before any work
            for item in job.work(self.tts, job.progress):
                job.emit("item", item)
        except Cancelled as e:
            outcome, error = ("timed_out" if str(e) == "timeout" else "cancelled"), e
        except Exception as e:  # noqa: BLE001 - a failing request is reported to its client, never to the server
            outcome, error = "failed", e
        with self._cond:
            self._running = None
            if outcome == "served":
                self._durations.append(time.monotonic() - t0)
            self._finish(job, outcome, error)
            self._cond.notify_all()

    def _finish(self, job, outcome, error):
        self.counts[outcome] += 1
        job.emit("done" if error is None else "error", error)
