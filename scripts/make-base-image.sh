#!/usr/bin/env bash
# Make the Dockerfile's base image, debian:bookworm-slim, on a machine that cannot pull from a
# registry: Debian's debootstrap (minbase) from a Debian mirror, trimmed the way the official slim
# image is, then `docker import`. The Dockerfile builds unchanged on it, and unchanged for everyone
# who pulls the official image instead.
#
#   scripts/make-base-image.sh                      # does nothing if the tag already exists
#   scripts/make-base-image.sh --ca-bundle FILE     # builds on this base trust FILE for pip (see below)
#
# Environment: DOCKER (client command, default docker), MIRROR (default: the first Debian mirror
# this machine's apt uses for bookworm, else http://deb.debian.org/debian), SECURITY_MIRROR.
#
# --ca-bundle: on a network whose TLS goes through an inspecting proxy, pip inside a build needs the
# proxy's CA. The bundle is copied into the base image and PIP_CERT set there, so the Dockerfile
# itself stays free of it (the official base has neither).
set -euo pipefail

TAG=debian:bookworm-slim
SUITE=bookworm
DOCKER=${DOCKER:-docker}
ca_bundle=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ca-bundle) ca_bundle=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "make-base-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$ca_bundle" ] && [ ! -r "$ca_bundle" ]; then
  echo "make-base-image.sh: cannot read CA bundle $ca_bundle" >&2; exit 2
fi
if $DOCKER image inspect "$TAG" >/dev/null 2>&1; then
  echo "make-base-image.sh: $TAG already exists"; exit 0
fi
command -v debootstrap >/dev/null || { echo "make-base-image.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }

host_mirror() {
  # First http(s) URI of an apt source (deb822 or one-line) that serves the bookworm suite.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk -v suite="$SUITE" '
      /^URIs:/ { uri = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
      /^$/ { if (ok && uri) { print uri; exit } ok = 0; uri = "" }
      END { if (ok && uri) print uri }' "$f"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' || true
}
MIRROR=${MIRROR:-$(host_mirror | head -n 1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "make-base-image.sh: debootstrap $SUITE from $MIRROR (about a minute)"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
  || { tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# As the official slim image: no docs (but copyright), man pages or translations, now or on later
# installs; apt keeps no package files; the sources include updates and security.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::AutoRemove::SuggestsImportant "false";
EOF
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/* "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

changes=(--change 'CMD ["bash"]')
if [ -n "$ca_bundle" ]; then
  install -D -m 644 "$ca_bundle" "$rootfs/usr/local/share/build-ca/ca-bundle.crt"
  changes+=(--change 'ENV PIP_CERT=/usr/local/share/build-ca/ca-bundle.crt')
fi
tar -C "$rootfs" --numeric-owner -c . | $DOCKER import "${changes[@]}" - "$TAG" >/dev/null
echo "make-base-image.sh: made $TAG ($($DOCKER image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
