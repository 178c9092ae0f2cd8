#!/usr/bin/env bash
# Sets up everything dro-sfm needs on a fresh Debian machine: system libraries for Open3D, a virtual
# environment at .venv, the CPU build of torch, and the package with its dev extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="libusb-1.0-0 libgomp1 libvulkan1 mesa-vulkan-drivers xvfb libgl1 libegl1"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
