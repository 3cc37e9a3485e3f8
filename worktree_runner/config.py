"""wt-run.yaml: loading, validation, and the typed, frozen objects the rest of the tool uses.

Every mistake is reported as one `ConfigError` that names the file, the key and the fix.
"""

from __future__ import annotations

import os
import re
import string
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .names import check_branch_name, check_worker_name
from .policies import RetryPolicy, parse_matrix, parse_retry, parse_seeds

CONFIG_NAMES = ("wt-run.yaml", "configs/wt-run.yaml")

# Template fields every command may use, besides the branch's `vars`.
BUILTIN_FIELDS = frozenset({"name", "branch", "out", "data", "run", "worktree", "host"})

TOP_KEYS = frozenset(
    {"repo", "worktrees", "base", "shared", "data", "default_host", "hosts", "branches",
     "commands", "collect", "env", "stop_grace", "seeds", "matrix", "retry", "notify"}
)
HOST_KEYS = {
    "local": frozenset({"type", "slots", "gpus", "env", "gpu_free_mib"}),
    "ssh": frozenset({"type", "address", "key", "root", "python", "gpus", "slots", "env",
                      "gpu_free_mib",
                      "strict_host_key", "connect_timeout", "command_timeout", "setup"}),
    "slurm": frozenset({"type", "via", "root", "partition", "gres", "gpus", "cpus", "mem",
                        "time", "account", "qos", "sbatch_args", "signal", "requeue", "python",
                        "env", "array", "generate_tasks"}),
}
BRANCH_KEYS = frozenset({"branch", "vars", "command", "host", "env", "slurm", "seeds", "matrix",
                         "retry"})
SLURM_OVERRIDE_KEYS = frozenset({"partition", "gres", "gpus", "cpus", "mem", "time", "account",
                                 "qos", "sbatch_args"})


@dataclass(frozen=True)
class HostConfig:
    """One entry of `hosts:`. Fields that a type does not use keep their defaults."""

    name: str
    type: str  # local | ssh | slurm
    address: str = ""
    key: str = ""
    root: str = ""
    python: str = "python3"
    gpus: tuple[str, ...] = ()
    slots: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    strict_host_key: bool = True
    connect_timeout: float = 10.0
    command_timeout: float = 120.0
    setup: tuple[str, ...] = ()
    via: str = ""
    slurm: Mapping[str, Any] = field(default_factory=dict)
    # A GPU is free only while processes other than wt-run's own use less than this.
    gpu_free_mib: float = 1024.0

    @property
    def capacity(self) -> int | None:
        """How many workers may run at once on this host (None: unbounded)."""
        if self.gpus:
            return len(self.gpus)
        return self.slots


@dataclass(frozen=True)
class BranchConfig:
    """One entry of `branches:`: a worker name, its git branch and template variables."""

    name: str
    branch: str
    vars: Mapping[str, str] = field(default_factory=dict)
    command: str = "train"
    host: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    slurm: Mapping[str, Any] = field(default_factory=dict)
    seeds: int | None = None
    matrix: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    retry: RetryPolicy | None = None


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; paths are absolute."""

    path: Path
    repo: Path
    worktrees: Path
    base: str
    shared: tuple[str, ...]
    data: str
    default_host: str
    hosts: Mapping[str, HostConfig]
    branches: Mapping[str, BranchConfig]
    commands: Mapping[str, str]
    collect: tuple[str, ...]
    env: Mapping[str, str]
    stop_grace: float
    seeds: int | None = None
    matrix: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    notify: str = ""

    def retry_for(self, branch: str) -> RetryPolicy:
        b = self.branches.get(branch)
        return b.retry if b is not None and b.retry is not None else self.retry

    @property
    def state_dir(self) -> Path:
        """Where runs, manifests and local worker files live."""
        return self.repo / ".wt-run"

    def host(self, name: str) -> HostConfig:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise ConfigError(
                f"unknown host '{name}' (known: {known})",
                f"add it under hosts: in {self.path} or pass one of the known names",
            ) from None

    def branch(self, name: str) -> BranchConfig:
        try:
            return self.branches[name]
        except KeyError:
            known = ", ".join(sorted(self.branches)) or "none"
            raise ConfigError(
                f"no entry '{name}' under branches: in {self.path} (known: {known})",
                f"add `{name}: {{branch: <git branch>}}` under branches:",
            ) from None

    def data_path(self) -> Path:
        """The local dataset directory (`{data}` on the local host)."""
        return (self.repo / self.data).resolve() if not os.path.isabs(self.data) else Path(
            self.data
        )


def find_config(explicit: str | os.PathLike[str] | None, cwd: Path | None = None) -> Path:
    """The config file to use: `--config`, else wt-run.yaml or configs/wt-run.yaml at the root."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist",
                              "pass an existing file to --config, or run `wt-run init`")
        return path.resolve()
    start = (cwd or Path.cwd()).resolve()
    roots = [start]
    top = _git_toplevel(start)
    if top is not None and top != start:
        roots.append(top)
    for root in roots:
        for name in CONFIG_NAMES:
            candidate = root / name
            if candidate.is_file():
                return candidate
    raise ConfigError(
        f"no wt-run.yaml or configs/wt-run.yaml in {roots[-1]}",
        "run `wt-run init` to write a starter config, or pass --config PATH",
    )


