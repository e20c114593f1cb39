"""The tortoise-tts command end to end on tiny random-weight models: files, voices, resume, regeneration, streaming,
and every bad-input case exiting non-zero with one line (no traceback) and keeping finished clips."""
import functools
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_tone
from tortoise import cli

QUICK = ["--num_autoregressive_samples", "2", "--max_mel_tokens", "20", "--steps", "2", "--vocoder", "univnet",
         "-p", "ultra_fast", "--seed", "3", "-q"]
TWO_SENTENCES = "Hello there, my friend. This is the second sentence of this text."


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TORTOISE_DEVICE", raising=False)


tone = functools.partial(write_tone, tremolo=True)  # (path, seconds, f0)


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    for name, f0 in (("alice", 220.0), ("bob", 140.0)):
        (root / name).mkdir()
        tone(root / name / "a.wav", 2.0, f0)
        tone(root / name / "b.wav", 1.5, f0 * 1.3)
    return root


def run(models_dir, out, *args, voices=None):
    argv = ["--models_dir", str(models_dir), "-O", str(out), *QUICK, *args]
    if voices is not None:
        argv = ["-V", str(voices), *argv]
    return cli.main(argv)


def wav_info(path):
    info = sf.info(str(path))
    return info.samplerate, info.frames


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("tortoise-tts: error:") and "Traceback" not in err[0]
    return err[0]


def test_long_text_is_rendered_clip_by_clip(models_dir, voices, tmp_path):
    out = tmp_path / "out"
    assert run(models_dir, out, "-v", "alice", "--text_split", "20,40", TWO_SENTENCES, voices=voices) == 0
    names = sorted(p.name for p in out.iterdir())
    clips = [n for n in names if n.startswith("alice_0")]
    assert len(clips) >= 2 and clips[0] == "alice_00_00.wav" and "alice_combined.wav" in names
    assert not [n for n in names if n.startswith(".")]  # no temporary files left behind
    total = 0
    for n in clips:
        sr, frames = wav_info(out / n)
        assert sr == 24000 and frames > 0
        total += frames
    assert wav_info(out / "alice_combined.wav") == (24000, total)


def test_candidates_voices_and_output_file(models_dir, voices, tmp_path):
    out, single = tmp_path / "out", tmp_path / "one.wav"
    assert run(models_dir, out, "-v", "alice&bob", "--candidates", "2", "-o", str(single), "Short text.",
               voices=voices) == 0
    assert {p.name for p in out.iterdir()} == {"alice-bob_00_00.wav", "alice-bob_00_01.wav",
                                               "alice-bob_combined.wav"}
    assert wav_info(single) == wav_info(out / "alice-bob_combined.wav")
    assert run(models_dir, out, "-v", "alice,random", "Short text.", voices=voices) == 0
    assert {"alice_00_00.wav", "random_00_00.wav", "random_combined.wav"} <= {p.name for p in out.iterdir()}


def test_pth_latents_voice(models_dir, voices, tmp_path):
    from tortoise import get_conditioning_latents as gcl
    lat_dir = tmp_path / "lat"
    assert gcl.main(["-V", str(voices), "-v", "bob", "-O", str(lat_dir), "--models_dir", str(models_dir)]) == 0
    vdir = tmp_path / "v"
    (vdir / "bobl").mkdir(parents=True)
    os.replace(lat_dir / "bob.pth", vdir / "bobl" / "bob.pth")
    auto, diff = torch.load(vdir / "bobl" / "bob.pth", weights_only=True)
    assert auto.dim() == 2 and diff.dim() == 2
    out = tmp_path / "out"
    assert run(models_dir, out, "-v", "bobl", "Short text.", voices=vdir) == 0
    assert (out / "bobl_combined.wav").is_file()


def test_regenerate_and_skip_existing(models_dir, voices, tmp_path):
    out = tmp_path / "out"
    args = ("-v", "alice", "--text_split", "20,40", TWO_SENTENCES)
    assert run(models_dir, out, *args, voices=voices) == 0
    first, second = out / "alice_00_00.wav", out / "alice_01_00.wav"
    stamp = {p: p.stat().st_mtime_ns for p in (first, second)}
    before = first.read_bytes()
    assert run(models_dir, out, *args[:-1], "--regenerate", "1", args[-1], voices=voices) == 0
    assert first.stat().st_mtime_ns == stamp[first] and first.read_bytes() == before  # kept as it was
    assert second.stat().st_mtime_ns != stamp[second]  # rendered again
    second.unlink()
    assert run(models_dir, out, *args[:-1], "--skip_existing", args[-1], voices=voices) == 0
    assert first.stat().st_mtime_ns == stamp[first] and second.is_file()  # resumed: only the missing clip


