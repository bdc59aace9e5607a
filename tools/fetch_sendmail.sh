#!/usr/bin/env bash
# Unpacks Debian's sendmail (binaries, cf macros) and m4 into a private root,
# for tests/test_sendmail_e2e.py: the sendmail package cannot be installed
# beside postfix (they conflict), and the tests need both.
#
# Nothing is installed: `apt-get download` fetches the .debs, `dpkg-deb -x`
# unpacks them. The shared libraries sendmail needs and this machine lacks
# (libwrap0, liblockfile1 beside postfix) are unpacked too; the tests run
# the binary with LD_LIBRARY_PATH pointing into the root. Idempotent: a
# complete root is left alone.
#
# Usage: tools/fetch_sendmail.sh [ROOT]   (default: .cache/sendmail-root)
# Needs Debian (apt-get, dpkg-deb) and network access to its mirrors.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-$here/.cache/sendmail-root}
bin=usr/libexec/sendmail/sendmail
libdir=usr/lib/x86_64-linux-gnu
if [ -f "$root/.complete" ]; then
  echo "sendmail root is present: $root"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# _apt (apt's download user) must be able to write the .debs here.
chmod 0755 "$work"
chown _apt "$work" 2>/dev/null || true
stage=$work/root
mkdir -p "$stage"

download() {
  (cd "$work" && apt-get download -q "$@" >/dev/null)
}
unpack_all() {
  local deb
  for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$stage"
  done
  rm -f "$work"/*.deb
}
installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# A machine whose package lists were never fetched (or were cleaned, as in
# container images) knows no candidate to download.
if ! apt-cache show sendmail-bin >/dev/null 2>&1; then
  apt-get update -qq
fi

# m4 always from the root: the test builds sendmail.cf with it, and a
# machine without it (CI's) needs nothing installed for that.
download sendmail-bin sendmail-cf m4
unpack_all

# The shared-library packages sendmail-bin depends on (lib*) that are not
# installed here.
libs=()
for pkg in $(apt-cache depends --no-recommends --no-suggests --no-conflicts \
               --no-breaks --no-replaces --no-enhances sendmail-bin \
             | sed -n 's/^ *Depends: \(lib[^ ]*\)$/\1/p'); do
  installed "$pkg" || libs+=("$pkg")
done
if [ ${#libs[@]} -gt 0 ]; then
  download "${libs[@]}"
  unpack_all
fi

# The package's sendmail is set-group-id mail: the kernel would then run it
# in secure mode and the loader would ignore LD_LIBRARY_PATH. The tests run
# it as root, who needs no extra group.
chmod g-s "$stage/$bin"

missing=$(LD_LIBRARY_PATH=$stage/$libdir ldd "$stage/$bin" | grep 'not found' || true)
if [ -n "$missing" ]; then
  echo "sendmail still lacks shared libraries:" >&2
  echo "$missing" >&2
  exit 1
fi

mkdir -p "$(dirname "$root")"
rm -rf "$root"
mv "$stage" "$root"
chmod 0755 "$root"
touch "$root/.complete"
echo "sendmail root unpacked: $root"
