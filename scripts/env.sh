# Source this file: sets up (idempotently) and enters the sam3_ros environment.
#   source scripts/env.sh                     # Python 3 on PATH (3.11 on this project's machines)
#   PYTHON=python3.10 source scripts/env.sh   # another Python: its own venv and install folder
_sam3_ros_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# SAM3_ROS_SKIP_SETUP=1: enter an already set-up environment without pip or colcon.
if [ "${SAM3_ROS_SKIP_SETUP:-0}" != 1 ]; then
  bash "$_sam3_ros_repo/scripts/setup.sh" || return 1
fi
repo="$_sam3_ros_repo"
# The same venv and install folder setup.sh used.
# shellcheck disable=SC1091
source "$repo/scripts/_python_env.sh" || return 1
source "$repo/scripts/_ros_env.sh"
# colcon's generated setup adds the install folder to PYTHONPATH, AMENT_PREFIX_PATH and the
# library path. It reads unset variables, so `set -u` (scripts/test.sh) is lifted around it.
case $- in *u*) _sam3_ros_nounset=1; set +u ;; *) _sam3_ros_nounset= ;; esac
# shellcheck disable=SC1091
source "$install_base/local_setup.bash"
[ -n "$_sam3_ros_nounset" ] && set -u
unset _sam3_ros_nounset
unset _sam3_ros_repo
