#!/usr/bin/env bash
# The README's test command (and CI's): set up (idempotent), lint, then
#   * every test tier on the main Python (PYTHON, default python3: 3.11 on Debian 12 and on this
#     project's machines and CI's);
#   * the core and node tiers (test/conftest.py, TEST_TIERS) on the other Pythons the ROS 2
#     distributions run: 3.10 (Humble, JetPack 6) and 3.12 (Jazzy, Kilted on Ubuntu 24.04).
#     Each gets its own venv and install folder with the ROS 2 Kilted wheels for that Python and
#     the dependency versions that install there (transformers < 5.21 on 3.10:
#     scripts/requirements.txt). The first run sets each one up (downloads torch for it).
# SAM3_ROS_EXTRA_PYTHONS="3.10 3.12" (the default) names the other Pythons; "" runs the main
# one only. A missing interpreter fails the run, it is never skipped. With a sourced ROS 2 only
# its own Python runs (the others would need a ROS 2 built for them).
# Arguments go to every pytest run (-x, -k EXPR, a test file, ...).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extra_pythons="${SAM3_ROS_EXTRA_PYTHONS-3.10 3.12}"
extra_tiers="core or node"

# One Python in a subshell, so that each starts from this script's environment rather than the
# previous one's PATH/PYTHONPATH. $1: PYTHON ("" = default), $2: pytest -m expression ("" = all
# tiers), $3: 1 = also run ruff. Called in an `||` list, where `set -e` does not apply: every
# step checks its own status.
run_python() {
  local python="$1" tiers="$2" lint="$3"
  shift 3
  (
    start=$SECONDS
    if [ -n "$python" ]; then
      export PYTHON="$python"
      # SAM3_ROS_VENV names the main Python's venv; the others use their default ones.
      unset SAM3_ROS_VENV
    fi
    # shellcheck disable=SC1091
    source "$repo/scripts/env.sh" || { echo "== setup failed for Python ${python:-python3}"; exit 1; }
    cd "$repo"
    echo "== Python $py_version ($python_bin): set up in $((SECONDS - start)) s"
    if [ "$lint" = 1 ]; then
      echo "== ruff"
      ruff check sam3_ros test launch || exit 1
    fi
    echo "== pytest, Python $py_version, ${tiers:-every} tier${tiers:+s}"
    select=()
    [ -z "$tiers" ] || select=(-m "$tiers")
    rc=0
    python -m pytest -ra "${select[@]}" "$@" || rc=$?
    if [ "$rc" = 5 ] && [ -n "$tiers" ] && [ $# -gt 0 ]; then
      # Exit 5 = nothing collected: the arguments chose only tests outside these tiers.
      echo "== Python $py_version: the arguments select no $tiers tests"; rc=0
    fi
    echo "== Python $py_version: pytest exit $rc, $((SECONDS - start)) s with setup"
    exit "$rc"
  )
}

status=0
run_python "" "" 1 "$@" || status=1
main_version="$(repo="$repo"; source "$repo/scripts/_python_env.sh" && echo "$py_version")"
if [ -n "${ROS_DISTRO:-}" ] && [ -n "$extra_pythons" ]; then
  echo "== ROS 2 $ROS_DISTRO is sourced: not running Python(s) $extra_pythons (they need their own ROS 2)"
  extra_pythons=""
fi
for v in $extra_pythons; do
  [ "$v" = "$main_version" ] && continue
  run_python "$v" "$extra_tiers" 0 "$@" || status=1
done
exit "$status"
