"""Shell completion for bash and zsh, written from the argparse parsers.

``taskforce completion bash`` and ``tfctl completion zsh`` print the script
for their own command; ``python docs/man.py`` writes all four to
``completions/`` (and the wheel installs them where bash-completion and zsh
look), and ``tests/test_manpages.py`` fails when those files are stale.

What a value completes to is read from the parser alone: an option's or
argument's choices, file names for a value whose name says it is a file
(``CONFIG``, ``ROLES``, ``LOG``...), and for tfctl's ``TASK`` arguments the
tasks of the taskforce it talks to (``tfctl status --json``, with the
options typed before the command).

This module only formats text; it never runs a command itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from taskforce.manpages import Command, Option, Positional, describe

#: Value names (metavars) that name a file.
FILE_VALUES = frozenset(
    {"CONFIG", "ROLES", "FILE", "PIDFILE", "CERTFILE", "PEM", "LOG", "NEW", "SCRIPT"}
)
SHELLS = ("bash", "zsh")


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """tfctl's ``completion SHELL`` subcommand."""
    sub = commands.add_parser("completion", help="print the bash or zsh completion script")
    sub.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash or zsh")


def script(shell: str, program: str) -> str:
    """The completion script of ``program`` (taskforce or tfctl) for ``shell``."""
    command = program_command(program)
    return (bash if shell == "bash" else zsh)(command, commands_first=program == "taskforce")


def program_command(program: str) -> Command:
    """``program``'s parsers as one ``Command`` (taskforce's tool commands
    beside its daemon options)."""
    if program == "tfctl":
        from taskforce import tfctl

        return describe(tfctl.build_parser(), "tfctl")
    from taskforce import cli

    daemon = describe(cli.build_parser(), "taskforce")
    tools = describe(cli.build_tool_parser()[0], "taskforce")
    return Command(daemon.name, daemon.help, daemon.options, (), tools.commands)


def _kind(name: str | None, choices: tuple[str, ...]) -> str:
    """What a value completes to: "words", "files", "tasks" or "" (nothing)."""
    if choices:
        return "words"
    if name in FILE_VALUES:
        return "files"
    if name and name.startswith("TASK"):
        return "tasks"
    return ""


def _arg_choices(command: Command, arg: Positional) -> tuple[str, ...]:
    return arg.choices


# ------------------------------------------------------------ bash


def _bash_case(command: Command) -> Iterator[str]:
    flags = " ".join(flag for option in command.options for flag in option.flags)
    files = [f for o in command.options if _kind(o.metavar, o.choices) == "files" for f in o.flags]
    values = [f for o in command.options if o.metavar for f in o.flags]
    yield f"            options='{flags}'"
    yield f"            files=' {' '.join(files)} '"
    yield f"            values=' {' '.join(values)} '"
    for option in command.options:
        if option.choices:
            for flag in option.flags:
                yield f"            choices[{flag}]='{' '.join(option.choices)}'"
    kinds = [_kind(arg.name, _arg_choices(command, arg)) for arg in command.positionals]
    yield f"            positional='{kinds[0] if kinds else ''}'"
    for arg in command.positionals:
        if _arg_choices(command, arg):
            yield f"            choices[_positional]='{' '.join(_arg_choices(command, arg))}'"


