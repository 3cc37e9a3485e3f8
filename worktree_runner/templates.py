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
                              f"define {fname} under the branch's vars:")
        value = values[fname]
        if conv or spec:
            raise ConfigError(f"{where}: {{{fname}}} has a conversion or format spec",
                              "write plain fields like {name}")
        out.append(shlex.quote(str(value)))
    return "".join(out)