def _git_toplevel(path: Path) -> Path | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, check=False)
    except OSError:
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def load_config(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Config:
    """Find, parse and validate the configuration."""
    path = find_config(explicit, cwd)
    try:
        # libyaml's loader where PyYAML has it: the same safe constructors, ten times faster
        # on a config with many branches (status reads the config on every refresh).
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: {problem}{where}", "fix the YAML syntax there") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}",
                          "check the file's permissions") from None
    return parse_config(raw, path)


def parse_config(raw: Any, path: Path) -> Config:
    """Validate a parsed YAML document into a `Config`."""
    if raw is None:
        raw = {}
    p = _Parser(path)
    root = p.mapping(raw, "the top level")
    p.no_unknown(root, TOP_KEYS, "")
    base_dir = path.parent
    repo = (base_dir / p.string(root.get("repo", "."), "repo")).resolve()
    if not (repo / ".git").exists():
        raise ConfigError(f"{path}: repo: {repo} is not a git repository",
                          "point repo: at the repository whose branches you run")
    worktrees = repo / p.string(root.get("worktrees", ".wt-run/worktrees"), "worktrees")
    base = p.string(root.get("base", "HEAD"), "base")
    shared = tuple(p.string(s, f"shared[{i}]") for i, s in
                   enumerate(p.sequence(root.get("shared", []), "shared")))
    for i, item in enumerate(shared):
        if os.path.isabs(item) or ".." in Path(item).parts or item in ("", "."):
            raise ConfigError(f"{path}: shared[{i}]: '{item}' must be a path inside the repo",
                              "use a repo-relative path such as data or .venv")
        if Path(item).parts[0] in (".git", ".wt-run"):
            raise ConfigError(f"{path}: shared[{i}]: '{item}' is git's or wt-run's own",
                              "share only your files, such as data or .venv")
    data = p.string(root.get("data", "data"), "data")
    env = p.env(root.get("env", {}), "env")
    hosts = _parse_hosts(p, root.get("hosts", {"local": {"type": "local"}}))
    if "local" not in hosts:
        hosts = {"local": HostConfig(name="local", type="local"), **hosts}
    default_host = p.string(root.get("default_host", "local"), "default_host")
    if default_host not in hosts:
        raise ConfigError(f"{path}: default_host: '{default_host}' is not under hosts:",
                          f"add {default_host} under hosts: or set default_host: local")
    for h in hosts.values():
        if h.type == "slurm" and h.via not in hosts:
            raise ConfigError(f"{path}: hosts.{h.name}.via: '{h.via}' is not under hosts:",
                              "set via: to an ssh host name or to local")
    commands = {}
    for k, v in p.mapping(root.get("commands", {}), "commands").items():
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{path}: commands.{k} must be a command line (a string)",
                              f"write e.g. commands: {{{k}: python train.py --out {{out}}}}")
        commands[p.string(k, "commands key")] = v
    branches = _parse_branches(p, root.get("branches", {}), hosts)
    collect = tuple(p.string(s, f"collect[{i}]") for i, s in
                    enumerate(p.sequence(root.get("collect", ["results/**"]), "collect")))
    stop_grace = p.number(root.get("stop_grace", 10), "stop_grace")
    config = Config(path=path, repo=repo, worktrees=worktrees, base=base, shared=shared,
                    data=data, default_host=default_host, hosts=hosts, branches=branches,
                    commands=commands, collect=collect, env=env, stop_grace=stop_grace,
                    seeds=parse_seeds(root.get("seeds"), f"{path}: seeds"),
                    matrix=parse_matrix(root.get("matrix"), f"{path}: matrix"),
                    retry=parse_retry(root.get("retry"), f"{path}: retry"),
                    notify=p.string(root.get("notify", ""), "notify"))
    _check_templates(config)
    return config


