#!/usr/bin/env bash
# Install everything the test suite needs, then run it.
#   ./scripts/test.sh            # whole suite
#   ./scripts/test.sh -k ssh     # extra arguments go to pytest
# As root on Debian/Ubuntu it installs the real servers the integration tests start
# (OpenSSH sshd and its sftp client, Slurm + munge) and the browser the report test drives (chromium).
# Without them those tests skip, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in sshd:openssh-server ssh:openssh-client slurmctld:slurm-wlm slurmd:slurm-wlm \
            munged:munge sftp:openssh-client git:git chromium:chromium; do
  bin=${pair%%:*}; pkg=${pair#*:}
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    need_apt+=("$pkg")
  fi
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need_apt[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
  else
    echo "note: missing ${need_apt[*]}; the SSH/Slurm/report tests will skip (run as root to install)"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# scripts/constraints.txt pins torch to the CPU-friendly build; the package metadata only
# sets a lower bound, so GPU machines may keep a newer build.
python -m pip install -q -c scripts/constraints.txt -e ".[workload,report,test]"
ruff check .
exec python -m pytest -q -p no:cacheprovider "$@"
