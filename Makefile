# One-command set-up, demo and tests on a machine with Python >= 3.10 and no ROS installation.
# Every target does its own set-up; a second run with nothing changed only checks time stamps.
#   make demo    run the demo (the main job on the embedded default)
#   make test    lint + the full test suite
#   make setup   just build .venv (deps, tf2_msgs, this package)
#   make setup CUDA=1   also the CUDA path (requirements/cuda.txt: gsplat, torch's CUDA build)
#   make check-cuda     on a GPU machine: the GPU-marked tests and a CUDA localization benchmark

PYTHON ?= python3
VENV   ?= .venv
V      := $(abspath $(VENV))
STAMPS := $(V)/.gsvisloc-stamps
PY     := $(V)/bin/python
CUDA   ?= 0
# PyTorch's wheel index for the CUDA build of torch (see requirements/cuda.txt).
TORCH_CUDA_INDEX ?= https://download.pytorch.org/whl/cu128
# The map `make check-cuda` benchmarks.
CUDA_CHECK_MAP ?= ../shared/data/splats/plant.ply

# DDS never leaves this machine; ament_index finds the wheels' and this package's share/.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOCALHOST_ONLY := 1
export AMENT_PREFIX_PATH := $(V)$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH))
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PATH := $(V)/bin:$(PATH)

PACKAGE_FILES := setup.py setup.cfg package.xml resource/gsvisloc_ros \
                 $(wildcard launch/*.launch.py config/*.yaml rviz/*.rviz)
INTERFACE_FILES := tools/build_interfaces.sh $(shell find interfaces/tf2_msgs -type f)

.PHONY: setup demo test lint clean check-cuda
.DEFAULT_GOAL := test

setup: $(STAMPS)/package $(if $(filter 1,$(CUDA)),$(STAMPS)/cuda)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "Python >= 3.10 is needed (found: $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "creating a venv failed: on Debian, apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip

$(STAMPS)/deps: $(PY) $(wildcard requirements/*.txt)
	$(PY) -m pip install -q -r requirements/all.txt
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/interfaces: $(STAMPS)/deps $(INTERFACE_FILES)
	@command -v c++ >/dev/null || { echo "a C++ compiler is needed to build tf2_msgs: apt-get install g++"; exit 1; }
	tools/build_interfaces.sh $(VENV)
	@touch $@

# Editable install of the code; launch/config/rviz are linked into share/ the way
# `colcon build --symlink-install` does, so ament_index finds them and edits show at once.
$(STAMPS)/package: $(STAMPS)/interfaces $(PACKAGE_FILES)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . >$(V)/pip-package.log 2>&1 || \
	  { cat $(V)/pip-package.log; exit 1; }
	@mkdir -p $(V)/share/gsvisloc_ros $(V)/share/ament_index/resource_index/packages
	@for d in launch config rviz package.xml; do ln -sfn $(CURDIR)/$$d $(V)/share/gsvisloc_ros/$$d; done
	@cp resource/gsvisloc_ros $(V)/share/ament_index/resource_index/packages/gsvisloc_ros
	@touch $@

# Only on request (CUDA=1): gsplat compiles its kernels at first use, which needs nvcc.
$(STAMPS)/cuda: $(STAMPS)/deps requirements/cuda.txt
	$(PY) -m pip install -q -r requirements/cuda.txt --extra-index-url $(TORCH_CUDA_INDEX)
	@touch $@

demo: setup
	$(V)/bin/gsvisloc demo

lint: setup
	$(V)/bin/ruff check .

test: lint
	$(PY) -m pytest

check-cuda:
	$(MAKE) setup CUDA=1
	$(PY) -c 'from gsvisloc_ros.render import cuda_available as c; ok, why = c(); print("CUDA path:", "usable" if ok else why); raise SystemExit(not ok)'
	$(PY) -m pytest -m gpu -v -rs
	$(V)/bin/gsvisloc benchmark localize $(CUDA_CHECK_MAP) --device cuda --queries 10 --negatives 2 \
	  --encoders xfeat --no-refine-compare

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
