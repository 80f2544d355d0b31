# Sourced (not executed): the environment variables the build and the nodes need.
# Expects $repo, $venv and $log_base (scripts/_python_env.sh).
if [ -z "${ROS_DISTRO:-}" ]; then
  # PyPI ROS wheels: the venv is the ROS prefix.
  export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
mkdir -p "$log_base"
