"""Man pages and shell completions say what ``--help`` and docs/config.md say.

- The files under docs/man/ and completions/ are what ``python docs/man.py``
  makes now from the argparse parsers and docs/config.md: a new option, a
  changed help text or an edited reference fails here until they are
  regenerated.
- Each page renders with ``man -l`` without a warning (skipped without man).
- ``taskforce completion bash`` and ``tfctl completion zsh`` print those same
  files, bash completes commands, options, files and choices from them, and
  both scripts parse (zsh's skipped without zsh).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from taskforce import cli, manpages, tfctl

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "docs" / "man"
COMPLETIONS = ROOT / "completions"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_man", ROOT / "docs" / "man.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_current() -> None:
    stale = [str(path.relative_to(ROOT)) for path in generator().stale()]
    assert not stale, f"stale: {stale}: run  python docs/man.py"


def test_every_option_and_command_is_in_its_page() -> None:
    pages = {
        "taskforce.8": [cli.build_parser(), *cli.build_tool_parser()[1].values()],
        "tfctl.1": [tfctl.build_parser()],
    }
    for name, parsers in pages.items():
        text = (MAN / name).read_text()
        for parser in parsers:
            command = manpages.describe(parser)
            for option in command.options:
                for flag in option.flags:
                    assert manpages.escape(flag) in text, f"{name} lacks {flag}"
            for sub in command.commands:
                assert f'.SS "{sub.name}"' in text, f"{name} lacks the command {sub.name}"


def test_config_page_has_every_section_of_the_reference() -> None:
    text = (MAN / "taskforce.conf.5").read_text()
    reference = (ROOT / "docs" / "config.md").read_text()
    for line in reference.splitlines():
        if line.startswith("## "):
            assert f'.SH "{manpages.escape(line[3:].strip().upper())}"' in text


@pytest.mark.parametrize("page", sorted(path.name for path in MAN.glob("*.[158]")))
def test_page_renders_with_man(page: str) -> None:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed (apt-get install man-db)")
    done = subprocess.run(
        [man, "--warnings", "-l", str(MAN / page)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"},
    )
    assert done.returncode == 0, done.stderr
    assert not done.stderr.strip(), f"man warns about {page}:\n{done.stderr}"
    title = page.rsplit(".", 1)[0].upper()
    assert done.stdout.lstrip().startswith(f"{title}("), done.stdout[:200]
    assert "SYNOPSIS" in done.stdout or "DESCRIPTION" in done.stdout


@pytest.mark.parametrize(
    ("module", "shell", "file"),
    [
        ("taskforce", "bash", "taskforce"),
        ("taskforce", "zsh", "_taskforce"),
        ("taskforce.tfctl", "bash", "tfctl"),
        ("taskforce.tfctl", "zsh", "_tfctl"),
    ],
)
def test_completion_command_prints_the_shipped_script(module: str, shell: str, file: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (COMPLETIONS / file).read_text()


#: (words typed, what the completion must offer; "" = the word being typed)
BASH_CASES = [
    (["tfctl", ""], {"status", "restart", "wait", "rollout", "logs", "completion"}),
    (["tfctl", "-s", "x.sock", "re"], {"restart", "reload", "reset"}),
    (["tfctl", "completion", ""], {"bash", "zsh"}),
    (["tfctl", "wait", "--t"], {"--timeout"}),
    (["taskforce", "re"], {"replay"}),
    (["taskforce", "--ch"], {"--check-config"}),
    (["taskforce", "-f", "docs/man/tfctl."], {"docs/man/tfctl.1"}),
    (["taskforce", "completion", "z"], {"zsh"}),
    (["taskforce", "-e", "re"], set()),  # a command comes first or not at all
]


@pytest.mark.parametrize(
    ("words", "expected"), BASH_CASES, ids=[" ".join(words) for words, _ in BASH_CASES]
)
def test_bash_completion(words: list[str], expected: set[str]) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    quoted = " ".join(f"'{word}'" for word in words)
    script = (
        f"source completions/{words[0]}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=()\n"
        f"_{words[0]}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        [bash, "--norc", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    offered = {line for line in done.stdout.splitlines() if line}
    assert offered == expected if not expected else expected <= offered, offered


@pytest.mark.parametrize("file", ["_taskforce", "_tfctl"])
def test_zsh_completion_parses(file: str) -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    done = subprocess.run(
        [zsh, "-n", str(COMPLETIONS / file)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
