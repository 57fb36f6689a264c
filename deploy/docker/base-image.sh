#!/usr/bin/env bash
# base-image.sh [TAG] — a Debian bookworm base image built from Debian's packages, for machines
# that can pull no image (CI): debootstrap --variant=minbase into a folder, then `docker import`.
# The Dockerfiles take it as --build-arg BASE_IMAGE=TAG; with a registry, use debian:bookworm-slim.
# Needs root (debootstrap) and Debian's package mirror (DEBIAN_MIRROR, default debootstrap's own).
# Does nothing if TAG already exists (unless REBUILD=1).
set -euo pipefail
TAG=${1:-specd-base:bookworm}
if [ "${REBUILD:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base-image: $TAG exists"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    echo "base-image: installing debootstrap"
    { apt-get install -y -qq --no-install-recommends debootstrap ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap; }; } >/dev/null
fi
root=$(mktemp -d)
trap 'rm -rf --one-file-system "$root" "$root.log"' EXIT
start=$(date +%s)
# ca-certificates: nodes download models from Hugging Face over HTTPS.
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" ${DEBIAN_MIRROR:-} >"$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; echo "base-image: debootstrap failed (log above)" >&2; exit 1; }
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "base-image: $TAG built in $(($(date +%s) - start)) s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
