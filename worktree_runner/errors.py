"""The exception hierarchy: every error carries what went wrong and how to fix it."""

from __future__ import annotations


class WtRunError(Exception):
    """A failure the user can act on. The CLI prints `Error: <message> (fix: <fix>)`."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} — {self.fix}" if self.fix else self.message


class ConfigError(WtRunError):
    """The configuration file is missing, malformed or inconsistent."""


class GitError(WtRunError):
    """A git operation (branch, worktree) cannot be done as asked."""


class HostError(WtRunError):
    """A host could not run what was asked of it."""

    def __init__(self, host: str, message: str, fix: str = "") -> None:
        super().__init__(f"host {host}: {message}", fix)
        self.host = host


class HostUnreachable(HostError):
    """The host could not be reached (network, sshd down, timeout). Never a worker failure."""

    def __init__(self, host: str, reason: str, fix: str = "") -> None:
        super().__init__(host, f"unreachable: {reason}", fix)
        self.reason = reason


class CommandFailed(HostError):
    """A command on a host exited non-zero; carries the exit code and the tail of stderr."""

    def __init__(self, host: str, command: str, exit_code: int, stderr: str) -> None:
        tail = " | ".join(stderr.strip().splitlines()[-5:])
        short = command.strip().splitlines()[0][:80] if command.strip() else "<empty>"
        super().__init__(host, f"`{short}` exited {exit_code}: {tail or '(no output)'}")
        self.command = command
        self.exit_code = exit_code
        self.stderr = stderr
