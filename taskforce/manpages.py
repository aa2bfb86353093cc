"""Man pages, written from the sources the rest of the docs come from.

- ``taskforce(8)`` and ``tfctl(1)`` are made from the argparse parsers that
  answer ``--help`` (``taskforce.cli.build_parser``, ``build_tool_parser``
  and ``taskforce.tfctl.build_parser``), with their exit codes read from
  the bullet list in each command's module docstring;
- ``taskforce.conf(5)`` is ``docs/config.md`` (itself checked against the
  config schema by ``tests/test_docs.py``) turned into roff.

``python docs/man.py`` writes them to ``docs/man/``; ``tests/test_manpages.py``
fails when the files there differ from what this module makes now, so a
page cannot drift from ``--help`` or the reference.

This module only formats text: it never runs a command, reads no clock
(pages carry the version, not a date, so they rebuild identically) and is
never imported by the daemon.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from taskforce import __version__

#: Shown in the page footer: the distribution's name on the package index.
DISTRIBUTION = "taskforce-supervisor"


# ------------------------------------------------------------ parser model


@dataclass(frozen=True)
class Option:
    """One option: its flags (``-f``, ``--config-file``), the name of its
    value (None for a flag) and its help text."""

    flags: tuple[str, ...]
    metavar: str | None
    help: str
    choices: tuple[str, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class Positional:
    """One positional argument: its name, whether it repeats or may be left
    out, and its help text."""

    name: str
    many: bool
    optional: bool
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """A parser, reduced to what pages and completions need."""

    name: str
    help: str
    options: tuple[Option, ...]
    positionals: tuple[Positional, ...]
    commands: tuple[Command, ...] = ()


def describe(parser: argparse.ArgumentParser, name: str = "", help: str = "") -> Command:
    """``parser`` as a ``Command``, its subcommands described in turn."""
    options: list[Option] = []
    positionals: list[Positional] = []
    commands: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for sub_name, sub in action.choices.items():
                commands.append(describe(sub, sub_name, helps.get(sub_name, "")))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            takes = action.nargs != 0
            metavar = action.metavar or (action.dest.upper() if takes else None)
            choices = tuple(str(c) for c in action.choices or ())
            options.append(
                Option(
                    tuple(action.option_strings),
                    _text(metavar),
                    action.help or "",
                    choices,
                    action.required,
                )
            )
        else:
            positionals.append(
                Positional(
                    _text(action.metavar) or action.dest,
                    many=action.nargs in ("*", "+", argparse.REMAINDER),
                    optional=action.nargs in ("*", "?"),
                    help=action.help or "",
                    choices=tuple(str(c) for c in action.choices or ()),
                )
            )
    return Command(
        name or parser.prog,
        help or parser.description or "",
        tuple(options),
        tuple(positionals),
        tuple(commands),
    )


def _text(metavar: str | tuple[str, ...] | None) -> str | None:
    if isinstance(metavar, tuple):
        return " ".join(metavar)
    return metavar


def synopsis(command: Command, prefix: str = "") -> str:
    """One line of usage: ``[-f CONFIG] [-r ROLES] LOG``."""
    parts = [f"{prefix} {command.name}".strip()]
    for option in command.options:
        word = f"{option.flags[0]} {option.metavar}" if option.metavar else option.flags[0]
        parts.append(word if option.required else f"[{word}]")
    for arg in command.positionals:
        word = f"{arg.name}..." if arg.many else arg.name
        parts.append(f"[{word}]" if arg.optional else word)
    return " ".join(parts)


def exit_codes(docstring: str) -> list[tuple[str, str]]:
    """The ``- N: meaning`` bullets after "Exit codes" in a module docstring."""
    start = docstring.find("Exit codes")
    codes: list[tuple[str, str]] = []
    for item in re.split(r"\n- ", docstring[start:])[1:]:
        code, _, meaning = item.partition(":")
        meaning = " ".join(meaning.split("\n\n")[0].split())
        codes.append((code.strip(), meaning.replace("``", "`")))
    return codes


# ------------------------------------------------------------ roff


def escape(text: str) -> str:
    """Plain text made safe for roff: backslashes, hyphens, leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def inline(text: str) -> str:
    """Markdown's inline marks in roff: code and bold in bold, links as
    their text (an outside address in brackets after it)."""

    def link(match: re.Match[str]) -> str:
        label, target = match.group(1), match.group(2)
        return label if target.startswith("#") or "://" not in target else f"{label} <{target}>"

    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", link, text)
    out = []
    for index, piece in enumerate(re.split(r"(`[^`]*`)", text)):
        if index % 2:
            out.append("\\fB" + escape(piece[1:-1]) + "\\fR")
        else:
            piece = escape(piece)
            out.append(re.sub(r"\*\*(.+?)\*\*", r"\\fB\1\\fR", piece))
    return "".join(out)


