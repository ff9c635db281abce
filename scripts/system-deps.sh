#!/bin/sh
# Best-effort system packages for two groups of tests (called by `make setup`):
#   - PostgreSQL server binaries: the API suite also runs on a throwaway PostgreSQL server;
#   - headless Chromium: the dashboard test renders the page.
# Installed from Debian/Ubuntu packages when missing and apt-get can run (as root, or through
# password-less sudo). Never fails the build: where they cannot be installed, the tests that need
# them skip and say why.
set -u

need=""
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    need="$need postgresql"
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    need="$need chromium"
fi
[ -z "$need" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: no apt-get; install$need yourself, or their tests skip (saying so)"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "system-deps: not root and no password-less sudo; install$need yourself, or their tests skip"
    exit 0
fi

echo "system-deps: installing$need (Debian packages) for the PostgreSQL and dashboard tests"
if $as_root apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends $need \
        >/dev/null; then
    echo "system-deps: installed$need"
else
    echo "system-deps: apt-get could not install$need; their tests skip (saying so)"
fi
exit 0
