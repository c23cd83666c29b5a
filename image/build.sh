#!/usr/bin/env bash
# Build the qsgw appliance image (Debian 12) into OUT, cached by input hash.
#
#   image/build.sh OUT        (make image: OUT=build/image)
#
# mmdebstrap builds the root into a directory (no loop devices, nothing to
# mount by hand), a hook installs qsgw from wheels into /opt/qsgw with the
# venv's liboqs, and mksquashfs packs it: the root is read-only by
# construction. OUT/ then holds rootfs.squashfs (the root disk), vmlinuz and
# initrd.img (for qemu's direct kernel boot), manifest.json.
# Needs: mmdebstrap, squashfs-tools (make image installs them).
set -euo pipefail

OUT=${1:?usage: image/build.sh OUT}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ "$(id -u)" = 0 ] || { echo "image: needs root (mmdebstrap --mode=root)" >&2; exit 2; }
LIBOQS=.venv/opt/liboqs
[ -e "$LIBOQS/lib/liboqs.so" ] || { echo "image: $LIBOQS missing (make setup builds it)" >&2; exit 2; }

# Two layers, each cached by the hash of its inputs: the Debian root (its
# package list and the initramfs hook), then qsgw on top of it.
base_hash=$( (sed -n '/^PACKAGES=/,/^# PACKAGES_END/p' image/build.sh; cat image/initramfs-hook) \
  | sha256sum | cut -c1-16)
inputs() {
  git ls-files -z --cached --others --exclude-standard image gateway kms_client pyproject.toml README.md \
    | xargs -0 sha256sum
  sha256sum "$LIBOQS"/lib/liboqs.so.* "$LIBOQS/.qsgw-build" 2>/dev/null || true
  echo "$base_hash"
}
hash=$(inputs | sha256sum | cut -c1-16)
if [ -f "$OUT/input.sha256" ] && [ "$(cat "$OUT/input.sha256")" = "$hash" ] \
   && [ -s "$OUT/rootfs.squashfs" ]; then
  echo "image: cached ($OUT, inputs $hash)"
  exit 0
fi

start=$(date +%s)
mkdir -p "$OUT"
work="$OUT.work"
rm -rf --one-file-system "$work"
mkdir -p "$work"
trap 'rm -rf --one-file-system "$work"' EXIT

# What the appliance runs, from the Debian archive. charon-systemd: charon as
# strongswan.service with kernel ESP through kernel-netlink; no
# libcharon-extra-plugins, so no kernel-libipsec (userspace ESP).
PACKAGES=linux-image-amd64,initramfs-tools,systemd,systemd-sysv,udev,kmod
PACKAGES+=,iproute2,iputils-ping,nftables,wireguard-tools,iperf3,procps,util-linux,e2fsprogs
PACKAGES+=,charon-systemd,strongswan-swanctl,libstrongswan-standard-plugins
PACKAGES+=,python3,python3-venv
# PACKAGES_END
base="$OUT/base-$base_hash.tar"
if [ ! -s "$base" ]; then
  echo "image: Debian root (mmdebstrap, once per package list)"
  rm -f "$OUT"/base-*.tar
  mmdebstrap --quiet --mode=root --variant=minbase --include="$PACKAGES" \
    --setup-hook='mkdir -p "$1/etc/initramfs-tools/hooks"' \
    --setup-hook='install -m 0755 image/initramfs-hook "$1/etc/initramfs-tools/hooks/qsgw"' \
    bookworm "$work/base.tar"
  mv "$work/base.tar" "$base"
fi

echo "image: qsgw layer"
root="$work/root"
mkdir -p "$root"
tar -C "$root" -xf "$base"
.venv/bin/pip wheel -q --wheel-dir "$root/tmp/wheels" '.[oqs]'
mkdir -p "$root/opt/qsgw/opt/liboqs"
cp -a "$LIBOQS/lib" "$root/opt/qsgw/opt/liboqs/"
rm -rf "$root/opt/qsgw/opt/liboqs/lib/cmake" "$root/opt/qsgw/opt/liboqs/lib/pkgconfig"
cp -a image/rootfs/. "$root/"
install -m 0644 image/qsgw.service "$root/etc/systemd/system/qsgw.service"
# No mounts: venv, pip and systemctl enable work in a bare chroot.
chroot "$root" /bin/sh /usr/lib/qsgw/image-setup
cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd.img"
kernel=$(ls "$root/lib/modules")
rm -rf "$root/tmp/"* "$root/var/cache/apt/"*.bin "$root/var/lib/apt/lists/"* "$root/boot/"*

echo "image: squashfs"
mksquashfs "$root" "$work/rootfs.squashfs" -comp zstd -noappend -quiet -no-progress
mb=$(du -m "$work/rootfs.squashfs" | cut -f1)
cat > "$work/manifest.json" <<JSON
{"inputs": "$hash", "base": "$base_hash", "kernel": "$kernel", "rootfs_mb": $mb,
 "build_s": $(( $(date +%s) - start )),
 "cmdline": "root=/dev/vda rootfstype=squashfs ro systemd.volatile=state console=ttyS0"}
JSON
mv "$work/rootfs.squashfs" "$work/vmlinuz" "$work/initrd.img" "$work/manifest.json" "$OUT/"
echo "$hash" > "$OUT/input.sha256"
echo "image: built $OUT in $(( $(date +%s) - start )) s ($mb MB)"
