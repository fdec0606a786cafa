#!/usr/bin/env bash
# Builds a sandbox image with no registry: a Debian bookworm root file system made by
# mmdebstrap from the Debian package mirror, with the packages the definition's `packages`
# file lists (one per line, `#` comments), imported with `docker import` with the `ENV` and
# `CMD` of the definition's Dockerfile.
# Usage: build-offline.sh IMAGE DEFINITION_DIR [LABEL=VALUE ...]
# Downloaded packages are kept in $TOKA_DEB_CACHE (default /var/cache/toka-agents/debs), so a
# second image, or the same with one more package, downloads only what it adds.
set -euo pipefail
image=${1:?usage: build-offline.sh IMAGE DEFINITION_DIR [LABEL=VALUE ...]}
definition=${2:?usage: build-offline.sh IMAGE DEFINITION_DIR [LABEL=VALUE ...]}
shift 2
command -v mmdebstrap >/dev/null || { echo "build-offline.sh: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }
packages=$(grep -v '^[[:space:]]*\(#\|$\)' "$definition/packages" 2>/dev/null | tr -s ' \n' ',' | sed 's/,$//')
cmd=$(sed -n 's/^CMD //p' "$definition/Dockerfile" | tail -n 1)
mapfile -t envs < <(sed -n 's/^ENV //p' "$definition/Dockerfile")

cache=${TOKA_DEB_CACHE:-/var/cache/toka-agents/debs}
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mmdebstrap --quiet --variant=essential ${packages:+--include="$packages"} \
  --skip=download/empty --skip=essential/unlink \
  --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"" \
  --setup-hook="sync-in '$cache' /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives '$cache'" \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='echo "sandbox:x:10001:10001::/tmp:/usr/sbin/nologin" >> "$1/etc/passwd"' \
  --customize-hook='echo "sandbox:x:10001:" >> "$1/etc/group"' \
  --customize-hook='mkdir -p "$1/workspace" && chown 10001:10001 "$1/workspace"' \
  --customize-hook='rm -rf "$1/var/cache/apt"/* "$1/var/lib/apt/lists"/*' \
  bookworm "$work/rootfs.tar"

changes=(
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'ENV PYTHONDONTWRITEBYTECODE=1'
  --change 'ENV HOME=/tmp'
  --change 'USER 10001:10001'
  --change 'WORKDIR /workspace'
  --change "CMD ${cmd:-[\"sh\"]}"
)
for env in "${envs[@]}"; do changes+=(--change "ENV $env"); done
for label in "$@"; do changes+=(--change "LABEL $label"); done
docker import "${changes[@]}" "$work/rootfs.tar" "$image" >/dev/null
echo "built $image offline from Debian bookworm${packages:+ with $packages}"
