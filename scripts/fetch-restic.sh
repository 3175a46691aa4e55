#!/usr/bin/env bash
# Fetch the restic of another Debian suite (default: trixie, restic 0.18) into a cache directory,
# without touching the machine's apt sources: a private apt configuration downloads the .deb
# from the machine's own Debian mirror, and `dpkg -x` unpacks it.
#
#   scripts/fetch-restic.sh [SUITE] [CACHE_DIR]     prints the path of the restic binary
#
# The test suite runs the restic integration tests against this binary as well as the system's
# restic (Debian bookworm: 0.14). Idempotent: an existing binary in the cache is reused.
set -euo pipefail

suite="${1:-trixie}"
cache="${2:-$(cd "$(dirname "$0")/.." && pwd)/.cache/restic-$suite}"
binary="$cache/usr/bin/restic"

if [ -x "$binary" ] && "$binary" version >/dev/null 2>&1; then
  echo "$binary"
  exit 0
fi

for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "fetch-restic: $tool not found (a Debian machine is needed to fetch restic from $suite)" >&2
    exit 1
  }
done

# The machine's own Debian mirror: the first URI of a deb822 .sources file or a one-line
# sources.list entry that serves Debian's main archive (not security, not third-party).
mirror=""
for file in /etc/apt/sources.list.d/*.sources; do
  [ -f "$file" ] || continue
  mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$file")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/ && $i !~ /security/) { print $i; exit } }' /etc/apt/sources.list)
fi
mirror="${mirror:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/download"
echo "deb [signed-by=$keyring] $mirror $suite main" > "$work/sources.list"
options=(
  -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=$(id -un)" -qq
)
echo "fetch-restic: downloading restic from $mirror $suite into $cache" >&2
apt-get "${options[@]}" update >&2
(cd "$work/download" && apt-get "${options[@]}" download restic >&2)
deb=$(ls "$work"/download/restic_*.deb)
rm -rf "$cache"
mkdir -p "$cache"
dpkg -x "$deb" "$cache"
"$binary" version >&2
echo "$binary"
