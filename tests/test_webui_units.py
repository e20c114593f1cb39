"""The web UI's pieces without a browser: launcher command line, settings file, voice upload checks, history."""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import tortoise.webui.launch as webui
from tortoise.utils import voice_upload
from tortoise.webui import generation, settings as wsettings
from tortoise.webui.settings import Settings, load_settings, save_settings
from tortoise.utils.voice_upload import UploadError, create_voice, sanitize_voice_name


def tone(seconds=2.0, rate=22050, fmt="WAV", freq=220.0, amplitude=0.3):
    """A synthetic clip (no recordings of people): a sine with a little noise, encoded in memory."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    wave = amplitude * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), rate, format=fmt)
    return buf.getvalue()


# ---- launcher ---------------------------------------------------------------------------------------------------

def test_command_passes_host_port_and_streamlit_options():
    args, rest = webui.parse_args(["--host", "127.0.0.1", "--port", "9123", "--server.headless", "true",
                                   "--theme.base=dark"])
    cmd = webui.build_command(args, rest, python="PY")
    assert cmd[:5] == ["PY", "-m", "streamlit", "run", str(webui.app_path())]
    opts = cmd[5:]
    assert opts[opts.index("--server.address") + 1] == "127.0.0.1"
    assert opts[opts.index("--server.port") + 1] == "9123"
    assert opts[opts.index("--server.headless") + 1] == "true"
    assert "--theme.base=dark" in opts
    assert opts[opts.index("--server.maxUploadSize") + 1] == str(voice_upload.MAX_CLIP_BYTES // 2**20)


def test_explicit_streamlit_option_wins_over_host_and_port():
    args, rest = webui.parse_args(["--port", "9000", "--server.port=9100", "--server.address", "0.0.0.0"])
    cmd = webui.build_command(args, rest)
    assert "--server.port=9100" in cmd and "9000" not in cmd
    assert cmd.count("--server.address") == 1 and cmd[cmd.index("--server.address") + 1] == "0.0.0.0"


def test_served_url_follows_the_final_options():
    args, rest = webui.parse_args(["--port", "9000", "--server.port=9100"])
    assert webui.served_url(webui.build_command(args, rest)) == "http://localhost:9100"


def test_console_script_is_declared():
    from importlib.metadata import entry_points
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "turtle"]
    assert ep.value == "tortoise.webui.launch:main"


def test_app_file_is_inside_the_package():
    path = webui.app_path()
    assert path.is_file() and path.parent == Path(webui.__file__).resolve().parent
    # a thin script for `streamlit run scripts/app.py` from a checkout delegates to it
    thin = Path(__file__).resolve().parents[1] / "scripts" / "app.py"
    assert "from tortoise.webui.app import render" in thin.read_text()


@pytest.mark.parametrize("argv, fragment", [(["--bogus"], "unrecognised arguments: --bogus"),
                                            (["--port", "70000"], "not a port number")])
def test_bad_arguments_exit_with_one_message(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        webui.parse_args(argv)
    assert e.value.code == 2 and fragment in capsys.readouterr().err


def test_missing_streamlit_fails_with_one_line():
    code = ("import sys; sys.modules['streamlit'] = None\n"  # find_spec('streamlit') is None: as if uninstalled
            "from tortoise.webui import main; sys.exit(main(['--port', '9999']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Streamlit is not installed" in lines[0] and "pip install" in lines[0]
    assert proc.stdout == ""  # nothing was started


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-c", "import sys; from tortoise.webui import main; sys.exit(main())",
                           "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--host" in proc.stdout and "--port" in proc.stdout


# ---- settings file ----------------------------------------------------------------------------------------------

def test_settings_round_trip(tmp_path):
    path = tmp_path / "cfg" / "webui.json"
    s = Settings(text="hi", voices=["a", "b"], candidates=3, low_vram=True, sampler="dpm++2m", output_dir="out")
    save_settings(s, path)
    loaded, warning = load_settings(path)
    assert warning is None and loaded == s
    assert [p.name for p in path.parent.iterdir()] == ["webui.json"]  # no temporary file left behind
    assert json.loads(path.read_text())["version"] == wsettings.SETTINGS_VERSION


def test_missing_settings_file_gives_defaults_silently(tmp_path):
    assert load_settings(tmp_path / "absent.json") == (Settings(), None)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "", "\x00\x01"])
def test_corrupt_settings_file_falls_back_with_a_warning(tmp_path, content):
    path = tmp_path / "webui.json"
    path.write_text(content)
    loaded, warning = load_settings(path)
    assert loaded == Settings() and "corrupt" in warning and str(path) in warning


def test_wrongly_typed_settings_are_dropped_one_by_one(tmp_path):
    path = tmp_path / "webui.json"
    path.write_text(json.dumps({"settings": {"candidates": "many", "half": 1, "voices": [1], "text": "kept",
                                             "steps": -5, "max_mel_tokens": 9999, "seed": 12, "unknown_key": 5}}))
    loaded, warning = load_settings(path)
    assert loaded.text == "kept" and loaded.candidates == Settings().candidates and loaded.half is False
    assert loaded.steps == Settings().steps and loaded.max_mel_tokens == Settings().max_mel_tokens
    assert loaded.seed == 12
    for name in ("candidates", "half", "voices", "steps", "max_mel_tokens"):
        assert name in warning


def test_settings_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(wsettings.SETTINGS_ENV, str(tmp_path / "x.json"))
    assert wsettings.default_settings_path() == tmp_path / "x.json"


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "webui.json"
    save_settings(Settings(text="old"), path)

    def boom(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(wsettings.os, "replace", boom)
    with pytest.raises(OSError):
        save_settings(Settings(text="new"), path)
    assert load_settings(path)[0].text == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["webui.json"]


# ---- voice upload -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [("My Voice", "My_Voice"), ("  Émile!! ", "Emile"), ("../../etc", "etc"),
                                        ("a/b\\c", "abc"), (".hidden", "hidden"), ("x" * 100, "x" * 64),
                                        ("dan-2_b.v1", "dan-2_b.v1")])
def test_voice_names_are_sanitised(raw, clean):
    assert sanitize_voice_name(raw) == clean


@pytest.mark.parametrize("raw", ["", "   ", "../..", "///", "random", "ALL", "***"])
def test_unusable_voice_names_are_refused(raw):
    with pytest.raises(UploadError):
        sanitize_voice_name(raw)


def test_create_voice_writes_clips_with_detected_format(tmp_path):
    clips = [("take one.wav", tone(2.0)), ("second.FLAC", tone(3.0, fmt="FLAC"))]
    created = create_voice(tmp_path / "voices", "New Speaker", clips)
    assert created.name == "New_Speaker" and not created.added_to_existing
    assert sorted(p.name for p in created.path.iterdir()) == ["second.flac", "take_one.wav"]
    assert sf.info(str(created.path / "second.flac")).format == "FLAC"
    assert [p.name for p in (tmp_path / "voices").iterdir()] == ["New_Speaker"]  # no staging directory left


def test_voice_found_by_the_voices_module(tmp_path):
    from tortoise.utils.voices import get_voices, load_voice
    create_voice(tmp_path, "tone", [("a.wav", tone(2.0)), ("b.wav", tone(2.5, rate=44100))])
    assert len(get_voices([str(tmp_path)])["tone"]) == 2
    clips, latents = load_voice("tone", [str(tmp_path)])
    assert latents is None and [c.shape[-1] for c in clips] == [44100, 55125]  # resampled to 22.05 kHz


def test_existing_voice_is_never_overwritten(tmp_path):
    create_voice(tmp_path, "v", [("a.wav", tone(2.0, freq=200))])
    original = (tmp_path / "v" / "a.wav").read_bytes()
    with pytest.raises(UploadError, match="already exists"):
        create_voice(tmp_path, "v", [("a.wav", tone(2.0, freq=300))])
    added = create_voice(tmp_path, "v", [("a.wav", tone(2.0, freq=300))], add_to_existing=True)
    assert added.added_to_existing and added.files == ("a_1.wav",)
    assert (tmp_path / "v" / "a.wav").read_bytes() == original


def test_voice_known_in_another_directory_is_refused(tmp_path):
    with pytest.raises(UploadError, match="already exists"):
        create_voice(tmp_path, "emma", [("a.wav", tone())], known_voices=["emma"])
    with pytest.raises(UploadError, match="another voices directory"):
        create_voice(tmp_path, "emma", [("a.wav", tone())], known_voices=["emma"], add_to_existing=True)
    assert list(tmp_path.iterdir()) == []


def test_bad_clips_are_reported_together_and_nothing_is_written(tmp_path):
    silent = io.BytesIO()
    sf.write(silent, np.zeros(22050 * 2, dtype=np.float32), 22050, format="WAV")
    clips = [("good.wav", tone()), ("notes.wav", b"this is not audio"), ("short.wav", tone(0.3)),
             ("long.wav", tone(61.0, rate=8000)), ("quiet.wav", silent.getvalue()), ("doc.pdf", tone())]
    with pytest.raises(UploadError) as e:
        create_voice(tmp_path, "v", clips)
    lines = str(e.value).splitlines()
    assert len(lines) == 5
    assert "notes.wav: this is not an audio file" in lines[0]
    assert "short.wav" in lines[1] and "too short" in lines[1]
    assert "long.wav" in lines[2] and "too long" in lines[2]
    assert "quiet.wav" in lines[3] and "silent" in lines[3]
    assert "doc.pdf: not an audio clip" in lines[4]
    assert list(tmp_path.iterdir()) == []


def test_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(voice_upload, "MAX_CLIP_BYTES", 50_000)
    with pytest.raises(UploadError, match="over the"):
        create_voice(tmp_path, "v", [("big.wav", tone(3.0))])  # ~130 kB


def test_no_clips_and_no_directory(tmp_path):
    with pytest.raises(UploadError, match="at least one clip"):
        create_voice(tmp_path, "v", [])
    with pytest.raises(UploadError, match="voices directory"):
        create_voice("", "v", [("a.wav", tone())])


# ---- generation helpers and history -----------------------------------------------------------------------------

def test_readable_error_is_one_line_without_traceback():
    try:
        raise RuntimeError("first line\n  Traceback-ish detail\nfix: do this")
    except RuntimeError as e:
        msg = generation.readable_error(e)
    assert msg == "first line fix: do this"
    assert "Low VRAM" in generation.readable_error(RuntimeError("XPU out of memory. Tried to allocate 4.00 GiB"))
    assert generation.readable_error(ValueError()) == "ValueError (no message)"


def test_split_text_respects_the_minimum():
    short = "One short sentence."
    assert generation.split_text(short, 200) == [short]
    long = " ".join(f"Sentence number {i} is here." for i in range(30))
    chunks = generation.split_text(long, 100)
    assert len(chunks) > 3 and all(len(c) <= 200 for c in chunks)
    with pytest.raises(ValueError, match="Type some text"):
        generation.split_text("   ", 200)


def test_history_survives_and_drops_missing_runs(tmp_path):
    (tmp_path / "run1").mkdir()
    entries = [{"run_dir": str(tmp_path / "run1"), "text": "a"}, {"run_dir": str(tmp_path / "gone"), "text": "b"}]
    generation.save_history(tmp_path, entries)
    assert generation.load_history(tmp_path) == entries[:1]
    (tmp_path / generation.HISTORY_FILE).write_text("{broken")
    assert generation.load_history(tmp_path) == []


def test_run_job_renders_through_the_render_loop_with_stage_progress(tmp_path, tiny_models_dir):
    """A split text in one voice: 16-bit clips (they play in every browser) carrying the render loop's records, a
    joined file, clip progress and the pipeline's stage progress, all through callbacks (no stdout capture)."""
    from tortoise.api import TextToSpeech
    from tortoise.render import read_record
    tts = TextToSpeech(models_dir=str(tiny_models_dir), device="cpu")
    job = generation.Job(text="First sentence here. Second one here.", groups=[["random"]], preset="ultra_fast",
                         seed=5, min_chars_to_split=20,
                         overrides={"num_autoregressive_samples": 2, "diffusion_iterations": 2, "max_mel_tokens": 20})
    clips, stages = [], []
    record = generation.run_job(tts, job, tmp_path, lambda m, d, t: clips.append((m, d, t)),
                                on_stage=lambda s, d, t: stages.append(s))
    run_dir = tmp_path / record.run_id
    assert [c["file"] for c in record.clips] == ["random_00_00.wav", "random_01_00.wav"] and record.finished
    assert record.combined == [{"voice": "random", "candidate": 0, "file": "random_combined.wav"}]
    for name in ("random_00_00.wav", "random_01_00.wav", "random_combined.wav"):
        assert sf.info(str(run_dir / name)).subtype == "PCM_16" and sf.info(str(run_dir / name)).samplerate == 24000
    assert read_record(run_dir / "random_01_00.wav").seed == 6  # the run seed + the clip index
    assert ("Voice random: clip 2 of 2", 1, 2) in clips and clips[-1] == ("Done", 2, 2)
    assert {"autoregressive", "ranking", "latents", "diffusion", "vocoder"} <= set(stages)


