#!/usr/bin/env bash
# Create bench/work/peers-venv with the peer focus stackers and the metric libraries.
# The peers live in their own venv: focusweave pulls opencv-python, which clashes with the
# project's opencv-python-headless.  Also checks the Debian tools (hugin-tools, enfuse, time).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/work/peers-venv"
py="${PYTHON:-python3}"

mkdir -p "$here/work"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet focusweave rawhdr scikit-image tifffile imagecodecs numpy

missing=()
for tool in align_image_stack enfuse /usr/bin/time; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}" >&2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq hugin-tools enfuse time
    else
        echo "install them with: sudo apt-get install hugin-tools enfuse time" >&2
        exit 1
    fi
fi

"$venv/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("focusweave", "rawhdr", "scikit-image", "opencv-python", "numpy", "tifffile"):
    try:
        print(f"{name:16s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name:16s} (not installed)")
PY
echo "peers venv ready: $venv"
