"""scripts/run_tests.sh, the README's test command and .ci/run's: shellcheck-clean, and on a faked fresh machine it
installs what the tests need (apt packages, torch, the test extra) before running pytest; nothing twice."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_tests.sh"


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed (apt-get install -y shellcheck); scripts/run_tests.sh installs it"
    for script in (SCRIPT, ROOT / ".ci" / "run"):
        out = subprocess.run([shellcheck, "--severity=style", str(script)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_readme_and_ci_run_the_script():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/run_tests.sh" in readme.split("## Usage")[0]  # the quick-start test command
    assert "exec scripts/run_tests.sh" in (ROOT / ".ci" / "run").read_text()
    assert os.access(SCRIPT, os.X_OK) and os.access(ROOT / ".ci" / "run", os.X_OK)


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _machine(tmp_path: Path, *, tools: bool, torch: bool) -> tuple[Path, dict]:
    """A PATH holding only what the script may use (plus stubs that log their calls)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in ("dirname", "id", "env"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    _stub(bin_dir, "apt-get", 'echo "apt-get $*" >> "$CALLS"')
    torch_rc = 0 if torch else 1
    _stub(bin_dir, "python3", f'echo "python $*" >> "$CALLS"\n[ "$1" = "-c" ] && exit {torch_rc}\nexit 0')
    if tools:
        _stub(bin_dir, "chromium", "exit 0")
        _stub(bin_dir, "shellcheck", "exit 0")
    env = {"PATH": str(bin_dir), "CALLS": str(log), "HOME": str(tmp_path)}
    return log, env


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_fresh_machine_gets_everything_installed_in_order(tmp_path):
    log, env = _machine(tmp_path, tools=False, torch=False)
    out = _run(env, "-k", "webui")
    if os.geteuid() != 0:  # not root and no sudo on this PATH: the script says how to install them
        assert out.returncode == 1 and "needs root" in out.stderr and "apt-get install -y chromium shellcheck" in \
            out.stderr
        return
    assert out.returncode == 0, out.stderr  # as root (the CI case) apt-get runs directly
    assert log.read_text().splitlines() == [
        "apt-get update -qq", "apt-get install -y -qq chromium shellcheck", "python -c import torch",
        "python -m pip install -q torch==2.13.0", "python -m pip install -q -e .[test]",
        "python -m pytest -q -p no:cacheprovider -k webui"]


def test_torch_from_the_index_asked_for(tmp_path):
    """TORCH_INDEX_URL picks PyTorch's own index (its CPU build, say) for the one torch install."""
    log, env = _machine(tmp_path, tools=True, torch=False)
    out = _run({**env, "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"})
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines()[:2] == [
        "python -c import torch", "python -m pip install -q --index-url https://download.pytorch.org/whl/cpu "
        "torch==2.13.0"]


def test_nothing_is_installed_twice(tmp_path):
    log, env = _machine(tmp_path, tools=True, torch=True)
    out = _run(env)
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines() == ["python -c import torch", "python -m pip install -q -e .[test]",
                                            "python -m pytest -q -p no:cacheprovider"]


def test_missing_tools_without_apt_say_what_to_do(tmp_path):
    log, env = _machine(tmp_path, tools=False, torch=True)
    (tmp_path / "bin" / "apt-get").unlink()
    out = _run(env)
    assert out.returncode == 1 and not log.exists()
    assert out.stderr.strip() == ("scripts/run_tests.sh: chromium shellcheck missing and there is no apt-get here: "
                                  "install them with your package manager, then run scripts/run_tests.sh again")
