"""Progress that reads well anywhere: one bar per stage on a terminal, one line per stage in a log."""
import io
import os
import re
import subprocess
import sys

import pytest

from tortoise.progress import TqdmProgress

# what a one-candidate generation reports: the AR stage in samples (fractions within a batch), then the late
# end report that used to draw a second bar, diffusion and the vocoder taking turns per candidate
REPORTS = [("conditioning", 0, 2), ("conditioning", 1, 2), ("conditioning", 2, 2),
           ("autoregressive", 0, 4), ("autoregressive", 1.5, 4), ("autoregressive", 4, 4), ("autoregressive", 4, 4),
           ("ranking", 0, 1), ("ranking", 1, 1), ("latents", 0, 1), ("latents", 1, 1),
           ("diffusion", 0, 6), ("diffusion", 3, 6), ("vocoder", 0, 2), ("vocoder", 1, 2),
           ("diffusion", 6, 6), ("vocoder", 2, 2)]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_in_a_log_one_line_per_stage_with_its_count_and_time():
    log = io.StringIO()
    progress = TqdmProgress(stream=log)
    for report in REPORTS:
        progress(*report)
    progress.close()
    lines = log.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "Conditioning on the voice", "Drawing autoregressive samples", "Ranking candidates (CLVP)",
        "Autoregressive latents", "Diffusion", "Vocoding"]
    assert re.fullmatch(r"Drawing autoregressive samples: 4 samples in \d+\.\d s", lines[1])
    assert lines[4].startswith("Diffusion: 6 steps in ") and lines[5].startswith("Vocoding: 2 clips in ")


def test_on_a_terminal_one_bar_per_stage(monkeypatch):
    import tqdm
    made = []
    real = tqdm.tqdm

    def spy(*a, **kw):
        made.append(kw["desc"])
        return real(*a, **kw)
    monkeypatch.setattr(tqdm, "tqdm", spy)
    screen = Terminal()
    progress = TqdmProgress(stream=screen)
    for report in REPORTS:
        progress(*report)
    progress.close()
    assert made == ["Conditioning on the voice", "Drawing autoregressive samples", "Ranking candidates (CLVP)",
                    "Autoregressive latents", "Diffusion", "Vocoding"]
    drawn = screen.getvalue()
    assert "1.5/4 samples" in drawn and "/6 steps" in drawn
    assert not re.search(r"\d{5,}\.\d+it/s", drawn)  # no bar jumping to 100% at millions of it/s


def test_disabled_reports_nothing():
    log = io.StringIO()
    progress = TqdmProgress(enabled=False, stream=log)
    for report in REPORTS:
        progress(*report)
    assert log.getvalue() == ""


def test_the_pipeline_counts_samples_and_ends_each_stage(models_dir):
    from tortoise import api
    seen = []
    tts = api.TextToSpeech(models_dir=models_dir, device="cpu", autoregressive_batch_size=2, enable_redaction=False)
    tts.tts("Hi there.", verbose=False, use_deterministic_seed=1, num_autoregressive_samples=4, max_mel_tokens=20,
            diffusion_iterations=2, k=2, progress=lambda *r: seen.append(r))
    ar = [(done, total) for stage, done, total in seen if stage == "autoregressive"]
    assert ar[0] == (0, 4) and ar[-1] == (4, 4) and all(t == 4 for _, t in ar)
    assert all(b >= a for (a, _), (b, _) in zip(ar, ar[1:]))  # never backwards
    assert any(0 < d < 2 for d, _ in ar)  # within the first batch of 2: fractions
    for stage in ("ranking", "latents", "diffusion", "vocoder"):
        ends = [(d, t) for s, d, t in seen if s == stage]
        assert ends[0][0] == 0 and ends[-1][0] == ends[-1][1], (stage, ends)


@pytest.mark.parametrize("quiet", [False, True])
def test_a_run_logged_to_a_file_is_a_few_lines(models_dir, tmp_path, quiet):
    err = tmp_path / "err.log"
    with open(err, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "tortoise.cli", "--models_dir", str(models_dir),
                               "--num_autoregressive_samples", "2", "--max_mel_tokens", "20", "--steps", "2",
                               "-p", "ultra_fast", "--seed", "3", "-O", str(tmp_path / "o"), "Hi there."]
                              + (["-q"] if quiet else []), stdout=subprocess.PIPE, stderr=f, text=True,
                              timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, err.read_text()[-2000:]
    lines = err.read_text().splitlines()
    stages = [line for line in lines if re.search(r": \d+(\.\d+)? \w+ in \d+\.\d s$", line)]
    if quiet:
        assert stages == []
    else:
        assert len(stages) == 5 and "\r" not in err.read_text(), lines  # the random voice: no conditioning
        assert "Autoregressive latents: 1 pass in" in err.read_text()
        assert len(err.read_text()) < 2000
