#!/usr/bin/env bash
# CI step: the workflow on a real single-node SLURM cluster (tests/e2e/test_slurm.py).
# Installs SLURM (Debian packages) and the Snakemake SLURM executor plugin into the
# active Python environment, then runs the SLURM tests; the test module starts and stops
# the daemons itself (tests/slurm/cluster.sh). .ci/run calls it after the main tests
# (make test has created .venv). Needs root; takes 3 to 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${VIRTUAL_ENV:-} ]]; then
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi

packages=(slurmctld slurmd slurm-client munge)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
python -m pip install -q "snakemake-executor-plugin-slurm>=2.8,<3"

# SIGINT, not SIGTERM: pytest then still runs the fixture that stops the daemons
SELECTFLOW_SLURM=1 timeout -s INT -k 60 900 python -m pytest tests/e2e/test_slurm.py -m slurm -v -p no:cacheprovider
