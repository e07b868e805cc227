# soundbus images, one Dockerfile, two targets:
#   slim  - capture, convert, proxy, tail, record/replay (no torch; ~250 MB)
#   torch - classify (silero-vad, YAMNet, openWakeWord) on the CPU
#
#   docker build --target slim  -t soundbus:slim  .
#   docker build --target torch -t soundbus:torch .
# or let docker-compose.yml build both. Entry point: the `soundbus` command.

ARG PYTHON_VERSION=3.11

# ---- runtime base: what every image needs at run time --------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# libportaudio2: sounddevice. libasound2-plugins: ALSA's "pulse" device, so capture can record through
# the host's PulseAudio socket. pulseaudio-utils: pactl, to list monitors for loopback. ffmpeg: url sources.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libportaudio2 libasound2-plugins pulseaudio-utils ffmpeg \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --groups audio soundbus
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- build: the base install into a venv ----------------------------------------------------
FROM runtime AS build-slim
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY capture ./capture
COPY convert ./convert
COPY classify ./classify
COPY mqtt_bridge ./mqtt_bridge
RUN pip install .

# ---- build: plus torch (CPU wheels, not the multi-GB CUDA ones) and the models' packages -------
FROM build-slim AS build-torch
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[classify]"

# ---- final images: only the venv is copied over, no build tree --------------------------------
FROM runtime AS slim
COPY --from=build-slim /opt/venv /opt/venv
USER soundbus
WORKDIR /home/soundbus
ENTRYPOINT ["soundbus"]
CMD ["--help"]

FROM runtime AS torch
COPY --from=build-torch /opt/venv /opt/venv
USER soundbus
WORKDIR /home/soundbus
# One inference thread per process: scale classify by running more replicas (--shard I/N).
ENV OMP_NUM_THREADS=1
ENTRYPOINT ["soundbus"]
CMD ["classify", "--help"]