def _parse_hosts(p: _Parser, raw: Any) -> dict[str, HostConfig]:
    hosts: dict[str, HostConfig] = {}
    for name, spec in p.mapping(raw, "hosts").items():
        key = f"hosts.{name}"
        check_worker_name(str(name), f"{p.path}: {key}")
        spec = p.mapping(spec, key)
        kind = p.string(spec.get("type", ""), f"{key}.type")
        if kind not in HOST_KEYS:
            raise ConfigError(f"{p.path}: {key}.type: '{kind}' is not a host type",
                              "use type: local, ssh or slurm")
        p.no_unknown(spec, HOST_KEYS[kind], key)
        # A slurm host's gpus: is an sbatch --gpus value (validated in slurm.py), not a list.
        gpus = () if kind == "slurm" else tuple(
            str(g) for g in p.sequence(spec.get("gpus", []), f"{key}.gpus"))
        slots = spec.get("slots")
        if slots is not None and (not isinstance(slots, int) or slots < 1):
            raise ConfigError(f"{p.path}: {key}.slots must be a positive integer",
                              "write e.g. slots: 4")
        fields: dict[str, Any] = {"name": str(name), "type": kind, "gpus": gpus, "slots": slots,
                                  "env": p.env(spec.get("env", {}), f"{key}.env")}
        if "gpu_free_mib" in spec:
            fields["gpu_free_mib"] = p.number(spec["gpu_free_mib"], f"{key}.gpu_free_mib")
        if kind == "ssh":
            if "address" not in spec:
                raise ConfigError(f"{p.path}: {key}.address is missing",
                                  "add address: user@host[:port] or an ~/.ssh/config alias")
            fields["address"] = p.string(spec["address"], f"{key}.address")
            if (not fields["address"] or fields["address"].startswith("-")
                    or any(c.isspace() or c == "/" for c in fields["address"])):
                raise ConfigError(f"{p.path}: {key}.address {fields['address']!r} is not a "
                                  "host address",
                                  "write user@host, user@host:port or an ~/.ssh/config alias")
            fields["key"] = p.string(spec.get("key", ""), f"{key}.key")
            fields["root"] = p.string(spec.get("root", "~/wt-run"), f"{key}.root")
            fields["python"] = p.string(spec.get("python", "python3"), f"{key}.python")
            fields["strict_host_key"] = bool(spec.get("strict_host_key", True))
            fields["connect_timeout"] = p.number(spec.get("connect_timeout", 10),
                                                 f"{key}.connect_timeout")
            fields["command_timeout"] = p.number(spec.get("command_timeout", 120),
                                                 f"{key}.command_timeout")
            fields["setup"] = tuple(p.string(s, f"{key}.setup") for s in
                                    p.sequence(spec.get("setup", []), f"{key}.setup"))
        elif kind == "slurm":
            fields["via"] = p.string(spec.get("via", "local"), f"{key}.via")
            if "root" not in spec:
                raise ConfigError(f"{p.path}: {key}.root is missing",
                                  "set root: to a directory on the cluster's shared filesystem")
            fields["root"] = p.string(spec["root"], f"{key}.root")
            fields["python"] = p.string(spec.get("python", "python3"), f"{key}.python")
            fields["slurm"] = {k: spec[k] for k in spec
                               if k not in ("type", "via", "root", "python", "env")}
        hosts[str(name)] = HostConfig(**fields)
    return hosts


def _parse_branches(p: _Parser, raw: Any, hosts: Mapping[str, HostConfig]
                    ) -> dict[str, BranchConfig]:
    branches: dict[str, BranchConfig] = {}
    for name, spec in p.mapping(raw, "branches").items():
        key = f"branches.{name}"
        check_worker_name(str(name), f"{p.path}: {key}")
        spec = {} if spec is None else p.mapping(spec, key)
        p.no_unknown(spec, BRANCH_KEYS, key)
        branch = p.string(spec.get("branch", name), f"{key}.branch")
        check_branch_name(branch, f"{p.path}: {key}.branch")
        host = spec.get("host")
        if host is not None and str(host) not in hosts:
            raise ConfigError(f"{p.path}: {key}.host: '{host}' is not under hosts:",
                              "add the host under hosts: or remove host: from the branch")
        slurm = p.mapping(spec.get("slurm", {}), f"{key}.slurm")
        p.no_unknown(slurm, SLURM_OVERRIDE_KEYS, f"{key}.slurm")
        branches[str(name)] = BranchConfig(
            name=str(name), branch=branch,
            vars={str(k): _scalar(p, v, f"{key}.vars.{k}")
                  for k, v in p.mapping(spec.get("vars", {}), f"{key}.vars").items()},
            command=p.string(spec.get("command", "train"), f"{key}.command"),
            host=None if host is None else str(host),
            env=p.env(spec.get("env", {}), f"{key}.env"),
            slurm=dict(slurm),
            seeds=parse_seeds(spec.get("seeds"), f"{p.path}: {key}.seeds"),
            matrix=parse_matrix(spec.get("matrix"), f"{p.path}: {key}.matrix"),
            retry=None if "retry" not in spec else parse_retry(spec["retry"],
                                                               f"{p.path}: {key}.retry"),
        )
    return branches


