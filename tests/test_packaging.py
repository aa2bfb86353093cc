"""The package installs by its name, and carries what it promises.

Builds the sdist and the wheel (``python -m build``), checks them with
``twine check``, checks that the sdist holds every file of the checkout that
the tests and docs need and the wheel every non-Python file of the package
(the status page's included) with the man pages and completions as data
files, then installs ``taskforce-supervisor`` by name into a fresh virtual
environment and runs ``taskforce -V``, ``tfctl --help`` and ``man -l`` on the
installed pages.

Slow (a build and an install, about half a minute), and skipped without the
``release`` extra (``pip install -e '.[release]'``); ``.ci/run`` does the
same steps in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

import taskforce

ROOT = Path(__file__).resolve().parent.parent
NAME = "taskforce-supervisor"
#: Files of a checkout that are for the repository alone, not the sdist.
NOT_SHIPPED = (".github/", ".gitignore")
DATA = {
    "share/man/man8/taskforce.8",
    "share/man/man1/tfctl.1",
    "share/man/man5/taskforce.conf.5",
    "share/bash-completion/completions/taskforce",
    "share/bash-completion/completions/tfctl",
    "share/zsh/site-functions/_taskforce",
    "share/zsh/site-functions/_tfctl",
}

pytestmark = pytest.mark.slow


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build", reason="pip install -e '.[release]' to build the package")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    return out


def _one(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_twine_check(dist: Path) -> None:
    pytest.importorskip("twine", reason="pip install -e '.[release]'")
    done = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())])
    assert done.stdout.count("PASSED") == 2


def test_sdist_holds_every_file_of_the_checkout(dist: Path) -> None:
    with tarfile.open(_one(dist, "*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("tests/conftest.py", "docs/config.md", "docs/man/taskforce.8", "CHANGELOG.md"):
        assert needed in names
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return
    tracked = run(["git", "ls-files"], cwd=ROOT).stdout.split()
    missing = [
        path
        for path in tracked
        if not path.startswith(NOT_SHIPPED) and (ROOT / path).exists() and path not in names
    ]
    assert not missing, f"the sdist lacks {missing}: add them to MANIFEST.in"


def test_wheel_carries_package_data_and_pages(dist: Path) -> None:
    with zipfile.ZipFile(_one(dist, "*.whl")) as wheel:
        names = set(wheel.namelist())
    data = {name.split(".data/data/", 1)[1] for name in names if ".data/data/" in name}
    assert data == DATA
    package = Path(taskforce.__file__).parent
    extra = [
        path.relative_to(package.parent).as_posix()
        for path in package.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    ]
    missing = [name for name in extra if name not in names]
    assert not missing, f"the wheel lacks package data {missing}: see package-data in pyproject"


def test_installs_by_name_in_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    bin_dir = venv / "bin"
    run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--find-links", str(dist)]
        + [f"{NAME}=={taskforce.__version__}"]
    )
    done = run([str(bin_dir / "taskforce"), "-V"])
    assert done.stdout == f"taskforce {taskforce.__version__}\n"
    assert "rollout" in run([str(bin_dir / "tfctl"), "--help"]).stdout
    assert run([str(bin_dir / "tfctl"), "completion", "bash"]).stdout.startswith("# bash")
    for page in sorted(path for path in DATA if path.startswith("share/man/")):
        assert (venv / page).is_file(), page
    man = shutil.which("man")
    if man is None:
        return
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}
    for page in sorted(path for path in DATA if path.startswith("share/man/")):
        shown = run([man, "-l", str(venv / page)], env=env).stdout
        assert "NAME" in shown
    # man finds the pages by name through the venv's bin/ on PATH
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    env.pop("MANPATH", None)
    assert "tfctl" in run([man, "tfctl"], env=env).stdout
