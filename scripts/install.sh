#!/usr/bin/env bash
# Install soundbus on Debian/Ubuntu: system packages, then a virtualenv in .venv with every extra.
#   scripts/install.sh          everything (capture, convert, classify models, tests, benchmarks)
#   scripts/install.sh --base   no torch: capture, convert, record/replay, tail, proxy only
set -euo pipefail
cd "$(dirname "$0")/.."

extras="[all]"
[ "${1:-}" = "--base" ] && extras=""

# libportaudio2: PortAudio for sounddevice. pulseaudio*: loopback capture (and the CI's virtual sound card).
# ffmpeg: network/URL sources. sox, espeak-ng, alsa-utils: test audio. iproute2: two-host test.
# docker.io, docker-compose, debootstrap: the container tests build the images and run the compose
# stacks in a Docker engine of their own (debootstrap makes the base image where no registry is reachable).
# sound-theme-freedesktop (0.5 MB): real recordings (bell, alarm clock, shutter) for the small `soundbus eval` test.
# mosquitto, mosquitto-clients, openssl: the MQTT bridge's tests run a real broker with TLS certificates.
# tuxpaint-stamps-default: real bird recordings (GPL-2) for the birdnet tests (~160 MB; no dependencies).
# chromium, chromium-driver: the web view's tests drive Debian's Chromium (Playwright, no browser download).
APT_PACKAGES="python3-venv libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils alsa-utils
  ffmpeg sox espeak-ng iproute2 procps docker.io docker-compose debootstrap tuxpaint-stamps-default sound-theme-freedesktop
  mosquitto mosquitto-clients openssl chromium chromium-driver"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $APT_PACKAGES
else
  echo "install.sh: no apt-get here; install the equivalents of: $APT_PACKAGES" >&2
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -e ".${extras}"
echo "soundbus installed: run '.venv/bin/soundbus up' (pipeline) or '.venv/bin/python -m pytest' (tests)."
