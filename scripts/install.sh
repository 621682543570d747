#!/usr/bin/env bash
# Installs what trainfleet needs on a Debian/Ubuntu machine, as root (or with sudo):
#   bash scripts/install.sh           the controller, the sandbox and the demo
#   bash scripts/install.sh --tests   also everything the tests use or compare against
# System packages come from apt; Python packages go into ./.venv (reused when it exists:
# Debian refuses pip installs into the system Python).
set -euo pipefail
cd "$(dirname "$0")/.."

tests=0
case "${1:-}" in
    --tests) tests=1 ;;
    "") ;;
    *) echo "usage: bash scripts/install.sh [--tests]" >&2; exit 2 ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# The controller and the sandbox (one sshd per node, rsync for sync, network namespaces);
# a C compiler for DeepSpeed's ops, which the demo's launchers may build.
packages=(python3-venv openssh-server openssh-client rsync iproute2 util-linux procps gcc g++ libc6-dev)
if [ "$tests" = 1 ]; then
    # What the tests exercise or measure against: pdsh and iperf3 (baselines), firewalls,
    # container engines (and debootstrap for the sandbox's Docker image), FUSE mounts, Open MPI,
    # a real Slurm, a real browser for the dashboard's test.
    packages+=(pdsh iperf3 iptables nftables ufw podman runc docker.io debootstrap sshfs s3fs fuse3 openmpi-bin
               slurm-wlm munge chromium chromium-driver)
fi
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "+ apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "+ python3 -m venv .venv"
    python3 -m venv .venv
fi
extras="[plot,ui]"
if [ "$tests" = 1 ]; then extras="[test]"; fi
echo "+ pip install torch==2.13.0 -e .$extras (into .venv)"
DS_BUILD_OPS=0 .venv/bin/pip install -q torch==2.13.0 -e ".$extras"
echo "installed; activate it with: . .venv/bin/activate"
