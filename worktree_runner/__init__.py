"""wt-run: run experiment variants in parallel, one git worktree per branch."""

__version__ = "0.1.0"
