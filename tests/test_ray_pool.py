"""The Ray reader's pool (`tortoise.distributed.reader.ClipPool`) on a fake `ray`: its dispatch, retry and failure
rules without a cluster. The fake stands in for Ray's API only (remote actors, refs, wait/get/kill/put and Ray's
exception types); the actors are scripted: each renders a clip as a short tone, or dies, or fails, as a test asks.
`tests/test_ray.py` runs the same pool on a real local cluster."""
import types
from pathlib import Path

import pytest
import torch

from tortoise import render
from tortoise.distributed import reader
from tortoise.options import GenerationOptions, ModelOptions


class RayError(Exception):
    pass


class RayActorError(RayError):
    pass


class RayTaskError(RayError):
    def __init__(self, cause):
        super().__init__(f"task failed: {cause}")
        self.cause = cause


EXCEPTIONS = types.SimpleNamespace(RayError=RayError, RayActorError=RayActorError, RayTaskError=RayTaskError,
                                   WorkerCrashedError=type("WorkerCrashedError", (RayError,), {}),
                                   NodeDiedError=type("NodeDiedError", (RayError,), {}),
                                   OutOfMemoryError=type("OutOfMemoryError", (RayError,), {}),
                                   ObjectLostError=type("ObjectLostError", (RayError,), {}))


class Ref:
    made = 0

    def __init__(self, compute):
        Ref.made += 1
        self.compute, self.order = compute, Ref.made


class FakeActor:
    """One scripted actor: ``script(number, text, attempt_of_actor)`` -> "ok", "die" or "fail"."""

    def __init__(self, ray, number, init):
        self.ray, self.number, self.init, self.killed = ray, number, init, False
        self.ready = types.SimpleNamespace(remote=lambda: Ref(self._ready))
        self.render = types.SimpleNamespace(remote=lambda voice, text, settings, index:
                                            Ref(lambda: self._render(text, index)))

    def _ready(self):
        if self.number in self.ray.broken:
            return {"error": "CheckpointError: autoregressive.pth is missing", "pid": 1, "node": "n"}
        return {"pid": 1000 + self.number, "node": "fake-node", "device": "cpu"}

    def _render(self, text, index):
        outcome = self.ray.script(self.number, text)
        self.ray.rendered.append((self.number, text, outcome))
        if outcome == "die" or self.killed:
            raise RayActorError(f"The actor died unexpectedly (actor {self.number})")
        if outcome == "fail":
            raise RayTaskError(ValueError(f"bad clip {index}"))
        return [torch.full((2400,), 0.01 * (index + 1))]


class FakeRay:
    """Ray's calls as ClipPool makes them; refs resolve in the order they were made."""
    exceptions = EXCEPTIONS

    def __init__(self, script, broken=(), cpus=4):
        self.script, self.broken, self.cpus = script, set(broken), cpus
        self.actors, self.rendered, self.killed, self.init = [], [], [], None

    def cluster_resources(self):
        return {"CPU": float(self.cpus)}

    def remote(self, cls):
        assert cls is reader.ClipRenderer
        ray = self

        class Handle:
            @staticmethod
            def options(**kwargs):
                return types.SimpleNamespace(remote=lambda *init: ray._new_actor(init))
        return Handle

    def _new_actor(self, init):
        self.init = init
        actor = FakeActor(self, len(self.actors) + 1, init)
        self.actors.append(actor)
        return actor

    def wait(self, refs, num_returns=1, timeout=None):
        """The oldest refs first: what was asked for earlier finishes earlier."""
        refs = sorted(refs, key=lambda ref: ref.order)
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.compute()

    def kill(self, handle):
        handle.killed = True
        self.killed.append(handle.number)

    def put(self, obj):
        return obj


TEXTS = ("one", "two", "three", "four")


def job(tmp_path, texts=TEXTS):
    settings = render.RenderSettings(GenerationOptions(), 7, 1, False, {})
    return render.RenderJob(tuple(texts), (render.Voice("random", identity="random"),), settings, Path(tmp_path))


def pool(ray, **options):
    return reader.ClipPool(ray, ModelOptions(models_dir="/m"), options=reader.RayOptions(actors=2, threads=1,
                                                                                          **options))


def test_clips_spread_over_the_actors_and_cpu_actors_get_the_cpu(tmp_path):
    ray = FakeRay(lambda number, text: "ok")
    with pool(ray) as p:
        result = p.read(job(tmp_path))
    assert not result.failed and len(result.written) == len(TEXTS) + 1  # four clips and the combined file
    assert {number for number, _, _ in ray.rendered} == {1, 2}
    options, stream, threads = ray.init
    assert options.device == "cpu" and options.models_dir == "/m" and threads == 1 and not stream
    assert sorted(ray.killed) == [1, 2]  # closed with the pool


def test_a_clip_whose_actor_died_goes_to_a_new_actor(tmp_path):
    deaths = {"two": 1}

    def script(number, text):
        if deaths.get(text):
            deaths[text] -= 1
            return "die"
        return "ok"
    ray = FakeRay(script)
    with pool(ray) as p:
        result = p.read(job(tmp_path))
        assert p.stats.retried == [("random", 1, 1)] and len(p.stats.died) == 1
        assert p.stats.started == 3  # the dead actor was replaced
    assert not result.failed
    assert [t for _, t, outcome in ray.rendered].count("two") == 2
    assert (tmp_path / "random_combined.wav").is_file()


def test_a_clip_that_kills_every_actor_fails_after_its_retries_and_the_rest_finish(tmp_path):
    ray = FakeRay(lambda number, text: "die" if text == "three" else "ok")
    with pool(ray, retries=2) as p:
        result = p.read(job(tmp_path))
        assert len(p.stats.died) == 3 and [r[2] for r in p.stats.retried] == [1, 2]
    ((label, index, why),) = result.failed
    assert (label, index) == ("random", 2) and "its Ray actor died 3 time(s)" in why
    assert len(result.written) == 3 and not (tmp_path / "random_combined.wav").exists()


def test_a_clip_that_fails_by_itself_is_not_retried_and_its_actor_goes_on(tmp_path):
    ray = FakeRay(lambda number, text: "fail" if text == "one" else "ok")
    with pool(ray) as p:
        result = p.read(job(tmp_path))
        assert p.stats.retried == [] and p.stats.died == [] and p.stats.started == 2
    assert [(label, index) for label, index, _ in result.failed] == [("random", 0)]
    assert "ValueError: bad clip 0" in result.failed[0][2]
    assert [t for _, t, _ in ray.rendered].count("one") == 1


def test_when_no_actor_can_load_the_models_the_read_stops_in_one_line(tmp_path):
    ray = FakeRay(lambda number, text: "ok", broken={1, 2})
    with pool(ray) as p:
        with pytest.raises(reader.NoActors, match="no Ray actor could load the models: CheckpointError"):
            p.read(job(tmp_path))
    assert ray.rendered == [] and not any(tmp_path.iterdir())


def test_one_broken_actor_leaves_the_work_to_the_other(tmp_path):
    ray = FakeRay(lambda number, text: "ok", broken={1})
    with pool(ray) as p:
        result = p.read(job(tmp_path))
        assert p.stats.ready == 1 and p.failed_start
    assert not result.failed and {number for number, _, _ in ray.rendered} == {2}
