#!/usr/bin/env bash
# Run the QGIS plugin's tests (tests/qgis) in a real, headless QGIS from Debian's packages.
#
#   bash plugins/qgis/run_tests.sh [pytest arguments...]
#
# 1. installs (when missing) the Debian packages qgis, python3-qgis, qgis-providers, python3-pytest,
#    python3-venv, and xvfb + xauth for the one desktop test (needs root, or sudo);
# 2. builds, for the set-ups where QGIS's own Python runs the engine, a Python environment made
#    from QGIS's Python (/usr/bin/python3, --system-site-packages) with torch, geoddu and numpy
#    pinned to the version QGIS already uses (Debian 12: numpy 1.24), as a user would;
# 3. runs pytest with QGIS's Python, QT_QPA_PLATFORM=offscreen (no display needed; the desktop
#    test starts its own Xvfb).
#
# Environment:
#   GEODDU_TEST_CLI         geoddu command for set-up `cli` and for `geoddu init`
#                           (default: `geoddu` on PATH; the project's virtualenv)
#   GEODDU_TEST_PYTHON_ENV  reuse this environment instead of building one
#   GEODDU_QGIS_ENV_DIR     where to build it (default: plugins/qgis/build/qgis-env)
#   GEODDU_TORCH_SPEC       torch requirement for it (default: the torch version of the
#                           geoddu command's Python, else torch==2.13.0)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
QGIS_PYTHON=/usr/bin/python3
start=$SECONDS

quiet_pip() {  # run pip quietly; show its output only when it fails
    local out
    if ! out="$("$@" -q --disable-pip-version-check 2>&1)"; then
        printf '%s\n' "$out" | grep -v "is ignored: it is neither" >&2
        return 1
    fi
}
log() { printf '[qgis-tests %4ds] %s\n' "$((SECONDS - start))" "$*"; }

# --- 1. QGIS from Debian's packages ---------------------------------------------------------------
packages=(qgis python3-qgis qgis-providers python3-pytest python3-venv xvfb xauth)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
log "QGIS $(dpkg-query -W -f='${Version}' qgis), $($QGIS_PYTHON --version)"

# --- 2. the geoddu command and a Python environment for QGIS's Python -----------------------------
GEODDU_TEST_CLI="${GEODDU_TEST_CLI:-$(command -v geoddu || true)}"
if [ -z "$GEODDU_TEST_CLI" ]; then
    echo "run_tests.sh: no geoddu command; install the project (pip install -e .) or set" \
         "GEODDU_TEST_CLI" >&2
    exit 2
fi
export GEODDU_TEST_CLI
log "geoddu command: $GEODDU_TEST_CLI"

# QGIS embeds the system Python, which finds its home through the `python3` on PATH: an activated
# virtualenv (CI's .venv) there gives it another Python's standard library, and it crashes. Keep
# virtualenvs off PATH from here on (the geoddu command above is an absolute path).
clean_path=""
IFS=: read -r -a path_entries <<<"$PATH"
for entry in "${path_entries[@]}"; do
    if [ -n "$entry" ] && [ ! -f "$entry/../pyvenv.cfg" ]; then
        clean_path="${clean_path:+$clean_path:}$entry"
    fi
done
export PATH="$clean_path"
unset VIRTUAL_ENV PYTHONHOME

if [ -z "${GEODDU_TEST_PYTHON_ENV:-}" ]; then
    env_dir="${GEODDU_QGIS_ENV_DIR:-$HERE/build/qgis-env}"
    numpy_version="$($QGIS_PYTHON -c 'import numpy; print(numpy.__version__)')"
    if [ -z "${GEODDU_TORCH_SPEC:-}" ]; then
        cli_python="$(dirname "$GEODDU_TEST_CLI")/python"
        torch_version="$("$cli_python" -c 'import torch; print(torch.__version__.split("+")[0])' \
            2>/dev/null || echo 2.13.0)"
        GEODDU_TORCH_SPEC="torch==$torch_version"
    fi
    if [ ! -x "$env_dir/bin/python" ]; then
        log "creating $env_dir (QGIS's Python, --system-site-packages)"
        $QGIS_PYTHON -m venv --system-site-packages "$env_dir"
    fi
    log "installing $GEODDU_TORCH_SPEC, numpy==$numpy_version and geoddu into $env_dir"
    # numpy pinned to QGIS's own: the env is imported into QGIS, which may have loaded numpy.
    # geoddu is installed as a user would (not editable), so that PYTHONPATH alone finds it;
    # the last step refreshes it when the env is reused.
    quiet_pip "$env_dir/bin/pip" install "$GEODDU_TORCH_SPEC" "numpy==$numpy_version"
    quiet_pip "$env_dir/bin/pip" install "numpy==$numpy_version" "$ROOT"
    quiet_pip "$env_dir/bin/pip" install --force-reinstall --no-deps "$ROOT"
    "$env_dir/bin/python" -c 'import geoddu, numpy, torch; geoddu.segment' \
        || { echo "run_tests.sh: the environment $env_dir cannot import geoddu" >&2; exit 2; }
    GEODDU_TEST_PYTHON_ENV="$env_dir"
fi
export GEODDU_TEST_PYTHON_ENV
log "Python environment for QGIS: $GEODDU_TEST_PYTHON_ENV"

# --- 3. the tests, headless -------------------------------------------------------------------------
export QT_QPA_PLATFORM=offscreen
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export GEODDU_QGIS_TESTS_STRICT=1  # a missing prerequisite fails instead of skipping
export PYTHONDONTWRITEBYTECODE=1
unset GEODDU_ENGINE GEODDU_CLI GEODDU_PYTHON_ENV PYTHONPATH
cd "$ROOT"
log "pytest tests/qgis"
set +e
$QGIS_PYTHON -m pytest -c tests/qgis/pytest.ini --rootdir tests/qgis --confcutdir tests/qgis \
    tests/qgis "$@"
status=$?
set -e
log "done (exit $status)"
exit $status
