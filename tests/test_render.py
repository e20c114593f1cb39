"""The shared render loop as users meet it through tortoise-tts: clips record what made them, so resuming keeps only
current clips; --overwrite never leaves an earlier run's extra clips behind; a failing write is one line naming the
path; -o runs never trip over each other; nothing non-finite is ever written; no empty directory is left behind."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from test_cli import QUICK, TWO_SENTENCES, one_error_line

from tortoise import cli, render
from tortoise.utils import checkpoints

THREE_SENTENCES = TWO_SENTENCES + " And here is a third sentence for good measure."


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TORTOISE_DEVICE", raising=False)


def tts_main(models_dir, *args, quiet=True):
    quick = [a for a in QUICK if not (a == "-q" and not quiet)]
    return cli.main(["--models_dir", str(models_dir), *quick, "--text_split", "20,40", *args])


def clip_files(out):
    return sorted(p.name for p in Path(out).glob("*.wav"))


def test_clips_carry_their_record_and_per_clip_seeds(models_dir, tmp_path):
    out = tmp_path / "o"
    assert tts_main(models_dir, "-O", str(out), TWO_SENTENCES) == 0
    records = [render.read_record(out / f"random_0{i}_00.wav") for i in range(2)]
    assert [r.seed for r in records] == [3, 4] and {r.run_seed for r in records} == {3}
    assert records[0].text.startswith("Hello there") and records[0].voice == "random"
    assert records[0].key != records[1].key
    assert render.read_record(out / "random_combined.wav") is None  # derived from the clips: no record


def test_skip_existing_keeps_current_clips_and_renders_stale_ones(models_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert tts_main(models_dir, "-O", str(out), TWO_SENTENCES) == 0
    before = {n: (out / n).stat().st_mtime_ns for n in clip_files(out)}
    capsys.readouterr()
    changed = TWO_SENTENCES.replace("second", "other")  # clip 1's text changes, clip 0's does not
    assert tts_main(models_dir, "-O", str(out), "--skip_existing", changed, quiet=False) == 0
    said = capsys.readouterr().out
    assert "Keeping random_00_00.wav" in said and "made from other text" in said
    assert (out / "random_00_00.wav").stat().st_mtime_ns == before["random_00_00.wav"]
    assert render.read_record(out / "random_01_00.wav").text.startswith("This is the other")
    # another setting (diffusion steps) makes every clip stale
    assert tts_main(models_dir, "-O", str(out), "--skip_existing", "--steps", "3", changed) == 0
    assert (out / "random_00_00.wav").stat().st_mtime_ns != before["random_00_00.wav"]


def test_resume_without_a_seed_reuses_the_earlier_runs_seed(models_dir, tmp_path, capsys):
    out = tmp_path / "o"
    quick = [a for a in QUICK if a not in ("--seed", "3")]
    args = ["--models_dir", str(models_dir), *quick, "--text_split", "20,40", "-O", str(out)]
    assert cli.main(args + [TWO_SENTENCES]) == 0
    seed = render.read_record(out / "random_00_00.wav").run_seed
    (out / "random_01_00.wav").unlink()  # interrupted before the second clip
    assert cli.main(args + ["--skip_existing", TWO_SENTENCES]) == 0
    assert render.read_record(out / "random_01_00.wav").seed == (seed + 1) % 2 ** 32


def test_overwrite_with_a_shorter_text_removes_the_extra_clips(models_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert tts_main(models_dir, "-O", str(out), THREE_SENTENCES) == 0
    extra = len(clip_files(out)) - 2  # clips past the first, plus the combined file
    assert extra >= 2
    assert tts_main(models_dir, "-O", str(out), "--overwrite", "Just one short clip.", quiet=False) == 0
    assert clip_files(out) == ["random_00_00.wav", "random_combined.wav"]
    assert f"removed {extra} clip file(s) of an earlier, longer run" in capsys.readouterr().out
    combined = sf.info(str(out / "random_combined.wav")).frames
    assert combined == sf.info(str(out / "random_00_00.wav")).frames  # only this run's clip is in it


def test_a_full_disk_is_one_line_naming_the_path_and_finished_clips_stay(models_dir, tmp_path):
    """A real OS error: the file-size limit (RLIMIT_FSIZE) makes a write fail with EFBIG, as a full disk does."""
    out = tmp_path / "o"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (120000, 120000)); "
            "from tortoise.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["--models_dir", str(models_dir), *QUICK, "--text_split", "20,40", "--max_mel_tokens", "20", "-O",
            str(out), TWO_SENTENCES]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    line = next(e for e in err if e.startswith("tortoise-tts: error:"))
    assert "cannot write" in line and str(out) in line and "File too large" in line and "Traceback" not in line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # nothing half-written
    assert "random_00_00.wav" in clip_files(out)  # the first (small) clip was finished and stays
    assert "finished file(s) kept" in proc.stderr


def test_o_runs_never_trip_over_each_other(models_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert tts_main(models_dir, "-o", "a.wav", "Hi there.") == 0
    assert tts_main(models_dir, "-o", "b.wav", "Hello there.") == 0
    assert Path("a.wav").is_file() and Path("b.wav").is_file()
    assert clip_files("results/a") and clip_files("results/b")
    Path("adir").mkdir()
    assert tts_main(models_dir, "-o", "adir", "--overwrite", "Hello.") == 2  # before rendering, one line
    assert "is a directory" in one_error_line(capsys)
    assert not Path("results/adir").exists()


def test_a_run_that_fails_first_leaves_no_directory(models_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["--models_dir", str(tmp_path / "no_models"), *QUICK, "-O", str(out), "Hello."]) == 2
    one_error_line(capsys)
    assert not out.exists()


def test_stream_names_its_vocoder_and_the_summary_names_the_files(models_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert tts_main(models_dir, "-O", str(out), "--stream", "Hello there.", quiet=False) == 0
    said = capsys.readouterr().out
    assert "HiFi-GAN" in said and "univnet" not in said.lower()
    last = said.strip().splitlines()[-1]
    assert last.startswith("Wrote 1 clip file(s)") and "random_00_00.wav" in last and "random_combined.wav" in last


def test_non_finite_audio_is_never_written(models_dir, tmp_path, capsys):
    """A diffusion checkpoint whose weights went NaN: the stage boundary stops the clip with one line."""
    bad = tmp_path / "models"
    bad.mkdir()
    for f in models_dir.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "diffusion_decoder.pth").unlink()
    sd = checkpoints.load_state_dict(models_dir / "diffusion_decoder.pth")
    sd = {k: torch.full_like(v, float("nan")) if k.startswith("out.") else v for k, v in sd.items()}
    torch.save(sd, bad / "diffusion_decoder.pth")
    out = tmp_path / "o"
    assert cli.main(["--models_dir", str(bad), *QUICK, "-O", str(out), "Hello there."]) == 1
    line = one_error_line(capsys)
    assert "NonFiniteError" in line and "diffusion" in line and "NaN" in line
    assert not out.exists() or not clip_files(out)


def test_plan_refuses_before_any_model_loads(tmp_path):
    voice = render.Voice("random")
    settings = render.RenderSettings(render.GenerationOptions(), seed=1)
    job = render.RenderJob(("a", "b"), (voice,), settings, tmp_path)
    (tmp_path / "random_01_00.wav").write_bytes(b"")
    with pytest.raises(render.StaleOutputError, match="random_01_00.wav"):
        render.plan(job)
    tasks = render.plan(render.RenderJob(("a", "b"), (voice,), settings, tmp_path, mode="skip_existing"))
    assert [(t.action, t.reason) for t in tasks] == [("render", "missing"), ("render", "stale")]


def test_clip_seed_is_independent_of_order():
    assert render.clip_seed(7, 0) == 7 and render.clip_seed(7, 3) == 10
    assert render.clip_seed(2 ** 32 - 1, 1) == 0
