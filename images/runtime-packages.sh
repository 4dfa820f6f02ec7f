#!/bin/sh
# Run inside a builder stage: prints the Debian packages that hold the shared libraries BINARY
# loads (from ldd), one per line, so the runtime stage installs exactly those and nothing else.
#   images/runtime-packages.sh /build/bin/kvcache-node > /build/runtime-packages.txt
set -eu
binary=$1
ldd "$binary" | awk '/=> \// {print $3}' | while read -r lib; do
  # usrmerge: ldd may print /lib/... while dpkg knows /usr/lib/... (or the reverse).
  dpkg -S "*/$(basename "$lib")" 2>/dev/null | cut -d: -f1 | tr ',' '\n'
done | sed 's/^ *//' | grep -v -- '-dev$' | sort -u
