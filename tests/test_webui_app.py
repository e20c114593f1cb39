"""The Streamlit app driven through Streamlit's app-testing API with tiny random-weight models.

Generation is kept tiny (2 AR samples, 2 diffusion steps, clips of 20 codes) so each press of Generate takes seconds.
"""
import json

import numpy as np
import pytest
import soundfile as sf
from streamlit.testing.v1 import AppTest

import tortoise.webui.launch as webui
from tortoise.webui.generation import HISTORY_FILE
from test_webui_units import tone

TIMEOUT = 240  # seconds per script run: generous for 2 shared cores


@pytest.fixture(autouse=True)
def served_on_localhost(monkeypatch):
    """As `turtle` serves by default: on localhost only, where the page may choose server-side paths."""
    from streamlit import config
    before = config.get_option("server.address")
    config.set_option("server.address", "127.0.0.1")
    for var in ("TURTLE_MODELS_DIR", "TURTLE_VOICES_DIR", "TURTLE_OUTPUT_DIR", "TURTLE_AR_CHECKPOINT",
                "TURTLE_DIFF_CHECKPOINT", "TURTLE_LOCK_PATHS"):
        monkeypatch.delenv(var, raising=False)
    yield
    config.set_option("server.address", before)


@pytest.fixture
def app_env(tmp_path, tiny_models_dir, monkeypatch):
    """A settings file pointing every directory into tmp_path, with the fastest generation settings."""
    paths = {"settings": tmp_path / "webui.json", "out": tmp_path / "out", "voices": tmp_path / "voices"}
    settings = {"models_dir": str(tiny_models_dir), "output_dir": str(paths["out"]),
                "extra_voices_dir": str(paths["voices"]), "device": "cpu", "preset": "ultra_fast", "ar_samples": 2,
                "steps": 2, "max_mel_tokens": 20, "text": "Hello there.", "voices": ["random"], "seed": 3}
    paths["settings"].write_text(json.dumps({"version": 1, "settings": settings}))
    monkeypatch.setenv("TURTLE_SETTINGS", str(paths["settings"]))
    return paths


