"""The README as a newcomer meets it: its runnable blocks run, and its links (and docs/'s) lead somewhere.

A fenced block whose info string has ``runnable`` as its second word (```` ```bash runnable ````,
```` ```python runnable ````) is run for real, offline (``HF_HUB_OFFLINE=1``), in a fresh temporary directory holding a
``script`` link to the checkout's ``script/`` (so ``./script/tortoise-tts.py`` works): bash blocks with
``bash -euo pipefail -c``, python blocks with this interpreter. Only blocks that work offline on tiny random-weight
models and install nothing are marked runnable.

Links: every ``](#anchor)`` and ``](file#anchor)`` in README.md and docs/*.md must name a heading of the target file
(GitHub's anchors: lowercase, spaces to ``-``, punctuation other than ``-`` and ``_`` dropped, ``-1``, ``-2`` for
repeats), and every relative file link must exist.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK_TIMEOUT = 600  # seconds, per runnable block
MIN_RUNNABLE = 3

FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def fenced_blocks(text):
    """[(first line number, info string, body)] of the fenced code blocks of a markdown text."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i + 1
        j = start
        while j < len(lines) and not (lines[j].startswith(fence[0] * len(fence)) and
                                      not lines[j].strip(fence[0]).strip()):
            j += 1
        blocks.append((start, info, "\n".join(lines[start:j])))
        i = j + 1
    return blocks


def prose_lines(text):
    """(line number, line) of the lines outside fenced code blocks."""
    inside = None
    for n, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if inside is None:
            if m:
                inside = m.group(1)
                continue
            yield n, line
        elif line.startswith(inside[0] * len(inside)) and not line.strip(inside[0]).strip():
            inside = None


def runnable_blocks():
    out = []
    for start, info, body in fenced_blocks(README.read_text()):
        words = info.split()
        if len(words) >= 2 and words[1] == "runnable":
            out.append(pytest.param(words[0], body, id=f"{words[0]}-line{start}"))
    return out


RUNNABLE = runnable_blocks()


def slug(heading):
    """GitHub's anchor for a heading's markdown text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"(^|\s)_+|_+(\s|$)", r"\1\2", text)  # _emphasis_ markers (not snake_case)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor GitHub makes for the headings of a markdown file."""
    seen, out = {}, set()
    for _, line in prose_lines(path.read_text()):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path):
    """(line number, target) of the markdown links of a file, outside code blocks and inline code."""
    for n, line in prose_lines(path.read_text()):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            yield n, target


def sandbox(tmp_path):
    (tmp_path / "script").symlink_to(ROOT / "script", target_is_directory=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # the venv's tools first
    return env


def shown(path):
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check_finished(out, what):
    tail = "\n".join((out.stdout + out.stderr).splitlines()[-40:])
    assert out.returncode == 0, f"{what} exited {out.returncode}:\n{tail}"


def test_the_readme_has_runnable_blocks():
    assert len(RUNNABLE) >= MIN_RUNNABLE, f"{len(RUNNABLE)} runnable blocks in README.md, at least {MIN_RUNNABLE} " \
        "wanted (mark a block with an info string such as 'bash runnable')"


@pytest.mark.parametrize("language,body", RUNNABLE)
def test_runnable_blocks_install_nothing(language, body):
    assert language in ("bash", "sh", "python"), f"no way to run a {language!r} block"
    for word in ("pip install", "apt-get", "tortoise-voices fetch", "conda ", "huggingface-cli", "curl ", "wget "):
        assert word not in body, f"a runnable block must work offline and install nothing, but it runs {word!r}"


@pytest.mark.slow
@pytest.mark.parametrize("language,body", RUNNABLE)
def test_runnable_block_runs(language, body, tmp_path):
    env = sandbox(tmp_path)
    if language == "python":
        script = tmp_path / "readme_block.py"
        script.write_text(body + "\n")
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", body]
    try:
        out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the block did not finish within {BLOCK_TIMEOUT} s:\n{body}\n{e.stderr or ''}")
    check_finished(out, f"the {language} block\n{body}\n")


@pytest.mark.parametrize("page", [README, *DOCS], ids=shown)
def test_links_resolve(page):
    broken = []
    for n, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}:{n}: {target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{page.name}:{n}: {target}: no heading with the anchor #{anchor} in {shown(file)}")
    assert not broken, "\n".join(broken)


def test_the_contents_list_every_section_and_every_docs_page():
    text = README.read_text()
    contents = text.split("\n## Contents\n", 1)[1].split("\n## ", 1)[0]
    targets = set(LINK.findall(contents))
    sections = [slug(m.group(2)) for _, line in prose_lines(text) if (m := HEADING.match(line)) and
                len(m.group(1)) == 2 and m.group(2) != "Contents"]
    assert sections and not [s for s in sections if f"#{s}" not in targets], "sections missing from ## Contents"
    assert DOCS, "docs/ holds no page"
    missing = [p.name for p in DOCS if f"docs/{p.name}" not in targets]
    assert not missing, f"docs pages missing from ## Contents: {missing}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_docs_page_links_back_to_the_readme(page):
    assert any(target.startswith("../README.md") for _, target in links(page))


@pytest.mark.parametrize("page", [README, *DOCS], ids=shown)
def test_extras_are_installed_from_the_checkout(page):
    """The package is not on PyPI: an extra is ``pip install -e '.[name]'``, never
    ``pip install 'tortoise-tts-xpu[name]'``."""
    assert not re.search(r"pip install\s+['\"]?tortoise-tts-xpu", page.read_text())


def test_slugs_follow_github():
    assert slug("Checkpoints: released files and fine-tunes") == "checkpoints-released-files-and-fine-tunes"
    assert slug("Fields of `POST /v1/audio/speech`") == "fields-of-post-v1audiospeech"
    assert slug("Offline smoke test (random weights)") == "offline-smoke-test-random-weights"
    assert slug("Tortoise's extra fields") == "tortoises-extra-fields"
    assert slug("max_mel_tokens and **bold**") == "max_mel_tokens-and-bold"
