#!/usr/bin/env bash
# Build interfaces/tf2_msgs into a virtual environment whose ROS 2 comes from PyPI wheels.
# Usage: tools/build_interfaces.sh VENV_DIR
# Does nothing when tf2_msgs already imports (a real ROS install, or an earlier build).
set -euo pipefail
venv=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
py="$venv/bin/python"
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"

if "$py" -c "import tf2_msgs.msg" 2>/dev/null; then
  echo "tf2_msgs already importable: nothing to build"
  exit 0
fi

# The wheels' exported CMake files name the include directories of the machine that built them.
py_include=$("$py" -c 'import sysconfig; print(sysconfig.get_path("include"))')
np_include=$("$py" -c 'import numpy; print(numpy.get_include())')
{ grep -rl --include='*__rosidl_generator_pyExport.cmake' '/opt/python/cp311-cp311' "$venv/share" || true; } |
  while read -r f; do
    sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" \
           -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g" \
           -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/core/include#$np_include#g" "$f"
  done

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
echo "building tf2_msgs into $venv"
PATH="$venv/bin:$PATH" cmake -S "$repo/interfaces/tf2_msgs" -B "$build" -G Ninja \
  -DCMAKE_INSTALL_PREFIX="$venv" -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$py" >"$build/cmake.log" 2>&1 ||
  { cat "$build/cmake.log"; exit 1; }
PATH="$venv/bin:$PATH" cmake --build "$build" --target install >"$build/build.log" 2>&1 ||
  { tail -50 "$build/build.log"; exit 1; }
"$py" -c "import tf2_msgs.msg; print('tf2_msgs built:', tf2_msgs.msg.TFMessage.__module__)"