def _header(title: str, section: str, manual: str) -> list[str]:
    return [
        f'.TH {title.upper()} {section} "" "{DISTRIBUTION} {__version__}" "{manual}"',
    ]


def _option_lines(options: Iterable[Option]) -> Iterator[str]:
    for option in options:
        flags = ", ".join(f"\\fB{escape(flag)}\\fR" for flag in option.flags)
        value = f" \\fI{escape(option.metavar)}\\fR" if option.metavar else ""
        yield ".TP"
        yield flags + value
        yield inline(_sentence(option.help or ""))


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:] if text else ""


def command_page(
    command: Command,
    *,
    section: str,
    manual: str,
    summary: str,
    description: list[str],
    codes: list[tuple[str, str]],
    see_also: list[str],
    files: Iterable[tuple[str, str]] = (),
    prefix_commands: str = "",
) -> str:
    """A command's page: synopsis, options, subcommands, exit status."""
    lines = _header(command.name, section, manual)
    lines += [".SH NAME", f"{command.name} \\- {escape(summary)}", ".SH SYNOPSIS"]
    usages = [synopsis(command)] if command.options else []
    usages += [synopsis(sub, prefix_commands or command.name) for sub in command.commands]
    for usage in usages:
        name, _, rest = usage.partition(" ")
        lines += [".HP 4", f"\\fB{escape(name)}\\fR {escape(rest)}"]
    lines += [".SH DESCRIPTION"]
    for paragraph in description:
        lines += [".PP", inline(paragraph)]
    if command.options:
        lines += [".SH OPTIONS", *_option_lines(command.options)]
    if command.commands:
        lines.append(".SH COMMANDS")
        for sub in command.commands:
            lines += [f'.SS "{escape(sub.name)}"', ".PP", inline(_sentence(sub.help))]
            for arg in sub.positionals:
                if arg.help:
                    lines += [".TP", f"\\fI{escape(arg.name)}\\fR", inline(_sentence(arg.help))]
            lines += list(_option_lines(sub.options))
    if files:
        lines.append(".SH FILES")
        for path, meaning in files:
            lines += [".TP", f"\\fI{escape(path)}\\fR", inline(meaning)]
    lines.append(".SH EXIT STATUS")
    for code, meaning in codes:
        lines += [".TP", f"\\fB{escape(code)}\\fR", inline(_sentence(meaning))]
    refs = [re.sub(r"^(.+)\((\w+)\)$", r"\\fB\1\\fR(\2)", escape(ref)) for ref in see_also]
    lines += [".SH SEE ALSO", ",\n".join(refs)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ markdown


def markdown_page(text: str, *, title: str, section: str, manual: str, summary: str) -> str:
    """A page from markdown: ``##`` sections, ``###`` subsections, paragraphs,
    lists, fenced code and tables (each row a tagged paragraph: a man page
    has no room for wide tables)."""
    lines = _header(title, section, manual)
    lines += [".SH NAME", f"{escape(title)} \\- {escape(summary)}", ".SH DESCRIPTION"]
    source = text.splitlines()
    index = 0
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            lines.append(inline(" ".join(part.strip() for part in paragraph)))
            paragraph.clear()

    while index < len(source):
        line = source[index]
        bare = line.strip()
        index += 1
        if bare.startswith("```"):
            flush()
            indent = len(line) - len(line.lstrip())
            body = []
            while index < len(source) and source[index].strip() != "```":
                body.append(source[index][indent:])
                index += 1
            index += 1
            lines += [".PP", ".RS 4", ".nf", *(escape(row) for row in body), ".fi", ".RE"]
        elif line.startswith("# "):
            flush()  # the title: the NAME section says it
        elif line.startswith("## "):
            flush()
            lines.append(f'.SH "{escape(line[3:].strip().upper())}"')
        elif line.startswith("### ") or line.startswith("#### "):
            flush()
            lines.append(f'.SS "{_heading(line.lstrip("#").strip())}"')
        elif bare.startswith("|"):
            flush()
            rows = [bare]
            while index < len(source) and source[index].strip().startswith("|"):
                rows.append(source[index].strip())
                index += 1
            lines += _table(rows)
        elif not bare:
            flush()
        elif re.match(r"^(- |\d+\. )", line):
            flush()
            mark, _, rest = line.partition(" ")
            bullet = "\\(bu" if mark == "-" else mark
            lines.append(f".IP {bullet} 4")
            paragraph.append(rest)
        elif not paragraph and (lines[-1].startswith(".S") or lines[-1] in (".RE", ".fi")):
            lines.append(".PP")
            paragraph.append(line)
        elif not paragraph and line.startswith(" ") and lines[-1] != ".PP":
            # the indented paragraph of a list item after a blank line
            lines.append('.IP "" 4')
            paragraph.append(line)
        else:
            if not paragraph and not lines[-1].startswith((".IP", ".PP")):
                lines.append(".PP")
            paragraph.append(line)
    flush()
    return "\n".join(lines) + "\n"


def _heading(text: str) -> str:
    """A subsection title: the heading's words, without markdown's marks."""
    return escape(text.replace("`", ""))


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _table(rows: list[str]) -> list[str]:
    """A markdown table as tagged paragraphs: the first cell the tag, the
    others after it (named by their column's heading when there are several)."""
    heads = _cells(rows[0])
    out = [".PP"]
    for row in rows[2:]:
        cells = _cells(row)
        out += [".TP", inline(cells[0]) or "\\&"]
        parts = []
        for head, cell in zip(heads[1:], cells[1:], strict=False):
            if not cell:
                continue
            # a lone second column needs no name; of several, each says which it is
            named = len(heads) > 2 and head.lower() not in ("meaning", "what", "")
            parts.append(inline(f"{head}: {cell}" if named else cell))
        out.append("; ".join(parts) or "\\&")
    return out


# ------------------------------------------------------------ the pages


def taskforce_page() -> str:
    """taskforce(8): the daemon's options and the tool commands."""
    from taskforce import cli

    daemon = describe(cli.build_parser(), "taskforce")
    tools = describe(cli.build_tool_parser()[0], "taskforce")
    command = Command(daemon.name, daemon.help, daemon.options, (), tools.commands)
    return command_page(
        command,
        section="8",
        manual="System Manager's Manual",
        summary="keep a host's daemons running and restart exactly what a change affects",
        description=[
            daemon.help,
            "taskforce reads one YAML config (see `taskforce.conf(5)`) and a roles "
            "file that says which of its tasks this host runs, starts them, keeps "
            "them running, and watches both files, the tasks' executables, the files "
            "their events name and the Python modules they import: when one changes, "
            "it stops, starts or restarts the processes the change affects and "
            "nothing else. A config that does not load changes nothing that runs.",
            "The config format and the options are those of the original taskforce "
            "(0.6). SIGHUP resets (stop all, re-execute, start all), SIGTERM and "
            "SIGINT stop all and exit; `tfctl(1)` talks to a running taskforce over "
            "its control socket.",
        ],
        codes=exit_codes(cli.__doc__ or ""),
        files=[
            (cli.DEFAULT_CONFIG, "the config, unless -f says another"),
            (" or ".join(cli.DEFAULT_ROLES), "the roles file: the first that exists"),
            (cli.DEFAULT_PIDFILE, "the pidfile with -b, -R or -S, unless -p says another"),
        ],
        see_also=["tfctl(1)", "taskforce.conf(5)", "systemd.service(5)"],
    )


def tfctl_page() -> str:
    """tfctl(1): the client's options and commands."""
    from taskforce import tfctl

    return command_page(
        describe(tfctl.build_parser(), "tfctl"),
        section="1",
        manual="User Commands",
        summary="show and control a running taskforce",
        description=[
            "tfctl asks a running `taskforce(8)` what runs and tells it what to do, "
            "over the control listener it serves (`-w`, or `settings.http`): a Unix "
            f"socket (by default {tfctl.DEFAULT_SOCKET}), host:port, or an "
            "http(s):// URL. The /manage requests (start, stop, restart, signal, "
            "reload...) need a listener that allows control (`-A`).",
            "`tfctl wait` blocks until tasks are ready and no rollout of theirs "
            "runs, and fails at once when one halts: the health gate of a rolling "
            "deployment over a fleet.",
        ],
        codes=exit_codes(tfctl.__doc__ or ""),
        see_also=["taskforce(8)", "taskforce.conf(5)"],
    )


def config_page(markdown: str) -> str:
    """taskforce.conf(5): the configuration reference, docs/config.md."""
    return markdown_page(
        markdown,
        title="taskforce.conf",
        section="5",
        manual="File Formats Manual",
        summary="the taskforce configuration file and roles file",
    )


#: The pages, by the file name each is written to under docs/man/.
PAGES = {"taskforce.8": taskforce_page, "tfctl.1": tfctl_page}