def bash(top: Command, *, commands_first: bool) -> str:
    """A bash completion function for ``top`` and its subcommands."""
    name = top.name
    lines = [
        f"# bash completion for {name}, written from its argparse parsers by docs/man.py",
        f"# (or: {name} completion bash). Do not edit: regenerate.",
        "",
        f"_{name}_tasks() {{",
        "    # the tasks of the taskforce these options reach",
        f'    {name} "$@" --timeout 2 status --json 2>/dev/null |',
        '        sed -n \'s/^  "\\([^"]*\\)": {.*/\\1/p\'',
        "}",
        "",
        f"_{name}() {{",
        "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}",
        "    local command='' at=0 i skip=0",
        "    local top_values=' "
        + " ".join(f for o in top.options if o.metavar for f in o.flags)
        + " '",
        "    local subcommands='" + " ".join(sub.name for sub in top.commands) + "'",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        if ((skip)); then skip=0; continue; fi",
        '        case " $top_values " in *" ${COMP_WORDS[i]} "*) skip=1; continue ;; esac',
        '        case " $subcommands " in',
        '            *" ${COMP_WORDS[i]} "*) command=${COMP_WORDS[i]}; at=$i; break ;;',
        "        esac",
    ]
    if commands_first:
        lines.append("        break  # a command is the first word, or there is none")
    lines += [
        "    done",
        "    local options files values positional",
        "    local -A choices=()",
        '    case "$command" in',
        "        '')",
        *_bash_case(Command(top.name, "", top.options, top.positionals)),
        "            ;;",
    ]
    for sub in top.commands:
        lines += [f"        {sub.name})", *_bash_case(sub), "            ;;"]
    lines += [
        "    esac",
        '    if [[ $files == *" $prev "* ]]; then',
        '        COMPREPLY=($(compgen -f -- "$cur")); return',
        "    fi",
        '    if [[ $values == *" $prev "* ]]; then',
        "        [[ -n ${choices[$prev]:-} ]] &&",
        '            COMPREPLY=($(compgen -W "${choices[$prev]}" -- "$cur"))',
        "        return",
        "    fi",
        "    if [[ $cur == -* ]]; then",
        '        COMPREPLY=($(compgen -W "$options" -- "$cur")); return',
        "    fi",
        "    if [[ -z $command ]]; then",
    ]
    if commands_first:
        lines.append("        ((COMP_CWORD == 1)) || return")
    lines += [
        '        COMPREPLY=($(compgen -W "$subcommands" -- "$cur")); return',
        "    fi",
        '    case "$positional" in',
        '        files) COMPREPLY=($(compgen -f -- "$cur")) ;;',
        '        words) COMPREPLY=($(compgen -W "${choices[_positional]:-}" -- "$cur")) ;;',
        f'        tasks) COMPREPLY=($(compgen -W "$(_{name}_tasks "${{COMP_WORDS[@]:1:at-1}}")" '
        '-- "$cur")) ;;',
        "    esac",
        "}",
        f"complete -o default -F _{name} {name}",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------ zsh


def _zsh_quote(text: str) -> str:
    """Text for inside a single-quoted ``_arguments`` spec."""
    text = " ".join(text.split()).replace("'", "'\\''")
    for char in "[]:":
        text = text.replace(char, "\\" + char)
    return text


def _zsh_action(name: str | None, choices: tuple[str, ...], program: str) -> str:
    kind = _kind(name, choices)
    if kind == "words":
        return f"({' '.join(choices)})"
    return {"files": "_files", "tasks": f"_{program}_tasks"}.get(kind, " ")


def _zsh_option(option: Option, program: str) -> str:
    value = ""
    if option.metavar:
        action = _zsh_action(option.metavar, option.choices, program)
        value = f":{_zsh_quote(option.metavar)}:{action}"
    described = f"[{_zsh_quote(option.help)}]{value}'"
    if len(option.flags) == 1:
        return f"'{option.flags[0]}{described}"
    return f"'({' '.join(option.flags)})'{{{','.join(option.flags)}}}'{described}"


def _zsh_specs(command: Command, program: str) -> list[str]:
    specs = [_zsh_option(option, program) for option in command.options]
    for position, arg in enumerate(command.positionals, 1):
        action = _zsh_action(arg.name, _arg_choices(command, arg), program)
        where = "*" if arg.many else str(position)
        optional = ":" if arg.optional and not arg.many else ""
        specs.append(f"'{where}:{optional}{_zsh_quote(arg.name)}:{action}'")
    return specs


def zsh(top: Command, *, commands_first: bool) -> str:
    """A zsh completion function (``#compdef``) for ``top`` and its subcommands."""
    name = top.name
    # (for _describe: only the first colon separates, and nothing else is special)
    described = " ".join(
        f"'{sub.name}:" + " ".join(sub.help.split()).replace("'", "'\\''") + "'"
        for sub in top.commands
    )
    names = "|".join(sub.name for sub in top.commands)
    value_flags = " ".join(f for option in top.options if option.metavar for f in option.flags)
    top_specs = " \\\n        ".join(_zsh_specs(Command(name, "", top.options, ()), name))
    lines = [
        f"#compdef {name}",
        f"# zsh completion for {name}, written from its argparse parsers by docs/man.py",
        f"# (or: {name} completion zsh). Do not edit: regenerate.",
        "",
        f"_{name}_tasks() {{",
        "    # the tasks of the taskforce that the options before the command reach",
        "    local -a tasks",
        f'    tasks=(${{(f)"$({name} $top --timeout 2 status --json 2>/dev/null |',
        '        sed -n \'s/^  "\\([^"]*\\)": {.*/\\1/p\')"})',
        "    _describe task tasks",
        "}",
        "",
        f"_{name}() {{",
        "    local curcontext=$curcontext state line ret=1 flag",
        "    local -a commands top",
        "    local -A opt_args",
        f"    commands=({described})",
    ]
    if commands_first:
        lines += [
            f"    if (( CURRENT > 2 )) && [[ $words[2] == ({names}) ]]; then",
            "        shift words; (( CURRENT-- ))",
            "    else",
            "        local -a first",
            "        (( CURRENT == 2 )) && first=('1:command:->command')",
            f"        _arguments -C -s \\\n        {top_specs} \\",
            "        $first && ret=0",
            "        [[ $state == command ]] && _describe command commands && ret=0",
            "        return ret",
            "    fi",
        ]
    else:
        lines += [
            f"    _arguments -C -s \\\n        {top_specs} \\",
            "        '1:command:->command' '*::argument:->argument' && ret=0",
            "    if [[ $state == command ]]; then",
            "        _describe command commands; return",
            "    fi",
            f"    for flag in {value_flags}; do",
            "        (( ${+opt_args[$flag]} )) && top+=($flag ${opt_args[$flag]})",
            "    done",
        ]
    lines.append("    case $words[1] in")
    for sub in top.commands:
        specs = " \\\n                ".join(_zsh_specs(sub, name))
        lines.append(f"        {sub.name})")
        lines.append(f"            _arguments -s \\\n                {specs} && ret=0")
        lines.append("            ;;")
    lines += ["    esac", "    return ret", "}", "", f'_{name} "$@"', ""]
    return "\n".join(lines)
