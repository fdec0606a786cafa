#!/usr/bin/env bash
# Builds the sandbox image with no registry: a Debian bookworm root file system made by
# mmdebstrap from the Debian package mirror, imported with `docker import`.
# Usage: build-offline.sh IMAGE [LABEL=VALUE ...]
set -euo pipefail
image=${1:?usage: build-offline.sh IMAGE [LABEL=VALUE ...]}
shift
command -v mmdebstrap >/dev/null || { echo "build-offline.sh: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# python3 (the full standard library) on the `essential` variant: coreutils, sh, grep, sed.
mmdebstrap --quiet --variant=essential --include=python3 \
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
  --change 'ENV PYTHONUNBUFFERED=1'
  --change 'ENV HOME=/tmp'
  --change 'USER 10001:10001'
  --change 'WORKDIR /workspace'
  --change 'CMD ["python3"]'
)
for label in "$@"; do changes+=(--change "LABEL $label"); done
docker import "${changes[@]}" "$work/rootfs.tar" "$image" >/dev/null
echo "built $image offline from Debian bookworm"
