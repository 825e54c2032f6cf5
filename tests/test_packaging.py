"""The project installs as a package: the sdist holds every module, and a wheel built from it runs without the source.

The wheel is built from the unpacked sdist (so a file missing from the sdist fails too) and installed with ``--no-deps``
into a fresh virtual environment; the dependencies come from the test environment's site-packages on
``PYTHONPATH``, which does not activate its editable install of this project.
"""

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCE_ROOTS = {
    "restpg_dspy": "restpg_dspy",
    "programs": "restpg_dspy.programs",
    "optimizers": "restpg_dspy.optimizers",
    "evals": "restpg_dspy.evals",
}


def source_modules() -> set[str]:
    """Every module of the source tree, as the installed package names it."""
    modules = set()
    for folder, package in SOURCE_ROOTS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if "__pycache__" not in parts:
                modules.add(".".join((package, *parts)).removesuffix(".__init__"))
    return modules


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    dist = tmp_path_factory.mktemp("dist")
    # Builds in a copy of the tree: setuptools writes egg-info and build/ beside the sources it builds.
    source = tmp_path_factory.mktemp("source")
    tracked = run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, tracked):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_file():
            target.write_bytes((REPO / name).read_bytes())
    backend = "import sys; from setuptools import build_meta as b; print(getattr(b, sys.argv[1])(sys.argv[2]))"
    sdist = dist / run(sys.executable, "-c", backend, "build_sdist", dist, cwd=source).stdout.split()[-1]
    with tarfile.open(sdist) as archive:
        archive.extractall(dist / "unpacked", filter="data")
    (unpacked,) = (dist / "unpacked").iterdir()
    wheel = dist / run(sys.executable, "-c", backend, "build_wheel", dist, cwd=unpacked).stdout.split()[-1]
    return {"sdist": sdist, "wheel": wheel}


def test_the_wheel_holds_every_module(built):
    names = zipfile.ZipFile(built["wheel"]).namelist()
    packaged = {n.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    assert source_modules() - packaged == set()
    assert any(n.startswith("restpg_dspy/data/") for n in names)
    assert "restpg_dspy/experiments/demo.yaml" in names  # the demo is a config file the package ships


def test_the_installed_wheel_runs_without_the_source_tree(built, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", built["wheel"])
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    imports = "; ".join(f"import {m}" for m in sorted(source_modules()))
    demo = "from restpg_dspy.experiments.demo import demo_config; demo_config()"  # its config file is installed
    script = f"{imports}; {demo}; import restpg_dspy; print(restpg_dspy.__file__)"
    where = run(python, "-c", script, cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    assert "demo" in run(venv / "bin" / "restpg", "--help", cwd=tmp_path, env=env).stdout
