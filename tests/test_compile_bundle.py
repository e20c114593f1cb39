"""scripts/compile_bundle_v2.sh: shellcheck-clean, argument checks, prerequisite report and the dry-run plan.

shellcheck must be installed (CI installs it); a missing shellcheck fails the test rather than skipping it.
A complete toolchain is faked in tmp_path (DPC++/MKL roots, stub build tools on PATH); nothing is built."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compile_bundle_v2.sh"


def _exe(path: Path, body: str = "#!/bin/sh\nexit 0\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def toolchain(tmp_path):
    """Fake DPC++ and oneMKL roots plus stub build tools, as a complete machine would have them."""
    dpcpp, mkl, tools = tmp_path / "oneapi compiler", tmp_path / "mkl", tmp_path / "bin"
    (dpcpp / "env").mkdir(parents=True)
    (dpcpp / "env" / "vars.sh").write_text("# fake\n")
    _exe(dpcpp / "bin" / "icpx")
    (dpcpp / "include" / "level_zero").mkdir(parents=True)
    (dpcpp / "include" / "level_zero" / "ze_api.h").write_text("/* fake */\n")
    (mkl / "env").mkdir(parents=True)
    (mkl / "env" / "vars.sh").write_text("# fake\n")
    for tool in ("git", "cmake", "ninja", "gcc", "g++", "make", "ocloc"):
        _exe(tools / tool, "#!/bin/sh\necho \"stub $0 must not run\" >&2\nexit 99\n")
    env = dict(os.environ, PATH=f"{tools}{os.pathsep}{os.environ['PATH']}", COMPILE_BUNDLE_MIN_DISK_GB="0")
    env.pop("DPCPPROOT", None)
    env.pop("MKLROOT", None)
    return dict(dpcpp=dpcpp, mkl=mkl, env=env, work=tmp_path / "work")


def _run(args, env, cwd):
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def _args(tc, *extra):
    return ["--dpcpp-root", str(tc["dpcpp"]), "--mkl-root", str(tc["mkl"]), "--python", sys.executable,
            "--work-dir", str(tc["work"]), *extra]


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed (apt-get install -y shellcheck); CI must install it"
    out = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dry_run_prints_the_plan_and_changes_nothing(toolchain, tmp_path):
    out = _run(_args(toolchain, "--aot", "ats-m150", "--dry-run"), toolchain["env"], tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "prerequisites: all found" in text and "dry run: nothing was changed" in text
    assert "components:  torch vision audio ipex" in text
    assert "TORCH_XPU_ARCH_LIST=ats-m150" in text and "USE_AOT_DEVLIST=ats-m150" in text
    assert "--branch v2.8.0 " in text and "--branch v0.23.0 " in text and "--branch v2.8.10+xpu " in text
    assert f"source '{toolchain['dpcpp']}/env/vars.sh'" in text  # paths with spaces are quoted
    assert "download.pytorch.org/whl/xpu" in text  # most users need only the native wheels
    order = [text.index(f"== {name}") for name in ("torch 2.8.0", "torchvision", "torchaudio", "intel-extension")]
    assert order == sorted(order)
    assert not toolchain["work"].exists() and "must not run" not in out.stderr


def test_component_choice_and_order(toolchain, tmp_path):
    out = _run(_args(toolchain, "--aot", "bmg", "--component", "ipex", "--component", "torch", "--dry-run"),
               toolchain["env"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "components:  torch ipex" in out.stdout and "== torchvision" not in out.stdout
    assert out.stdout.index("== torch") < out.stdout.index("== intel-extension")


def test_aot_none_and_newer_torch_without_ipex(toolchain, tmp_path):
    out = _run(_args(toolchain, "--aot", "none", "--torch-version", "2.9.0", "--dry-run"), toolchain["env"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "components:  torch vision audio" in out.stdout and "IPEX none" in out.stdout
    assert "TORCH_XPU_ARCH_LIST=''" in out.stdout
    explicit = _run(_args(toolchain, "--aot", "none", "--torch-version", "2.9.0", "--component", "ipex", "--check"),
                    toolchain["env"], tmp_path)
    assert explicit.returncode == 3 and "IPEX for torch 2.9.0 does not exist" in explicit.stdout


def test_check_mode(toolchain, tmp_path):
    out = _run(_args(toolchain, "--aot", "bmg", "--check"), toolchain["env"], tmp_path)
    assert out.returncode == 0 and "prerequisites: all found" in out.stdout and "plan:" not in out.stdout


def test_missing_prerequisites_are_named_and_stop_a_build(toolchain, tmp_path):
    env = dict(toolchain["env"], PATH=os.environ["PATH"])  # no stub ocloc
    args = ["--dpcpp-root", str(tmp_path / "nope"), "--mkl-root", str(tmp_path / "nomkl"), "--aot", "ats-m150",
            "--python", sys.executable, "--work-dir", str(toolchain["work"])]
    dry = _run(args + ["--dry-run"], env, tmp_path)
    assert dry.returncode == 0 and "plan:" in dry.stdout
    assert "env/vars.sh not found" in dry.stdout and "oneMKL environment" in dry.stdout
    build = _run(args, env, tmp_path)
    assert build.returncode == 3 and "nothing was changed" in build.stderr
    assert "plan:" not in build.stdout and not toolchain["work"].exists()
    if not shutil.which("ocloc"):
        assert "ocloc" in build.stdout


@pytest.mark.parametrize("args, message", [
    (["--aot", "bmg"], "--dpcpp-root is required"),
    (["--dpcpp-root", "a", "--mkl-root", "b"], "--aot is required"),
    (["--dpcpp-root", "a", "--mkl-root", "b", "--aot", "bmg", "--component", "foo"], "unknown component 'foo'"),
    (["--dpcpp-root", "a", "--mkl-root", "b", "--aot", "bmg", "--torch-version", "1.0"], "is not one of"),
    (["--dpcpp-root", "a", "--mkl-root", "b", "--aot", "bmg", "--jobs", "x"], "--jobs must be"),
    (["--bogus"], "unknown argument '--bogus'"),
])
def test_bad_arguments(toolchain, tmp_path, args, message):
    out = _run(args, toolchain["env"], tmp_path)
    assert out.returncode == 2 and message in out.stderr


def test_help():
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--dry-run" in out.stdout and "ats-m150" in out.stdout and "bmg" in out.stdout
