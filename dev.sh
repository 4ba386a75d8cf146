#!/usr/bin/env bash
# One entry point on a fresh Debian/Ubuntu machine; each command installs what it needs first.
#   ./dev.sh demo     stack the bundled sample bracket (pybridge/sample/ring6)
#   ./dev.sh test     run the whole test suite (real exiftool, rawpy, darktable under Xvfb)
#   ./dev.sh setup    only install (system packages, then the Python environment in .venv)
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages: the demo needs exiftool; the tests also run the real darktable under Xvfb
DEMO_PACKAGES=(python3 python3-venv libimage-exiftool-perl)
TEST_PACKAGES=("${DEMO_PACKAGES[@]}" darktable xvfb xauth sqlite3 lua-check)

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "installing Debian packages: ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

find_uv() {
    if command -v uv >/dev/null 2>&1; then UV=(uv); return; fi
    # uv is on PyPI; keep our own copy out of the project's environment
    if [ ! -x .uv-tool/bin/uv ]; then
        python3 -m venv .uv-tool
        .uv-tool/bin/pip install -q uv
    fi
    UV=(.uv-tool/bin/uv)
}

python_env() {
    find_uv
    # trust the system's certificate store, as pip and apt do (TLS-inspecting proxies, mirrors)
    export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}" UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"
    # --compile-bytecode: every `focusbridge` process (a darktable run, each Dask worker) would
    # otherwise compile its imports again where .pyc files are not written (read-only
    # installs, PYTHONDONTWRITEBYTECODE): about a second of start-up each time
    "${UV[@]}" sync --locked --group dev --extra dask --compile-bytecode --quiet
}

case "${1:-}" in
    setup)
        apt_install "${TEST_PACKAGES[@]}"
        python_env
        ;;
    demo)
        apt_install "${DEMO_PACKAGES[@]}"
        python_env
        shift
        exec .venv/bin/focusbridge demo "$@"
        ;;
    test)
        apt_install "${TEST_PACKAGES[@]}"
        python_env
        shift
        exec .venv/bin/python -m pytest "$@"
        ;;
    *)
        sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