def template_fields(template: str) -> set[str]:
    """The `{field}` names a command template uses."""
    names: set[str] = set()
    for _, fname, _, _ in string.Formatter().parse(template):
        if fname is not None:
            names.add(fname)
    return names


def _check_templates(config: Config) -> None:
    for cname, template in config.commands.items():
        try:
            fields = template_fields(template)
        except ValueError as exc:
            raise ConfigError(f"{config.path}: commands.{cname}: {exc}",
                              "write literal braces as {{ and }}") from None
        for fname in fields:
            if not fname.isidentifier():
                raise ConfigError(
                    f"{config.path}: commands.{cname}: field '{{{fname}}}' is not a plain name",
                    "use fields like {name} or {extractor}; no indexing or attributes")
        for _, fname, spec, conversion in string.Formatter().parse(template):
            if fname is not None and (spec or conversion):
                raise ConfigError(
                    f"{config.path}: commands.{cname}: field '{{{fname}"
                    f"{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}' "
                    "has a format", "write the plain field, e.g. {" + fname + "}")
    for b in config.branches.values():
        if b.command not in config.commands:
            raise ConfigError(
                f"{config.path}: branches.{b.name}.command: no command '{b.command}' "
                f"under commands:", f"add commands.{b.command} or set command: to one of "
                f"{', '.join(sorted(config.commands)) or '(none defined)'}")
        # Every field needs a value in the config (`--set` overrides it at launch); {seed}
        # comes from seeds: or --seeds.
        given = {*BUILTIN_FIELDS, *b.vars, *config.matrix, *b.matrix, "seed"}
        missing = template_fields(config.commands[b.command]) - given
        if missing:
            field_name = sorted(missing)[0]
            raise ConfigError(
                f"{config.path}: commands.{b.command} uses {{{field_name}}}, which branch "
                f"'{b.name}' does not define",
                f"add {field_name}: under branches.{b.name}.vars or matrix:, or use one of "
                f"{', '.join(sorted(BUILTIN_FIELDS))}")


def _scalar(p: _Parser, value: Any, key: str) -> str:
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    raise ConfigError(f"{p.path}: {key} must be a string or number",
                      "quote the value, e.g. key: \"value\"")


class _Parser:
    """Small typed accessors that turn shape mistakes into ConfigErrors naming the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: {key} must be a mapping (key: value)",
                              f"write {key} as an indented block of key: value lines")
        return value

    def sequence(self, value: Any, key: str) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ConfigError(f"{self.path}: {key} must be a list", f"write {key}: [a, b]")
        return value

    def string(self, value: Any, key: str) -> str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{self.path}: {key} must be a string", f"set {key} to a string")

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        unit = " (MiB)" if key.endswith("_mib") else " of seconds"
        raise ConfigError(f"{self.path}: {key} must be a non-negative number",
                          f"set {key} to a number{unit}")

    def env(self, value: Any, key: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.mapping(value, key).items():
            name = str(k)
            if not name.isidentifier():
                raise ConfigError(f"{self.path}: {key}.{name} is not a valid variable name",
                                  "use letters, digits and _ only")
            out[name] = _scalar(self, v, f"{key}.{name}")
        return out

    def no_unknown(self, spec: dict[str, Any], allowed: frozenset[str], key: str) -> None:
        for k in spec:
            if k not in allowed:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", str(k)):
                    # Not even key-shaped: likely not a config at all. Its text is not echoed
                    # (the file may hold secrets: `--config` pointed at the wrong file).
                    raise ConfigError(f"{self.path}: holds an entry that is not a config key "
                                      f"{'under ' + key if key else 'at the top'} (is this a "
                                      "wt-run config?)", "check --config, or fix that line")
                where = f"{key}.{k}" if key else str(k)
                raise ConfigError(f"{self.path}: unknown key '{where}'",
                                  f"remove it or use one of: {', '.join(sorted(allowed))}")
