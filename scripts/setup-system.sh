#!/usr/bin/env bash
# The system packages that segray's tests need and pip cannot install: Debian's `chromium`
# (the report tests drive it through Playwright; tests/browser.py). Installs what is missing
# with apt-get, as root or through sudo; where it cannot, says how and exits 1.
#
#   scripts/setup-system.sh        # the README's Quickstart and .ci/run call it
#
# SEGRAY_CHROMIUM names another Chromium binary, as it does for the tests.
set -euo pipefail

runnable() { [[ -n "$1" && -f "$1" && -x "$1" ]]; }

missing=()
if ! runnable "${SEGRAY_CHROMIUM:-/usr/bin/chromium}" && ! runnable "$(command -v chromium || true)"; then
    missing+=(chromium)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

how="install them with your package manager (Debian/Ubuntu: sudo apt-get install ${missing[*]}), or set SEGRAY_CHROMIUM to a Chromium binary"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-system: missing ${missing[*]} and no apt-get here: $how" >&2
    exit 1
fi
if [[ $EUID -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "setup-system: missing ${missing[*]}, not root and no sudo: $how" >&2
    exit 1
fi
echo "setup-system: installing ${missing[*]} for the tests (apt-get)"
export DEBIAN_FRONTEND=noninteractive
# A fresh image often has no package lists yet: update them only when the install needs it.
if ! "${as_root[@]}" apt-get install -y -q "${missing[@]}"; then
    "${as_root[@]}" apt-get update -q
    "${as_root[@]}" apt-get install -y -q "${missing[@]}"
fi