# ---- device layer: start-up check, device list, doctor report ---------------------------------------------------

class NoIntelSystem:
    """The oneAPI checker's view of a machine without any Intel GPU stack."""

    def glob(self, pattern):
        return []

    def access(self, path, mode):
        return False

    def find_library(self, name):
        return None

    def can_load(self, name):
        return False

    def distribution_version(self, name):
        return None

    def platform(self):
        return "linux"

    def torch_has_xpu(self):
        return False

    def intel_gpus(self):
        return []


def test_environment_check_on_cpu_says_oneapi_is_not_applicable(monkeypatch):
    from xpu.testing import no_accelerators
    from tortoise.webui import device_info
    no_accelerators(monkeypatch)
    lines = device_info.environment_check(env={}, fs=NoIntelSystem())
    assert lines[0].startswith("device cpu") and len(lines) == 2
    assert lines[1].startswith("oneAPI checks not applicable: no Intel GPU")


def test_device_panel_says_oneapi_is_not_applicable(monkeypatch):
    """The page's device panel (the doctor report) on a machine without an Intel GPU: no [error] lines."""
    from xpu import oneapi
    from xpu.testing import no_accelerators
    from tortoise.webui import device_info
    no_accelerators(monkeypatch)
    monkeypatch.setattr(oneapi, "System", NoIntelSystem)
    for var in ("ONEAPI_ROOT", "SETVARS_COMPLETED", "ONEAPI_DEVICE_SELECTOR", "ZE_AFFINITY_MASK", "TORTOISE_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    report = device_info.doctor_report("cpu")
    assert "oneAPI     not applicable" in report and "[error]" not in report


def test_environment_check_on_arc_shows_findings_with_fixes(monkeypatch):
    from xpu.testing import A770, FakeGpu, GIB, HealthyXpuSystem, no_accelerators
    from tortoise.webui import device_info
    no_accelerators(monkeypatch)
    FakeGpu(monkeypatch, "xpu", [A770], free=[15 * GIB])
    env = {"ONEAPI_DEVICE_SELECTOR": "opencl:gpu"}
    lines = device_info.environment_check(env=env, fs=HealthyXpuSystem())
    assert lines[0].startswith("device xpu:0 (Intel(R) Arc(TM) A770 Graphics)")
    body = "\n".join(lines[1:])
    assert "[error] ONEAPI_DEVICE_SELECTOR=opencl:gpu hides the Level Zero GPUs" in body
    assert "fix: unset ONEAPI_DEVICE_SELECTOR" in body
    assert "cannot allocate one buffer over 4 GiB" in body  # the Arc A-series finding, from the device name
    assert device_info.device_choices() == ["auto", "xpu:0", "cpu"]
    assert "Intel(R) Arc(TM) A770 Graphics" in device_info.doctor_report("xpu:0")


def test_environment_check_failure_is_one_line(monkeypatch, capsys):
    from tortoise.webui import device_info
    monkeypatch.setenv("TORTOISE_DEVICE", "tpu")
    device_info.print_environment_check()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("turtle: device check failed: unknown device 'tpu'")


def test_build_job_maps_controls_to_api_overrides():
    from tortoise.webui.app import build_job
    job = build_job(Settings(text="Hi.", voices=["a", "b"], combine_voices=True, sampler="dpm++2m", steps=7,
                             cond_free="on", ar_samples=4, max_mel_tokens=100, latent_mode=2, seed=-1,
                             preset="fast", candidates=2, min_chars_to_split=150, extra_voices_dir=""))
    assert job.groups == [["a", "b"]] and job.seed is None and job.preset == "fast" and job.candidates == 2
    assert job.overrides == {"sampler": "dpm++2m", "diffusion_iterations": 7, "cond_free": True,
                             "num_autoregressive_samples": 4, "max_mel_tokens": 100, "latent_averaging_mode": 2}
    plain = build_job(Settings(voices=["a", "b"], seed=5, extra_voices_dir=""))
    assert plain.groups == [["a"], ["b"]] and plain.seed == 5 and plain.overrides == {}  # preset values untouched
    off = build_job(Settings(cond_free="off", extra_voices_dir=""))
    assert off.overrides == {"cond_free": False}
    from tortoise.api import OPTION_FIELDS  # every override is a knob the API knows
    assert set(job.overrides) <= OPTION_FIELDS


# ---- messages in the page's words --------------------------------------------------------------------------------

FLAG = __import__("re").compile(r"(?<![\w-])--(?!index-url)[a-z]")  # pip's --index-url is not a flag of ours


def _raised(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - collecting the library's real exceptions
        return e
    raise AssertionError(f"{fn.__name__} did not raise")


def test_library_errors_speak_of_the_page_controls(tmp_path, monkeypatch):
    """Was: the page told its users to pass --models_dir, --voices_dir, --disable_redaction, ..."""
    from tortoise.utils import checkpoints, voices, wav2vec_alignment as W
    from xpu.testing import no_accelerators
    import xpu
    no_accelerators(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    raised = [
        _raised(checkpoints.resolve_checkpoint, "autoregressive", tmp_path, download=False),
        _raised(voices.check_voice_name, ""),
        _raised(voices.check_voice_name, "../x"),
        voices.unknown_voice_error("carol", ["alice"]),
        _raised(voices.parse_voice_selection, "all", {}),
        _raised(voices.parse_voice_selection, "random&alice", {"alice": []}),
        _raised(voices.get_voices, [str(tmp_path / "nope")]),
        _raised(W.check_redaction, ["[only this]"], tmp_path),
        _raised(W.check_redaction, ["Fine.", "[only this]"], tmp_path),
        _raised(W.check_redaction, ["[sad] feed me."], tmp_path),
        _raised(W.split_redactions, "[unclosed"),
        _raised(xpu.resolve_device, "xpu", {}),
        RuntimeError("cpu ran out of memory even at batch size 1: use --low_vram, --half, fewer candidates or a "
                     "smaller max_mel_tokens"),  # tortoise.api.OutOfMemory's message
        checkpoints.CheckpointError("the bigvgan vocoder is not in /m and could not be downloaded from x (y); "
                                    "download it there (config.json + bigvgan_generator.pt) or use --vocoder univnet"),
    ]
    for exc in raised:
        text = generation.readable_error(exc)
        assert not FLAG.search(text), (str(exc), text)
        assert "\n" not in text
    assert "Models directory" in generation.readable_error(raised[0])
    assert "Extra voices directory" in generation.readable_error(raised[2])
    assert "remove the brackets" in generation.readable_error(raised[7])
    assert "choose another Device in the sidebar" in generation.readable_error(raised[11])
    assert "pip install torch --index-url https://download.pytorch.org/whl/xpu" in \
        generation.readable_error(raised[11])  # not a flag of ours: kept
    assert "'Low VRAM'" in generation.readable_error(raised[12])


def test_upload_that_is_not_audio_says_so_in_words():
    """Was: "cannot be read as audio (Error opening <_io.BytesIO object at 0x7f...>: Format not recognised.)"."""
    for data in (b"this is not audio", b"%PDF-1.4 " * 200, b""):
        with pytest.raises(UploadError) as e:
            voice_upload.inspect_clip("notes.wav", data)
        assert str(e.value).startswith("notes.wav: this is not an audio file") and "<_io" not in str(e.value)
    with pytest.raises(UploadError) as e:
        voice_upload.inspect_clip("cut.wav", b"RIFF....WAVEjunk")
    assert "damaged or unsupported audio file" in str(e.value) and "<_io" not in str(e.value)


# ---- server-side paths -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("address, local", [("localhost", True), ("127.0.0.1", True), ("127.0.0.2", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("", False),
                                            (None, False), ("192.168.1.5", False), ("myhost.example", False),
                                            ("::", False)])
def test_only_loopback_addresses_are_local(address, local):
    assert wsettings.is_local_address(address) is local
    assert wsettings.paths_locked(address, env={}) is (not local)
    assert wsettings.paths_locked(address, env={"TURTLE_LOCK_PATHS": "1"}) is True


def test_pinned_paths(monkeypatch):
    monkeypatch.setenv("TORTOISE_MODELS_DIR", "/srv/models")
    env = {"TURTLE_OUTPUT_DIR": "/srv/out", "TURTLE_VOICES_DIR": " "}
    assert wsettings.pinned_paths(False, env) == {"output_dir": "/srv/out"}  # localhost: only what the server set
    locked = wsettings.pinned_paths(True, env)
    assert locked == {"models_dir": "/srv/models", "extra_voices_dir": wsettings.default_voices_dir(),
                      "output_dir": "/srv/out", "ar_checkpoint": "", "diff_checkpoint": ""}
    s = wsettings.with_server_paths(Settings(models_dir="/home/visitor/x", output_dir="/etc"), True, env)
    assert s.models_dir == "/srv/models" and s.output_dir == "/srv/out"
