# Sourced by scripts/advent and scripts/test (and by developers: `source scripts/env.sh`).
#
# Makes sure libtorch is here: torch==2.11.0 from PyPI in a git-ignored, project-local
# virtual environment (.venv, or $ADVENT_VENV), then exports what tch's build and the binary
# need. The first call installs (about 5 GB, a minute or two); later calls only export.

ADVENT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADVENT_TORCH_VERSION=2.11.0
ADVENT_VENV="${ADVENT_VENV:-$ADVENT_ROOT/.venv}"
advent_marker="$ADVENT_VENV/.advent-torch-$ADVENT_TORCH_VERSION"

if [ ! -f "$advent_marker" ]; then
    echo "advent: installing torch==$ADVENT_TORCH_VERSION (libtorch) into $ADVENT_VENV (once; about 5 GB)" >&2
    python="${PYTHON:-python3}"
    if [ ! -x "$ADVENT_VENV/bin/python" ]; then
        "$python" -m venv "$ADVENT_VENV" || { echo "advent: could not create a venv with $python" >&2; return 1 2>/dev/null || exit 1; }
    fi
    "$ADVENT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$ADVENT_TORCH_VERSION" \
        || { echo "advent: pip install torch==$ADVENT_TORCH_VERSION failed" >&2; return 1 2>/dev/null || exit 1; }
    touch "$advent_marker"
fi

advent_torch_lib="$(ls -d "$ADVENT_VENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -n 1)"
if [ -z "$advent_torch_lib" ]; then
    echo "advent: no torch/lib under $ADVENT_VENV; remove $advent_marker and retry" >&2
    return 1 2>/dev/null || exit 1
fi
export LIBTORCH_USE_PYTORCH=1
export VIRTUAL_ENV="$ADVENT_VENV"
export PATH="$ADVENT_VENV/bin:$PATH"
export LD_LIBRARY_PATH="$advent_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset advent_marker advent_torch_lib
