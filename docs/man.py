"""Write the man pages and shell completions from their one source each.

    python docs/man.py            # write docs/man/* and completions/*
    python docs/man.py --check    # exit 1, naming the stale files, if any differs

``taskforce(8)`` and ``tfctl(1)`` come from the argparse parsers behind
``--help`` (``taskforce.manpages``), ``taskforce.conf(5)`` from
``docs/config.md``, and the bash and zsh completions from the same parsers
(``taskforce.completion``).  The wheel installs the files written here;
``tests/test_manpages.py`` fails when any of them is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:
    from taskforce import completion, manpages
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT))
    from taskforce import completion, manpages


def generated() -> dict[Path, str]:
    """Every generated file, by its path in the checkout, with its text."""
    out = {ROOT / "docs" / "man" / name: page() for name, page in manpages.PAGES.items()}
    config = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    out[ROOT / "docs" / "man" / "taskforce.conf.5"] = manpages.config_page(config)
    for program in ("taskforce", "tfctl"):
        out[ROOT / "completions" / program] = completion.script("bash", program)
        out[ROOT / "completions" / f"_{program}"] = completion.script("zsh", program)
    return out


def stale() -> list[Path]:
    """The generated files whose committed text differs from what they would be now."""
    return [
        path
        for path, text in generated().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether any is stale")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(ROOT)} is stale: run  python docs/man.py", file=sys.stderr)
        return 1 if old else 0
    for path, text in generated().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