def test_stream_flag_and_device(models_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setenv("TORTOISE_DEVICE", "xpu")  # absent here: --device cpu must win over it
    assert run(models_dir, out, "--stream", "--device", "cpu", "Short text for streaming.") == 0
    sr, frames = wav_info(out / "random_00_00.wav")
    assert sr == 24000 and frames > 0
    capsys.readouterr()
    assert run(models_dir, tmp_path / "out2", "--stream", "Short text.") != 0  # no --device: TORTOISE_DEVICE honoured
    assert "TORTOISE_DEVICE" in one_error_line(capsys)


def test_text_from_stdin_and_list_voices(models_dir, voices, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Text from standard input.\n"))
    out = tmp_path / "out"
    assert run(models_dir, out, "-v", "bob", voices=voices) == 0
    assert (out / "bob_00_00.wav").is_file()
    capsys.readouterr()
    assert cli.main(["-V", str(voices), "--list_voices"]) == 0
    assert capsys.readouterr().out.split() == ["random", "alice", "bob"]


BAD_INPUTS = [  # (extra argv, text on the command line or None for an empty stdin, expected fragment)
    ([], None, "text is empty"),
    (["-v", "carol"], "Hi.", "Unknown voice 'carol'. Known voices: random, alice, bob"),
    (["-v", "../alice"], "Hi.", "Invalid voice name"),
    (["-v", "broken"], "Hi.", "Cannot read voice clip"),
    (["--device", "xpu"], "Hi.", "no XPU device is available"),
    (["--text_split", "300,200"], "Hi.", "--text_split"),
    (["--regenerate", "5"], "Hi.", "clip 5 does not exist"),
    (["--candidates", "3"], "Hi.", "exceeds the 2 autoregressive samples"),
    (["--top_p", "0"], "Hi.", "top_p"),
    (["--sampler", "euler"], "Hi.", "invalid choice"),
    (["--cond_free", "maybe"], "Hi.", "expected true or false"),
]


@pytest.mark.parametrize("extra,text,fragment", BAD_INPUTS, ids=[b[2][:20] for b in BAD_INPUTS])
def test_bad_input_is_one_line(models_dir, voices, tmp_path, monkeypatch, capsys, extra, text, fragment):
    (voices / "broken").mkdir(exist_ok=True)
    (voices / "broken" / "x.wav").write_bytes(b"RIFF nonsense")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    args = [*extra] + ([text] if text else [])
    code = run(models_dir, tmp_path / "out", *args, voices=voices)
    assert code != 0
    assert fragment in one_error_line(capsys)


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    code = run(tmp_path / "empty_models", tmp_path / "out", "Hi.")
    assert code != 0
    line = one_error_line(capsys)
    assert "autoregressive.pth" in line and "--models_dir" in line


def test_failure_keeps_finished_clips(models_dir, voices, tmp_path, monkeypatch, capsys):
    from tortoise.session import Session
    real, calls = Session.speak, []

    def fails_second_time(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the middle of a run")
        return real(self, *a, **kw)

    monkeypatch.setattr(Session, "speak", fails_second_time)
    out = tmp_path / "out"
    assert run(models_dir, out, "-v", "alice", "--text_split", "20,40", TWO_SENTENCES, voices=voices) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tortoise-tts: error: RuntimeError: simulated failure")
    assert "--skip_existing" in err[0]
    assert (out / "alice_00_00.wav").is_file() and not (out / "alice_combined.wav").exists()


def test_console_script_and_detector(models_dir, tmp_path):
    """The installed entry points run as processes (one line of output on error, a probability on success)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = tmp_path / "out"
    script = os.path.join(os.path.dirname(__file__), "..", "script", "tortoise-tts.py")
    ok = subprocess.run([sys.executable, script, "--models_dir", str(models_dir), "-O", str(out), *QUICK, "Hi."],
                        env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    det = subprocess.run([sys.executable, "-m", "tortoise.is_this_from_tortoise", str(out / "random_00_00.wav"),
                          "--models_dir", str(models_dir)], env=env, capture_output=True, text=True, timeout=300)
    assert det.returncode == 0, det.stderr
    assert "chance that this clip was generated from Tortoise" in det.stdout
    bad = subprocess.run([sys.executable, "-m", "tortoise.is_this_from_tortoise", str(tmp_path / "nope.wav")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


def test_auto_vocoder_uses_a_local_bigvgan(models_dir, tmp_path):
    """--vocoder auto picks BigVGAN base when its directory (NVIDIA's layout) is in the models dir."""
    import json
    import shutil

    from tortoise.models.bigvgan import BigVGAN
    from tortoise.models.vocoder import BIGVGAN_BASE_24KHZ_100BAND
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    assert cli.choose_vocoder("auto", str(models)) == "univnet"
    big = models / "bigvgan_base_24khz_100band"
    big.mkdir()
    cfg = dict(BIGVGAN_BASE_24KHZ_100BAND, upsample_initial_channel=32, resblock_kernel_sizes=[3],
               resblock_dilation_sizes=[[1, 3]])
    (big / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    torch.save({"generator": BigVGAN(cfg).state_dict()}, big / "bigvgan_generator.pt")
    assert cli.choose_vocoder("auto", str(models)) == "bigvgan_base"
    argv = ["--models_dir", str(models), "-O", str(tmp_path / "out"), *QUICK, "Hi."]
    argv[argv.index("--vocoder") + 1] = "auto"
    assert cli.main(argv) == 0
    sr, frames = wav_info(tmp_path / "out" / "random_00_00.wav")
    assert sr == 24000 and frames > 0


def test_text_option_as_in_the_original(models_dir, voices, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(models_dir, out, "-v", "alice", "--text", "Said with the text flag.", voices=voices) == 0
    assert (out / "alice_00_00.wav").is_file()
    code = run(models_dir, tmp_path / "out2", "-v", "alice", "--text", "One.", "Two.", voices=voices)
    assert code != 0 and "text given twice" in one_error_line(capsys)
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_exact_ranking_flag_reaches_the_options():
    args = cli.build_parser().parse_args(["--exact_ranking", "-p", "ultra_fast", "Hi."])
    assert cli.generation_options(args).exact_ranking is True
    args = cli.build_parser().parse_args(["-p", "ultra_fast", "Hi."])
    assert cli.generation_options(args).exact_ranking is False


def test_earlier_output_is_not_replaced_unless_asked(models_dir, voices, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(models_dir, out, "-v", "alice", "First run.", voices=voices) == 0
    clip = out / "alice_00_00.wav"
    before = clip.read_bytes()
    capsys.readouterr()
    assert run(models_dir, out, "-v", "alice", "Second run.", voices=voices) != 0
    line = one_error_line(capsys)
    assert "alice_00_00.wav exists" in line and "--overwrite" in line
    assert clip.read_bytes() == before
    mine = tmp_path / "mine.wav"
    mine.write_bytes(b"the user's own file")
    assert run(models_dir, tmp_path / "other", "-v", "alice", "-o", str(mine), "Hi.", voices=voices) != 0
    assert "mine.wav exists" in one_error_line(capsys) and mine.read_bytes() == b"the user's own file"
    assert run(models_dir, out, "-v", "alice", "--overwrite", "Second run.", voices=voices) == 0
    assert clip.read_bytes() != before


def test_latents_file_is_not_replaced_unless_asked(models_dir, voices, tmp_path, capsys):
    from tortoise import get_conditioning_latents as gcl
    argv = ["-V", str(voices), "-v", "bob", "-O", str(tmp_path), "--models_dir", str(models_dir)]
    (tmp_path / "bob.pth").write_bytes(b"the user's latents")
    assert gcl.main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--overwrite" in err[0]
    assert (tmp_path / "bob.pth").read_bytes() == b"the user's latents"
    assert gcl.main(argv + ["--overwrite"]) == 0
    auto, diff = torch.load(tmp_path / "bob.pth", weights_only=True)
    assert auto.dim() == 2 and diff.dim() == 2


# ---------------------------------------------------------------- non-finite clips, latents of the wrong shape

def nan_clip(path, sr=22050):
    wave = (0.3 * np.sin(np.arange(sr) / 7)).astype(np.float32)
    wave[100:110] = np.nan
    sf.write(str(path), wave, sr, subtype="FLOAT")


def test_clip_with_nan_samples_is_refused_before_any_model(models_dir, tmp_path, monkeypatch, capsys):
    """Was: 100% NaN audio written and reported as success."""
    vdir = tmp_path / "v"
    (vdir / "nanny").mkdir(parents=True)
    tone(vdir / "nanny" / "good.wav", 1.0, 200.0)
    nan_clip(vdir / "nanny" / "damaged.wav")
    from tortoise.api import TextToSpeech
    monkeypatch.setattr(TextToSpeech, "__init__", lambda *a, **k: pytest.fail("models loaded for a bad voice"))
    out = tmp_path / "out"
    assert run(models_dir, out, "-v", "nanny", "Hi.", voices=vdir) == cli.EXIT_BAD_INPUT
    line = one_error_line(capsys)
    assert "damaged.wav" in line and "NaN or infinite" in line
    assert not out.exists() or not any(out.iterdir())


def test_latents_of_the_wrong_shape_name_the_file_and_the_shapes(models_dir, tmp_path, capsys):
    vdir = tmp_path / "v"
    for name, pair in (("released", (torch.zeros(1, 1024), torch.zeros(1, 2048))),  # real-model latents, tiny models
                       ("flat", (torch.zeros(64, 1), torch.zeros(128))),
                       ("nan", (torch.full((1, 64), float("nan")), torch.zeros(1, 128)))):
        (vdir / name).mkdir(parents=True)
        torch.save(pair, vdir / name / f"{name}.pth")
    out = tmp_path / "out"
    assert run(models_dir, out, "-v", "released", "Hi.", voices=vdir) == cli.EXIT_BAD_INPUT
    line = one_error_line(capsys)
    assert "released.pth" in line and "[1, 1024] and [1, 2048]" in line
    assert "autoregressive latent [1, 64]" in line and "diffusion latent [1, 128]" in line  # the tiny models' widths
    assert run(models_dir, out, "-v", "flat", "Hi.", voices=vdir) == cli.EXIT_BAD_INPUT
    assert "flat.pth" in one_error_line(capsys)
    assert run(models_dir, out, "-v", "nan", "Hi.", voices=vdir) == cli.EXIT_BAD_INPUT
    assert "nan.pth" in (line := one_error_line(capsys)) and "NaN or infinite" in line
    assert not out.exists() or not any(out.iterdir())


def test_conditioning_latents_never_saves_non_finite_latents(models_dir, tmp_path, monkeypatch, capsys):
    from tortoise import get_conditioning_latents as gcl
    from tortoise.api import TextToSpeech
    vdir = tmp_path / "v"
    (vdir / "nanny").mkdir(parents=True)
    nan_clip(vdir / "nanny" / "damaged.wav")
    (vdir / "fine").mkdir()
    tone(vdir / "fine" / "a.wav", 1.0, 200.0)
    out = tmp_path / "lat"
    argv = ["-V", str(vdir), "-O", str(out), "--models_dir", str(models_dir)]
    assert gcl.main(argv + ["-v", "nanny"]) == 2  # bad input: the clip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged.wav" in err[0] and "NaN or infinite" in err[0]
    # finite clips, but the models give NaN (e.g. damaged weights): a run-time failure, nothing saved
    real = TextToSpeech.get_conditioning_latents
    monkeypatch.setattr(TextToSpeech, "get_conditioning_latents",
                        lambda self, *a, **k: tuple(t * float("nan") for t in real(self, *a, **k)))
    assert gcl.main(argv + ["-v", "fine"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite" in err[0] and "nothing was saved" in err[0]
    assert not (out / "fine.pth").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- exit codes of the other console scripts

def test_detector_exit_codes(models_dir, tmp_path, monkeypatch, capsys):
    from tortoise import api, is_this_from_tortoise as detect
    clip = tmp_path / "clip.wav"
    tone(clip, 1.0, 200.0)
    nan_clip(tmp_path / "nan.wav")
    for argv, code, fragment in (([], 2, "give the audio file"),
                                 ([str(tmp_path / "missing.wav")], 2, "not found"),
                                 ([str(tmp_path / "nan.wav")], 2, "NaN or infinite"),
                                 ([str(clip), "--models_dir", str(tmp_path / "no_models")], 2, "classifier.pth")):
        assert detect.main(argv) == code, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    monkeypatch.setattr(api, "classify_audio_clip", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    assert detect.main([str(clip), "--models_dir", str(models_dir)]) == 1  # a failure at run time
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: boom" in err[0]
    with pytest.raises(SystemExit) as e:
        detect.main(["--no-such-flag"])
    assert e.value.code == 2


def test_conditioning_latents_exit_codes(models_dir, voices, tmp_path, monkeypatch, capsys):
    from tortoise import get_conditioning_latents as gcl
    from tortoise.api import TextToSpeech
    base = ["-V", str(voices), "-O", str(tmp_path / "lat"), "--models_dir", str(models_dir)]
    assert gcl.main(base + ["-v", "carol"]) == 2  # unknown voice: bad input (was 1)
    assert "Unknown voice 'carol'" in capsys.readouterr().err
    assert gcl.main(base + ["-v", "random"]) == 2
    assert "no clips to encode" in capsys.readouterr().err
    monkeypatch.setattr(TextToSpeech, "get_conditioning_latents",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("device lost")))
    assert gcl.main(base + ["-v", "alice"]) == 1
    assert "RuntimeError: device lost" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        gcl.main(["-V", str(voices)])  # --voice missing
    assert e.value.code == 2


# ---------------------------------------------------------------- text that is not UTF-8

def test_non_utf8_stdin_is_refused_not_dropped(models_dir, tmp_path):
    """Was: under the C/POSIX locale Python reads stdin with surrogateescape, and the cleaners silently dropped the
    undecodable 'é' of a cp1252 file (exit 0)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING")}
    env.update(LC_ALL="C", LANG="C", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    code = "import sys; from tortoise.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "--models_dir", str(models_dir), "-O", str(out), *QUICK],
                          input="Caf\u00e9 au lait, s'il vous pla\u00eet.\n".encode("cp1252"), env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "not valid utf-8" in err[0] and "e9" in err[0] and "--encoding" in err[0], err
    assert not out.exists()


def test_encoding_option_decodes_stdin():
    args = cli.build_parser().parse_args(["--encoding", "cp1252"])
    stdin = io.TextIOWrapper(io.BytesIO("Caf\u00e9 au lait.".encode("cp1252")))
    assert cli.read_text(args, stdin=stdin) == "Caf\u00e9 au lait."
    args = cli.build_parser().parse_args([])
    bom = io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfHello \xe2\x80\x94 there."))  # UTF-8 with a byte-order mark
    assert cli.read_text(args, stdin=bom) == "Hello \u2014 there."
    with pytest.raises(cli.UsageError, match="not an encoding"):
        cli.read_text(cli.build_parser().parse_args(["--encoding", "klingon"]),
                      stdin=io.TextIOWrapper(io.BytesIO(b"Hi.")))
    with pytest.raises(cli.UsageError, match="not valid in this system's encoding"):  # argv decoded by the locale
        cli.read_text(cli.build_parser().parse_args(["Caf\udce9."]))


@pytest.mark.parametrize("native_bf16", [False, True], ids=["avx2-cpu", "bf16-cpu"])
def test_half_on_a_cpu_without_native_bf16_says_so_in_one_line(models_dir, tmp_path, native_bf16):
    """A real subprocess whose CPU features are faked at the device layer (xpu.testing.cpu_features), so the test
    holds on every build machine: without native bf16 --half says in one line that it runs float32; with it, --half
    takes bf16 and says nothing."""
    code = ("import sys, pytest; from xpu.testing import cpu_features; "
            f"cpu_features(pytest.MonkeyPatch(), bf16={native_bf16}); "
            "from tortoise.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "--models_dir", str(models_dir), *QUICK, "--half",
                           "-O", str(tmp_path / "o"), "Hi."], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    half_lines = [line for line in proc.stderr.splitlines() if "--half" in line]
    if not native_bf16:
        assert half_lines == ["tortoise-tts: warning: --half: none (float32): CPU without native bf16: half precision "
                              "would be emulated and slower; running float32"]
    else:
        assert half_lines == []


def test_threads_flag(models_dir, tmp_path):
    with pytest.raises(cli.UsageError, match="--threads must be at least 1"):
        cli.check_model_args(cli.build_parser().parse_args(["--threads", "0", "Hi."]))
    args = cli.build_parser().parse_args(["--threads", "1", "Hi."])
    assert cli.model_options(args, "univnet").threads == 1


def test_the_load_line_says_precision_and_threads(models_dir, tmp_path, capsys):
    code = cli.main(["--models_dir", str(models_dir), *QUICK[:-1], "--threads", "1", "-O", str(tmp_path / "o"),
                     "Hi."])
    assert code == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Loaded on")]
    assert len(line) == 1 and "(f32, 1 thread, batch size" in line[0], line
