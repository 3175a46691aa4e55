#!/usr/bin/env bash
# Install the system packages drkit needs when they are missing (Debian/Ubuntu, as root).
# Not root: say exactly what to install and fail, rather than half-working later.
#   scripts/ensure-system.sh          restic (and python3-venv): what drkit and `make demo` need
#   scripts/ensure-system.sh test     also PostgreSQL and MariaDB servers, Chromium (the HTML
#                                     report test), poppler-utils (pdftotext) and Pango (PDF
#                                     reports via WeasyPrint), openssl and jq (the evidence
#                                     bundle is verified as an auditor would) for the tests
set -euo pipefail

missing=()
command -v restic >/dev/null 2>&1 || missing+=(restic)
# Debian's python3 needs python3-venv for `python3 -m venv` (ensurepip).
${PYTHON:-python3} -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${1:-}" = "test" ]; then
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
  command -v pg_dump >/dev/null 2>&1 || missing+=(postgresql-client)
  { command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } || missing+=(mariadb-server)
  { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } \
    || missing+=(chromium)
  command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
  # The evidence bundle test verifies it as an auditor would: sha256sum, openssl, jq.
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v jq >/dev/null 2>&1 || missing+=(jq)
  ldconfig -p 2>/dev/null | grep -q 'libpangoft2-1.0.so.0' || missing+=(libpango-1.0-0 libpangoft2-1.0-0)
  # WeasyPrint needs at least one font; any of these will do.
  compgen -G "/usr/share/fonts/truetype/*/*.ttf" >/dev/null || missing+=(fonts-dejavu-core)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "drkit needs these system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}   (then run make again)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "drkit needs: ${missing[*]}; no apt-get here, install them with your package manager" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}" >&2
