"""Command templates: `{field}` substitution with every value shell-quoted."""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping

from .errors import ConfigError


def render_command(template: str, values: Mapping[str, str], where: str = "command") -> str:
    """Substitute fields; each value becomes one shell word however hostile it is."""
    out: list[str] = []
    for literal, fname, spec, conv in string.Formatter().parse(template):
        out.append(literal)
        if fname is None:
            continue
        if fname not in values:
            raise ConfigError(f"{where} uses {{{fname}}}, which is not defined",
                              "pass --seeds N" if fname == "seed" else
                              f"define {fname} under the branch's vars: or matrix:, or pass "
                              f"--set {fname}=VALUE")
        value = values[fname]
        if conv or spec:
            raise ConfigError(f"{where}: {{{fname}}} has a conversion or format spec",
                              "write plain fields like {name}")
        out.append(shlex.quote(str(value)))
    return "".join(out)


# Words that make a command line more than one plain program call, or that name something
# only a shell has: such a line runs in the shell as written.
_SHELL_ONLY = frozenset({
    "!", "{", "}", "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done",
    "case", "esac", "in", "function", "select", "time", ".", ":", "alias", "bg", "break", "cd",
    "command", "continue", "eval", "exec", "exit", "export", "fg", "getopts", "hash", "jobs",
    "local", "read", "readonly", "return", "set", "shift", "source", "times", "trap", "type",
    "ulimit", "umask", "unalias", "unset", "wait"})


def exec_line(command: str) -> str:
    """The last line of a worker's cmd.sh. A command that is one plain program call is
    `exec`ed, so that the wrapper is its parent and sees from its wait status whether it died
    of a signal (a shell in between would turn a SIGKILL into exit status 137). Anything else
    (lists, pipes, redirections, substitutions, assignments, shell builtins) runs as written."""
    if any(c in command for c in "\n\r`#") or "$(" in command or not command.strip():
        return command
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.commenters = ""
        words = list(lexer)
    except ValueError:
        return command
    if not words or any(w and not w.strip("();<>|&") for w in words):
        return command
    first = words[0]
    if first in _SHELL_ONLY or "=" in first:
        return command
    # Only when the first word resolves to a program file: never exec a function or builtin.
    return (f"case $(command -v -- {shlex.quote(first)}) in */*) exec {command} ;; esac\n"
            f"{command}")
