# soundbus images, one Dockerfile, two targets (sizes and build times: docs/deploy.md):
#   slim  - capture, convert, proxy, tail, record/replay (no torch)
#   torch - classify (silero-vad, YAMNet) on the CPU
#
#   docker build --target slim  -t soundbus:slim  .
#   docker build --target torch -t soundbus:torch .
# or `docker compose build`. Entry point: the `soundbus` command, run as user soundbus (uid 1000).
#
# Layers are ordered so that a change to the source (or to the final stages' settings) rebuilds only
# each image's last, small layer: the dependencies (torch takes minutes) are read from pyproject.toml
# alone. Stages are in build order, so the classic builder stops after slim when that is the target.

# ---- runtime: what every image needs at run time -------------------------------------------
FROM debian:bookworm-slim AS runtime
# ffmpeg decodes url: sources; it brings ~260 MB of codec and GL libraries. --build-arg FFMPEG=
# leaves it out (every other source still works).
ARG FFMPEG=ffmpeg
# python3 (3.11 on bookworm): the interpreter. libportaudio2: sounddevice. libasound2-plugins: ALSA's
# "pulse" device, so capture records through the host's PulseAudio socket. pulseaudio-utils: pactl,
# to list monitors for loopback. ca-certificates: https sources.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv libportaudio2 libasound2-plugins pulseaudio-utils ca-certificates $FFMPEG \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --groups audio soundbus \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- the dependency lists, read from pyproject.toml -----------------------------------------------
# Copied on by content: a pyproject.toml change that leaves them alone rebuilds nothing below.
FROM runtime AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; \
open("/tmp/base.txt", "w").write("\n".join(p["dependencies"]) + "\n"); \
open("/tmp/classify.txt", "w").write("\n".join(p["optional-dependencies"]["classify"]) + "\n")'

# ---- the base install's dependencies -------------------------------------------------------------
FROM runtime AS deps-slim
COPY --from=requirements /tmp/base.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# ---- slim: plus soundbus itself ------------------------------------------------------------------
FROM deps-slim AS slim
COPY . /tmp/src
# /usr/share/soundbus/demo.wav: the bundled demo recording at a fixed path. /recordings: owned by the
# user, so a fresh volume mounted there is writable.
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src \
 && mkdir -p /usr/share/soundbus \
 && ln -s "$(python3 -c 'import box.up; print(box.up.DEMO_RECORDING)')" /usr/share/soundbus/demo.wav \
 && install -d -o soundbus -g soundbus /recordings
USER soundbus
WORKDIR /home/soundbus
# Every stage rewrites $SOUNDBUS_HEALTH_FILE about once a second; `soundbus health` says whether it is
# fresh and ok (input connected, frames flowing); a command that writes none is reported unhealthy.
# Every 15 s, since each check starts a Python process (~0.3 s of CPU).
ENV SOUNDBUS_HEALTH_FILE=/tmp/soundbus-health.json
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
  CMD soundbus health "$SOUNDBUS_HEALTH_FILE" --max-age 5
ENTRYPOINT ["soundbus"]
CMD ["--help"]

# ---- plus the classify extra: torch and the models' packages -------------------------------------
FROM deps-slim AS deps-torch
# CPU-only torch wheels; empty: whatever PyPI serves (on Linux x86_64 a CUDA build, ~4 GB more).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --from=requirements /tmp/classify.txt /tmp/requirements.txt
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# ---- torch: plus soundbus itself -----------------------------------------------------------------
FROM deps-torch AS torch
# Models unpacked at build time (YAMNet's ONNX file) live here, so a read-only root file system works.
ENV XDG_CACHE_HOME=/var/cache/soundbus
COPY . /tmp/src
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src \
 && mkdir -p /usr/share/soundbus \
 && ln -s "$(python3 -c 'import box.up; print(box.up.DEMO_RECORDING)')" /usr/share/soundbus/demo.wav \
 && install -d -o soundbus -g soundbus /recordings \
 && python3 -c 'from classify.models.yamnet import unpack_model; unpack_model()' \
 && chmod -R a+rX "$XDG_CACHE_HOME"
USER soundbus
WORKDIR /home/soundbus
# As in slim (see there).
ENV SOUNDBUS_HEALTH_FILE=/tmp/soundbus-health.json
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
  CMD soundbus health "$SOUNDBUS_HEALTH_FILE" --max-age 5
# One inference thread per process: scale classify by running more replicas (--shard I/N).
ENV OMP_NUM_THREADS=1
ENTRYPOINT ["soundbus"]
CMD ["classify", "--help"]
