#!/usr/bin/env bash
# Install soundbus on Debian/Ubuntu: system packages, then a virtualenv in .venv.
#   scripts/install.sh              everything in "all" (capture, convert, classify models, tests, benchmarks)
#   scripts/install.sh --base       no torch: capture, convert, record/replay, tail, proxy, mqtt, events, web
#   scripts/install.sh --optional   "all" plus the wakeword and birdnet extras (their model weights are
#                                   CC BY-NC-SA 4.0, non-commercial: not in "all"); the test suite uses them
#   --if-needed                     do nothing (in well under a second) when this exact install is in place
# scripts/run and scripts/test call it with --if-needed, so a newcomer needs no separate install step.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="[all]"
if_needed=0
for arg in "$@"; do
  case "$arg" in
    --base) extras="" ;;
    --optional) extras="[all,wakeword,birdnet]" ;;
    --if-needed) if_needed=1 ;;
    *) echo "install.sh: unknown option $arg (use --base, --optional, --if-needed)" >&2; exit 2 ;;
  esac
done

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

# What this install is: the package lists and the extras. The same lists in .venv, with these extras
# or more (the test suite's install covers the pipeline's), means nothing to do.
stamp_file=.venv/.soundbus-install
lists=$(cat scripts/install.sh pyproject.toml | sha256sum | cut -c1-16)
stamp="$lists $extras"
if [ "$if_needed" = 1 ] && [ -x .venv/bin/python ] && [ -f "$stamp_file" ]; then
  read -r have_lists have_extras < "$stamp_file" || true
  if [ "$have_lists" = "$lists" ]; then
    case "$have_extras|$extras" in
      "$extras|$extras" | "[all]|" | "[all,wakeword,birdnet]|" | "[all,wakeword,birdnet]|[all]") exit 0 ;;
    esac
  fi
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if command -v apt-get >/dev/null; then
  # shellcheck disable=SC2086  # one word per package
  missing=$(dpkg-query -W -f='${Package} ${Status}\n' $APT_PACKAGES 2>/dev/null | grep -vc "install ok installed" || true)
  installed=$(dpkg-query -W -f='${Package}\n' $APT_PACKAGES 2>/dev/null | wc -l || true)
  if [ "$missing" != 0 ] || [ "$installed" -lt "$(echo $APT_PACKAGES | wc -w)" ]; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $APT_PACKAGES
  fi
else
  echo "install.sh: no apt-get here; install the equivalents of: $APT_PACKAGES" >&2
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -e ".${extras}"
echo "$stamp" > "$stamp_file"
echo "soundbus installed: scripts/run (the pipeline) or scripts/test (the tests)." >&2
