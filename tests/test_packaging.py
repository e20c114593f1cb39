"""The install story: pyproject and environment.yml agree; importing the package has no side effects."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req):
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"]} | {_name(r) for r in extras["webui"] + extras["server"]}
    pip_lines = []
    in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.strip().startswith("- pip:"):
            in_pip = True
            continue
        if in_pip and line.strip().startswith("- "):
            item = line.strip()[2:]
            if not item.startswith("-e"):
                pip_lines.append(item)
    assert {_name(r) for r in pip_lines} == wanted
    assert "- python=3.11" in (ROOT / "environment.yml").read_text()


def test_no_torchaudio_and_ipex_only_optional():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    assert "torchaudio" not in names and "intel-extension-for-pytorch" not in names
    assert [_name(r) for r in project["optional-dependencies"]["ipex"]] == ["intel-extension-for-pytorch"]


def test_import_has_no_side_effects(tmp_path):
    """Importing the package and its modules loads no torchaudio / IPEX, writes no env var, touches no file."""
    code = (
        "import os, sys, json; before = dict(os.environ); path = list(sys.path)\n"
        "import importlib, pkgutil, tortoise, xpu\n"
        "mods = ['tortoise.' + m.name for m in pkgutil.walk_packages(tortoise.__path__, '') "
        "        if m.name != 'webui.app']  # a Streamlit script runs its page when executed, by design\n"
        "for m in mods: importlib.import_module(m)\n"
        "print(json.dumps({'torchaudio': 'torchaudio' in sys.modules,\n"
        "  'ipex': 'intel_extension_for_pytorch' in sys.modules, 'env': dict(os.environ) == before,\n"
        "  'path': sys.path == path, 'mods': len(mods)}))\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), TORTOISE_MODELS_DIR=str(tmp_path / "models"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True)
    import json
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"torchaudio": False, "ipex": False, "env": True, "path": True, "mods": res["mods"]}
    assert res["mods"] >= 5
    assert not (tmp_path / "models").exists()
    assert list(home.iterdir()) == []


def test_install_hints_name_what_pip_can_install(monkeypatch):
    """The package is installed from a checkout, not from PyPI: a hint names the extra's own requirements (as the
    installed metadata declares them), or the checkout's `pip install -e '.[extra]'` where there is no metadata."""
    from importlib import metadata

    from tortoise.utils.errors import install_hint
    assert install_hint("server") == "pip install 'fastapi' 'uvicorn' 'python-multipart' 'av>=14' 'wyoming>=1.7'"
    assert install_hint("ray") == "pip install 'ray[serve]>=2.47'"

    def absent(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "requires", absent)
    assert install_hint("onnx") == "pip install -e '.[onnx]' (in the tortoise-tts-xpu checkout)"
