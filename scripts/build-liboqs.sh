#!/usr/bin/env bash
# Build the pinned liboqs into PREFIX once (a stamp records what was built).
# Source: $LIBOQS_TARBALL after its SHA-256 is checked, else the pinned tag,
# cloned and its commit checked. Usage: build-liboqs.sh PREFIX
set -euo pipefail

VERSION=0.16.0
COMMIT=5a1a854b0dc9f2141bdc771c555ee60c37950183
SHA256=1b82e61efbe55b8ed98374d8b6f416e948b59154612153c71909b060e1368941
REPO=https://github.com/open-quantum-safe/liboqs.git
# Only what the suites (and the ETSI vector check) use: ML-KEM, FrodoKEM,
# HQC-3, Classic McEliece (460896f, 6688128f) and ML-DSA.
ALGS="KEM_ml_kem_512;KEM_ml_kem_768;KEM_ml_kem_1024"
ALGS+=";KEM_frodokem_976_aes;KEM_frodokem_976_shake;KEM_frodokem_1344_aes;KEM_frodokem_1344_shake"
ALGS+=";KEM_hqc_3;KEM_classic_mceliece_460896f;KEM_classic_mceliece_6688128f"
ALGS+=";SIG_ml_dsa_65;SIG_ml_dsa_87"

PREFIX=${1:?usage: build-liboqs.sh PREFIX}
STAMP="$PREFIX/.qsgw-build"
WANT="liboqs $VERSION $COMMIT $ALGS"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && ls "$PREFIX"/lib/liboqs.so.* >/dev/null 2>&1; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${LIBOQS_TARBALL:-}" ]; then
  echo "liboqs: building $VERSION from $LIBOQS_TARBALL"
  got=$(sha256sum "$LIBOQS_TARBALL" | cut -d' ' -f1)
  if [ "$got" != "$SHA256" ]; then
    echo "liboqs: $LIBOQS_TARBALL has SHA-256 $got, expected $SHA256; refusing it" >&2
    exit 1
  fi
  tar -xzf "$LIBOQS_TARBALL" -C "$work"
  src="$work/liboqs-$VERSION"
else
  echo "liboqs: cloning $VERSION (set LIBOQS_TARBALL to build from a local tarball)"
  git clone -q --depth 1 --branch "$VERSION" "$REPO" "$work/liboqs-$VERSION"
  src="$work/liboqs-$VERSION"
  got=$(git -C "$src" rev-parse HEAD)
  if [ "$got" != "$COMMIT" ]; then
    echo "liboqs: tag $VERSION is commit $got, expected $COMMIT; refusing it" >&2
    exit 1
  fi
fi

start=$(date +%s)
cmake -S "$src" -B "$work/build" -G Ninja -Wno-dev \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_INSTALL_LIBDIR=lib \
  -DBUILD_SHARED_LIBS=ON -DOQS_BUILD_ONLY_LIB=ON -DOQS_DIST_BUILD=ON -DOQS_USE_OPENSSL=ON \
  -DOQS_MINIMAL_BUILD="$ALGS" >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" >"$work/build.log" 2>&1 || { tail -50 "$work/build.log" >&2; exit 1; }
rm -rf "$PREFIX"
cmake --install "$work/build" >/dev/null
echo "$WANT" >"$STAMP"
echo "liboqs: $VERSION installed in $PREFIX ($(( $(date +%s) - start )) s)"