def start_app() -> AppTest:
    at = AppTest.from_file(str(webui.app_path()), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def messages(at, kind="error"):
    return [e.value for e in getattr(at, kind)]


def no_traceback(at):
    text = " ".join(messages(at) + messages(at, "warning") + [m.value for m in at.markdown])
    return "Traceback" not in text and 'File "' not in text


def test_generate_shows_player_and_history_survives_rerun_and_restart(app_env):
    at = start_app()
    assert messages(at) == [] and messages(at, "warning") == []
    assert at.multiselect(key="w_voices").value == ["random"]
    assert "cpu" in at.selectbox(key="w_device").options  # from the device layer
    assert any("AR batch" in c.value for c in at.sidebar.code)  # the device panel holds the doctor report
    at.button(key="generate").click().run()
    assert not at.exception and messages(at) == []
    assert len(at.get("audio")) == 1 and len(at.get("download_button")) == 1
    status = at.get("status")[0] if at.get("status") else None
    assert status is not None and "1 clip(s), 0 failure(s)" in status.label  # progress ends with the summary
    stage = [c.value for c in status.children.values() if c.type == "caption"]
    assert stage and "Vocoding" in stage[0], stage  # the pipeline's last stage (the vocoder) was shown
    runs = [p for p in app_env["out"].iterdir() if p.is_dir()]
    assert len(runs) == 1
    wav, rate = sf.read(str(runs[0] / "random_00_00.wav"))
    assert rate == 24000 and wav.size > 0 and np.isfinite(wav).all()

    at.run()  # any rerun (a click elsewhere) keeps the results on the page
    assert len(at.get("audio")) == 1
    at.number_input(key="w_seed").set_value(11).run()
    saved = json.loads(app_env["settings"].read_text())["settings"]
    assert saved["seed"] == 11 and saved["max_mel_tokens"] == 20

    again = start_app()  # a new session (browser reload, server restart): settings and history come back
    assert again.number_input(key="w_seed").value == 11
    assert len(again.get("audio")) == 1
    (entry,) = json.loads((app_env["out"] / HISTORY_FILE).read_text())
    assert entry["seed"] == 3 and entry["finished"] and entry["clips"][0]["file"] == "random_00_00.wav"


def test_upload_voice_then_failures_are_shown_and_others_kept(app_env):
    at = start_app()
    at.text_input(key="upload_name").input("Tone Speaker")
    at.file_uploader(key="upload_files").set_value([("a.wav", tone(2.0), "audio/wav"),
                                                    ("b.flac", tone(3.0, fmt="FLAC", freq=330), "audio/flac")])
    at.button(key="upload_button").click().run()
    assert not at.exception and messages(at) == []
    assert any("Created voice 'Tone_Speaker' with 2 clip(s)" in s.value for s in at.success)
    assert at.multiselect(key="w_voices").value == ["Tone_Speaker"]  # the new voice is selected
    assert sorted(p.name for p in (app_env["voices"] / "Tone_Speaker").iterdir()) == ["a.wav", "b.flac"]

    # a voice whose clip cannot be read (copied in by hand, so no upload check saw it)
    (app_env["voices"] / "broken").mkdir()
    (app_env["voices"] / "broken" / "clip.wav").write_bytes(b"RIFF....WAVEjunk")
    at.run()
    assert "broken" in at.multiselect(key="w_voices").options
    at.multiselect(key="w_voices").set_value(["Tone_Speaker", "broken"])
    # two chunks: the first tokenizes past the model's 400-token limit, the second is fine
    at.text_area(key="w_text").input("q " * 470 + "end. Hello there.")
    at.number_input(key="w_min_chars_to_split").set_value(900)
    at.button(key="generate").click().run()
    assert not at.exception and no_traceback(at)
    errors = messages(at)
    assert any(e.startswith("Voice broken: Cannot read voice clip") for e in errors), errors
    assert any("Tone_Speaker · clip 1" in e and "Text too long" in e for e in errors), errors
    assert len(at.get("audio")) == 1, errors  # Tone_Speaker's second chunk survived both failures
    run = next(p for p in app_env["out"].iterdir() if p.is_dir())
    assert sorted(p.name for p in run.iterdir()) == ["Tone_Speaker_01_00.wav"]  # no combined file with a hole


def test_bad_uploads_are_refused_with_a_message(app_env):
    at = start_app()
    at.text_input(key="upload_name").input("mine")
    at.file_uploader(key="upload_files").set_value(("notes.wav", b"this is not audio", "audio/wav"))
    at.button(key="upload_button").click().run()
    assert not at.exception
    errors = messages(at)  # was: "notes.wav: cannot be read as audio (Error opening <_io.BytesIO object at 0x...>: ..."
    assert any(e.startswith("notes.wav: this is not an audio file") for e in errors), errors
    assert not any("<_io" in e or "object at 0x" in e for e in errors)
    assert not app_env["voices"].exists()

    at.text_input(key="upload_name").input("random")
    at.file_uploader(key="upload_files").set_value(("ok.wav", tone(), "audio/wav"))
    at.button(key="upload_button").click().run()
    assert any("reserved" in e for e in messages(at)) and not app_env["voices"].exists()

    at.text_input(key="upload_name").input("twice")
    at.file_uploader(key="upload_files").set_value(("ok.wav", tone(), "audio/wav"))
    at.button(key="upload_button").click().run()
    assert any("Created voice 'twice'" in s.value for s in at.success)
    before = sorted(p.name for p in (app_env["voices"] / "twice").iterdir())
    at.text_input(key="upload_name").input("twice")
    at.file_uploader(key="upload_files").set_value(("ok.wav", tone(freq=400), "audio/wav"))
    at.button(key="upload_button").click().run()
    assert any("already exists" in e for e in messages(at))
    assert sorted(p.name for p in (app_env["voices"] / "twice").iterdir()) == before


def test_api_errors_are_messages_not_tracebacks(app_env, tmp_path):
    at = start_app()
    at.text_area(key="w_text").input("   ")
    at.button(key="generate").click().run()
    assert messages(at) == ["Type some text to speak first."]

    at.text_area(key="w_text").input("Hello.")
    at.text_input(key="w_models_dir").input(str(tmp_path / "no_models_here"))
    at.button(key="generate").click().run()
    assert not at.exception and no_traceback(at)
    errors = messages(at)
    assert len(errors) == 1 and errors[0].startswith("Could not load the models:"), errors
    assert len(errors[0].splitlines()) == 1
    assert not app_env["out"].exists()  # nothing was started


def test_corrupt_settings_file_falls_back_with_a_warning(app_env):
    app_env["settings"].write_text("{this is not json")
    at = start_app()
    warnings = messages(at, "warning")
    assert len(warnings) == 1 and "corrupt" in warnings[0]
    at.number_input(key="w_candidates").set_value(2).run()
    assert json.loads(app_env["settings"].read_text())["settings"]["candidates"] == 2  # rewritten, valid again


def test_checkout_script_draws_the_same_page(app_env):
    from pathlib import Path
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "scripts" / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception and at.title[0].value == "Tortoise text to speech"
    assert at.button(key="generate").label == "Generate"


class Interrupted(BaseException):
    """Stands in for Streamlit's Stop/Rerun control exceptions (BaseException too), raised from a page call."""


def test_interrupted_run_keeps_finished_clips_in_history(tmp_path, tiny_models_dir):
    from tortoise.api import TextToSpeech
    from tortoise.webui import generation
    tts = TextToSpeech(models_dir=str(tiny_models_dir), device="cpu")
    job = generation.Job(text="First sentence here. Second one here.", groups=[["random"]], preset="ultra_fast",
                         seed=1, min_chars_to_split=20,
                         overrides={"num_autoregressive_samples": 2, "diffusion_iterations": 2, "max_mel_tokens": 20})
    saved = []

    def progress(message, done, total):
        if done == 1:  # the user pressed Stop while clip 2 was about to start
            raise Interrupted()

    def on_update(record):
        generation.save_history(tmp_path, [record.to_dict()])
        saved.append(len(record.clips))

    with pytest.raises(Interrupted):
        generation.run_job(tts, job, tmp_path, progress, on_update)
    assert saved == [0, 1]
    (entry,) = generation.load_history(tmp_path)
    assert not entry["finished"] and [c["file"] for c in entry["clips"]] == ["random_00_00.wav"]
    assert (tmp_path / entry["run_id"] / "random_00_00.wav").is_file()


FLAG = __import__("re").compile(r"(?<![\w-])--[a-z]")  # a command-line flag in a message


def test_page_served_beyond_localhost_shows_server_paths_read_only(app_env, tmp_path, tiny_models_dir,
                                                                   monkeypatch):
    """Was: any visitor could point the server at any models, voices or output directory."""
    from streamlit import config
    config.set_option("server.address", "0.0.0.0")  # `turtle --host 0.0.0.0`
    server_out, evil = tmp_path / "server_out", tmp_path / "evil"
    monkeypatch.setenv("TURTLE_MODELS_DIR", str(tiny_models_dir))
    monkeypatch.setenv("TURTLE_OUTPUT_DIR", str(server_out))
    monkeypatch.setenv("TURTLE_VOICES_DIR", str(tmp_path / "server_voices"))
    saved = json.loads(app_env["settings"].read_text())
    saved["settings"]["models_dir"] = str(tmp_path / "not_the_models")  # what the file says must not count here
    app_env["settings"].write_text(json.dumps(saved))
    at = start_app()
    for key, value in (("w_models_dir", str(tiny_models_dir)), ("w_output_dir", str(server_out)),
                       ("w_extra_voices_dir", str(tmp_path / "server_voices"))):
        assert at.text_input(key=key).disabled and at.text_input(key=key).value == value, key
    assert at.text_input(key="w_ar_checkpoint").disabled and at.text_input(key="w_ar_checkpoint").value == ""
    assert any("no login" in c.value for c in at.sidebar.caption)
    # a client that sends values for the read-only widgets anyway (a forged message) changes nothing on the server
    at.session_state["w_output_dir"] = str(evil)
    at.session_state["w_models_dir"] = str(tmp_path / "visitor_models")
    at.number_input(key="w_seed").set_value(12)
    at.button(key="generate").click().run()
    assert not at.exception and messages(at) == [], messages(at)
    assert not evil.exists() and len(at.get("audio")) == 1
    assert [p.name for p in server_out.iterdir() if p.is_dir()]  # the run went where the server said
    assert at.text_input(key="w_output_dir").value == str(server_out)
    kept = json.loads(app_env["settings"].read_text())["settings"]
    assert kept["seed"] == 12 and kept["models_dir"] == str(tmp_path / "not_the_models")  # paths not remembered
    assert kept["output_dir"] == str(app_env["out"])


def test_localhost_page_takes_paths_from_turtle_flags_and_lets_them_be_edited(app_env, tmp_path, tiny_models_dir,
                                                                              monkeypatch):
    monkeypatch.setenv("TURTLE_OUTPUT_DIR", str(tmp_path / "from_flag"))
    at = start_app()
    box = at.text_input(key="w_output_dir")
    assert not box.disabled and box.value == str(tmp_path / "from_flag")  # the flag wins over the file
    assert at.text_input(key="w_models_dir").value == str(tiny_models_dir)  # from the file
    box.input(str(tmp_path / "typed")).run()
    assert at.text_input(key="w_output_dir").value == str(tmp_path / "typed")


def test_page_errors_name_the_page_controls_not_cli_flags(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    at = start_app()
    at.text_input(key="w_models_dir").input(str(tmp_path / "no_models_here"))
    at.button(key="generate").click().run()
    (error,) = messages(at)
    assert "autoregressive.pth" in error and "Models directory" in error and not FLAG.search(error), error
    # [bracketed] text is checked before anything is rendered
    at.text_input(key="w_models_dir").input(str(app_env["settings"].parent / "unused"))
    at.text_area(key="w_text").input("[whispering]")
    at.button(key="generate").click().run()
    (error,) = messages(at)
    assert "entirely in [brackets]" in error and "remove the brackets" in error and not FLAG.search(error), error
    at.text_area(key="w_text").input("[whispering] Hello there.")
    at.button(key="generate").click().run()
    (error,) = messages(at)
    assert "wav2vec2 aligner" in error and "remove the brackets" in error and not FLAG.search(error), error
    assert not app_env["out"].exists()  # nothing was started
