# Sourced (not executed) by setup.sh and env.sh: which interpreter, and its venv and build folders.
# Expects $repo. Reads:
#   PYTHON          interpreter: a name (python3, python3.10), a version (3.10) or a path;
#                   default python3
#   SAM3_ROS_VENV   this interpreter's venv (default: see below)
#   SAM3_ROS_CACHE  folder of the default venvs (default ~/.cache/sam3_ros)
# Sets: python_bin (absolute path), py_version (3.X), venv, build_base, install_base, log_base
# (absolute). Returns non-zero, with the reason on stderr, when the interpreter is not found.
#
# One venv and one colcon build/install/log set per Python version: the generated message
# code is compiled for one interpreter, so two Pythons must never share a build.
# Python 3.11 (this project's machines and the full CI suite) keeps the historic names
# (venv, build/, install/, log/), so existing venvs and builds stay valid; other versions get
# a suffix (venv-py3.10, build-py3.10/, install-py3.10/, log-py3.10/).

_sam3_ros_find_python() {
  local want="$1" name cand root
  case "$want" in 3.*) name="python$want" ;; *) name="$want" ;; esac
  # On PATH (or a path) and runnable. pyenv puts a shim on PATH for every installed version,
  # but a shim fails for a version that is not selected, hence running it rather than `command -v`.
  if cand="$("$name" -c 'import sys; print(sys.executable)' 2>/dev/null)" && [ -n "$cand" ]; then
    printf '%s\n' "$cand"; return 0
  fi
  # A pyenv-installed version that pyenv does not select (how this project's machines and CI's
  # provide 3.10 and 3.12): newest patch release first.
  case "$name" in
    python3.*)
      root="${PYENV_ROOT:-$(pyenv root 2>/dev/null || printf '%s' "$HOME/.pyenv")}"
      while IFS= read -r cand; do
        if [ -n "$cand" ] && "$cand" -c 'import sys' 2>/dev/null; then
          printf '%s\n' "$cand"; return 0
        fi
      done < <(ls -d "$root/versions/${name#python}".*/bin/"$name" 2>/dev/null | sort -V -r)
      ;;
  esac
  return 1
}

python_bin="$(_sam3_ros_find_python "${PYTHON:-python3}")" || {
  printf '[sam3_ros] Python interpreter %s not found (not on PATH, not under pyenv root)\n' \
    "${PYTHON:-python3}" >&2
  return 1
}
py_version="$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$py_version" = 3.11 ]; then _sam3_ros_suffix=""; else _sam3_ros_suffix="-py$py_version"; fi
venv="${SAM3_ROS_VENV:-${SAM3_ROS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sam3_ros}/venv$_sam3_ros_suffix}"
build_base="$repo/build$_sam3_ros_suffix"
install_base="$repo/install$_sam3_ros_suffix"
log_base="$repo/log$_sam3_ros_suffix"
unset _sam3_ros_suffix
