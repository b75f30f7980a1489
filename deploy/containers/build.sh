#!/usr/bin/env bash
# Builds the cinfer container images with buildah (vfs storage, chroot isolation: no container engine or
# daemon, no registry) on a Debian minbase made by debootstrap, and runs each image's entrypoint with --help.
#
#   deploy/containers/build.sh [IMAGE...]        # IMAGE in: init encfs proxy client-proxy attest (default: all)
#
# Environment:
#   CINFER_BIN_DIR     where the release binaries are (default: $CARGO_TARGET_DIR/release or target/release)
#   CINFER_IMAGE_TAG   tag of the built images (default: dev); images are named localhost/cinfer-<IMAGE>:<tag>
#   CINFER_DEBIAN_MIRROR  debootstrap mirror (default: http://deb.debian.org/debian)
#   CINFER_BUILDAH_ROOT   a storage directory of its own (default: buildah's; tests use a temporary one)
# Needs root, buildah and debootstrap (apt-get install buildah debootstrap). An image whose binary is missing is
# reported as SKIP; a build or --help failure fails the script. The base image is made once and reused.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin_dir=${CINFER_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}
tag=${CINFER_IMAGE_TAG:-dev}
mirror=${CINFER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=localhost/cinfer-base:bookworm
bah=(buildah --storage-driver vfs)
if [ -n "${CINFER_BUILDAH_ROOT:-}" ]; then
  bah+=(--root "$CINFER_BUILDAH_ROOT/storage" --runroot "$CINFER_BUILDAH_ROOT/run")
fi

declare -A binary=([init]=cinfer-init [encfs]=cinfer-encfs [proxy]=cinfer-proxy [client-proxy]=cinfer-proxy
                   [attest]=cinfer-attest)
declare -A user=([init]=0:0 [encfs]=0:0 [proxy]=65532:65532 [client-proxy]=65532:65532 [attest]=65532:65532)
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(init encfs proxy client-proxy attest)

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (apt-get install -y $tool)" >&2; exit 1; }
done

if ! "${bah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  echo "== base: debootstrap --variant=minbase bookworm ($mirror)"
  rootfs=$(mktemp -d /var/tmp/cinfer-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; exit 1; }
  # Documentation, manuals and translations are not needed to run a binary.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  ctr=$("${bah[@]}" from scratch)
  mnt=$("${bah[@]}" mount "$ctr")
  cp -a "$rootfs"/. "$mnt"/
  "${bah[@]}" umount "$ctr" >/dev/null
  "${bah[@]}" config --cmd /bin/bash "$ctr"
  "${bah[@]}" commit --quiet "$ctr" "$base" >/dev/null
  "${bah[@]}" rm "$ctr" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  trap - EXIT
fi

failed=0
for name in "${images[@]}"; do
  bin=${binary[$name]:?unknown image $name}
  if [ ! -x "$bin_dir/$bin" ]; then
    echo "SKIP $name: $bin_dir/$bin not built"
    continue
  fi
  # The build context mirrors the repository layout the Containerfiles expect, with a stripped binary.
  ctx=$(mktemp -d /var/tmp/cinfer-ctx.XXXXXX)
  mkdir -p "$ctx/target/release"
  objcopy --strip-debug "$bin_dir/$bin" "$ctx/target/release/$bin" 2>/dev/null || cp "$bin_dir/$bin" "$ctx/target/release/$bin"
  image=localhost/cinfer-$name:$tag
  start=$SECONDS
  if ! "${bah[@]}" bud --quiet --isolation chroot --build-arg BASE="$base" -f "$here/$name.Containerfile" \
       -t "$image" "$ctx" >"$ctx.log" 2>&1; then
    echo "FAIL $name: build"; tail -20 "$ctx.log"; failed=1; rm -rf "$ctx" "$ctx.log"; continue
  fi
  rm -rf "$ctx" "$ctx.log"
  entrypoint=$("${bah[@]}" inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$image")
  image_user=$("${bah[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
  ctr=$("${bah[@]}" from --pull=never "$image")
  # shellcheck disable=SC2086 # the entrypoint is a list of words without spaces
  if help=$("${bah[@]}" run --isolation chroot --user "$image_user" "$ctr" -- $entrypoint --help 2>&1) \
     && grep -q "Usage:" <<<"$help"; then
    size=$("${bah[@]}" images --format '{{.Size}}' "$image" 2>/dev/null | head -1 || true)
    echo "ok   $name: $image user=$image_user entrypoint=[${entrypoint% }] --help ok ($((SECONDS - start))s)${size:+ size=$size}"
  else
    echo "FAIL $name: '$entrypoint--help' in the image:"; sed 's/^/    /' <<<"$help" | head -20; failed=1
  fi
  if [ "$name" = init ] && command -v ip >/dev/null; then
    # With CAP_NET_ADMIN and CAP_NET_RAW added (what the deployments grant), the image's own tools apply and read the
    # redirect in a throwaway network namespace (never the host's), with each backend.
    for backend in iptables nftables; do
      ns=cinfer-image-$$-$backend
      ip netns add "$ns"
      if [ $backend = iptables ]; then check=(iptables-save -t nat); want='-j REDIRECT --to-ports 15006'
      else check=(nft list table inet cinfer); want='redirect to :15006'; fi
      in_image=(ip netns exec "$ns" "${bah[@]}" run --isolation chroot --user 0:0 --cap-add CAP_NET_ADMIN
                --cap-add CAP_NET_RAW "$ctr" --)
      if "${in_image[@]}" /usr/local/bin/cinfer-init apply --backend $backend >/dev/null 2>&1 \
         && "${in_image[@]}" "${check[@]}" 2>/dev/null | grep -q -- "$want"; then
        echo "ok   init: 'cinfer-init apply --backend $backend' in the image installed the redirect (netns $ns)"
      else
        echo "FAIL init: 'cinfer-init apply --backend $backend' in the image did not install the redirect"; failed=1
      fi
      ip netns del "$ns"
    done
  fi
  if [ "$name" = proxy ] && command -v python3 >/dev/null; then
    # The proxy command of the rendered ACI golden template must parse (clap rejects unknown flags before --help).
    mapfile -t rendered < <(python3 -c 'import json, sys
t = json.load(open(sys.argv[1]))
c = [c for c in t["resources"][0]["properties"]["containers"] if c["name"] == "proxy"][0]
print("\n".join(c["properties"]["command"]))' "$root/deploy/tests/golden/aci/template.json")
    if "${bah[@]}" run --isolation chroot --user "$image_user" "$ctr" -- "${rendered[@]}" --help >/dev/null 2>&1; then
      echo "ok   proxy: the rendered command '${rendered[*]}' parses"
    else
      echo "FAIL proxy: the rendered command '${rendered[*]}' does not parse"; failed=1
    fi
  fi
  "${bah[@]}" rm "$ctr" >/dev/null
  if [ "$image_user" != "${user[$name]}" ]; then
    echo "FAIL $name: image user is '$image_user', expected '${user[$name]}'"; failed=1
  fi
done
exit $failed
