#!/usr/bin/env bash
# Builds the container images, one per images/<name>/Containerfile, FROM scratch with buildah
# from static (musl) release binaries, into OCI archives under target/images/.
#
#   SEPTA_IMAGE_REPO  registry and path the images are tagged for (default: localhost)
#   SEPTA_IMAGE_TAG   tag (default: the workspace version)
#
# Runs as root and offline: nothing is pulled. buildah keeps its storage under target/buildah
# so a fresh clone needs no machine-wide configuration and `cargo clean` removes it all.
set -euo pipefail

fail() { echo "images: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# Resolved before the cd below, as cargo resolves a relative CARGO_TARGET_DIR.
TARGET_DIR="$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")"
cd "$ROOT"

MUSL_TARGET=x86_64-unknown-linux-musl
# `make test` sets image-test (unoptimised, see Cargo.toml); images for use are `image`.
PROFILE="${SEPTA_IMAGE_PROFILE:-image}"
case "$PROFILE" in
  image | image-test) ;;
  *) fail "SEPTA_IMAGE_PROFILE=$PROFILE: image (the default) or image-test" ;;
esac
# Every binary any image holds, as package:binary. An image copies the ones it needs from
# the shared build context.
BINARIES=(agent:septa-agent cni:septa-cni cli:septa)

for tool in buildah musl-gcc readelf; do
  command -v "$tool" >/dev/null || fail "$tool not found; run scripts/setup.sh (as root)"
done
rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET" ||
  fail "rust target $MUSL_TARGET not installed; run scripts/setup.sh"
[ "$(id -u)" -eq 0 ] || fail "must run as root (buildah with vfs storage, no user namespaces)"

# A key of [workspace.package] in Cargo.toml, or nothing.
workspace_key() {
  awk -v key="$1" '
    /^\[/ { section = ($0 == "[workspace.package]") }
    section && $1 == key && $2 == "=" { sub(/^[^"]*"/, ""); sub(/".*$/, ""); print; exit }
  ' Cargo.toml
}
VERSION="$(workspace_key version)"
LICENSE="$(workspace_key license)"
SOURCE="$(workspace_key repository)"
[ -n "$VERSION" ] || fail "no version in [workspace.package] of Cargo.toml"
[ -n "$LICENSE" ] || fail "no license in [workspace.package] of Cargo.toml"
REPO="${SEPTA_IMAGE_REPO:-localhost}"
REPO="${REPO%/}"
TAG="${SEPTA_IMAGE_TAG:-$VERSION}"

labels=(--label "dev.septa.build-profile=$PROFILE")
[ -z "$SOURCE" ] || labels+=(--label "org.opencontainers.image.source=$SOURCE")
if revision="$(git rev-parse HEAD 2>/dev/null)"; then
  labels+=(--label "org.opencontainers.image.revision=$revision")
fi

echo "images: building ${BINARIES[*]#*:} for $MUSL_TARGET (profile $PROFILE)"
packages=()
for entry in "${BINARIES[@]}"; do packages+=(-p "${entry%%:*}"); done
# cc-rs looks for x86_64-linux-musl-gcc, which Debian does not ship; ring's C code needs a
# compiler that targets musl's headers.
CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}" \
  cargo build -q --profile "$PROFILE" --target "$MUSL_TARGET" "${packages[@]}" ||
  fail "cargo build of the image binaries failed"

BIN_DIR="$TARGET_DIR/$MUSL_TARGET/$PROFILE"
OUT_DIR="$TARGET_DIR/images"
CONTEXT="$OUT_DIR/context"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT"
for entry in "${BINARIES[@]}"; do
  bin="$BIN_DIR/${entry#*:}"
  [ -x "$bin" ] || fail "$bin was not built"
  # A dynamically linked binary would build into an image that cannot start: scratch has no
  # loader or libc.
  if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    fail "$bin is dynamically linked; the images need static binaries"
  fi
  cp "$bin" "$CONTEXT/"
done

# Nothing is reused between runs (FROM scratch has no base layers to cache), so each run
# starts from empty storage rather than piling up copies of the old images.
STORAGE="$TARGET_DIR/buildah"
rm -rf "$STORAGE"
buildah_() {
  buildah --storage-driver vfs --root "$STORAGE/storage" --runroot "$STORAGE/run" "$@"
}

built=0
for containerfile in images/*/Containerfile; do
  name="septa-$(basename "$(dirname "$containerfile")")"
  ref="$REPO/$name:$TAG"
  archive="$OUT_DIR/$name.oci.tar"
  buildah_ bud --quiet --layers=false --format oci --isolation chroot \
    --build-arg "VERSION=$VERSION" --build-arg "LICENSE=$LICENSE" "${labels[@]}" \
    --tag "$ref" --file "$containerfile" "$CONTEXT" >/dev/null ||
    fail "buildah bud of $containerfile failed"
  rm -f "$archive.tmp"
  buildah_ push --quiet "$ref" "oci-archive:$archive.tmp:$ref" ||
    fail "buildah push of $ref to $archive failed"
  mv "$archive.tmp" "$archive"
  echo "images: built $ref -> ${archive#"$ROOT"/} ($(du -h "$archive" | cut -f1))"
  built=$((built + 1))
done
[ "$built" -gt 0 ] || fail "no images/*/Containerfile found"
# The binaries stay in cargo's target directory and in the images; the staged copies go.
rm -rf "$CONTEXT"
echo "images: buildah storage is $STORAGE (push from it with: buildah --storage-driver vfs --root $STORAGE/storage --runroot $STORAGE/run push ...)"
