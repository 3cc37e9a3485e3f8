"""Real test servers (OpenSSH sshd, single-node Slurm) started and stopped by the tests."""
