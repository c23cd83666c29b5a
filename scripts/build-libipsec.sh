#!/usr/bin/env bash
# Build strongSwan 5.9.8's libipsec with qsgw's patch (scripts/strongswan/) into PREFIX/lib
# once (a stamp records what was built); `make setup` runs it. Source: $STRONGSWAN_TARBALL,
# else Debian's copy of the release tarball (the source of the installed charon), its
# SHA-256 checked either way.
# Usage: build-libipsec.sh PREFIX
set -euo pipefail

VERSION=5.9.8
SHA256=d3303a43c0bd7b75a12b64855e8edcb53696f06190364f26d1533bde1f2e453c
URL=http://deb.debian.org/debian/pool/main/s/strongswan/strongswan_$VERSION.orig.tar.bz2
here=$(cd "$(dirname "$0")" && pwd)
PATCH="$here/strongswan/libipsec-hold-responder-outbound.patch"

PREFIX=${1:?usage: build-libipsec.sh PREFIX}
STAMP="$PREFIX/.qsgw-build"
WANT="libipsec $VERSION $SHA256 $(sha256sum "$PATCH" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -e "$PREFIX/lib/libipsec.so.0" ]; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball=${STRONGSWAN_TARBALL:-}
if [ -z "$tarball" ]; then
  echo "libipsec: fetching $URL (set STRONGSWAN_TARBALL to build from a local copy)"
  tarball="$work/strongswan-$VERSION.tar.bz2"
  python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
    "$URL" "$tarball"
fi
got=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "libipsec: $tarball has SHA-256 $got, expected $SHA256; refusing it" >&2
  exit 1
fi
tar -xjf "$tarball" -C "$work"
src="$work/strongswan-$VERSION"
# Outside a repository git apply works as patch(1) does (git is a setup package).
(cd "$src" && git apply -p1 "$PATCH")

start=$(date +%s)
# Only libstrongswan (libipsec links against it; at run time charon's own is used)
# and libipsec are built.
(cd "$src" && ./configure --disable-defaults --enable-libipsec --enable-kernel-libipsec \
  --enable-charon --disable-static --enable-shared >"$work/configure.log" 2>&1) \
  || { tail -30 "$work/configure.log" >&2; exit 1; }
for dir in src/libstrongswan src/libipsec; do
  make -C "$src/$dir" -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -50 "$work/make.log" >&2; exit 1; }
done
rm -rf "$PREFIX"
mkdir -p "$PREFIX/lib"
cp -a "$src"/src/libipsec/.libs/libipsec.so.0* "$PREFIX/lib/"
echo "$WANT" >"$STAMP"
echo "libipsec: $VERSION with the qsgw patch installed in $PREFIX ($(( $(date +%s) - start )) s)"
