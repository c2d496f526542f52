# reflex_ros developer entry points. Every target is idempotent and starts from nothing:
#   make setup   .venv with torch (CPU wheel, pinned first), ROS 2 Kilted pip wheels, onnxruntime,
#                the generated messages, and reflex_ros in editable mode
#   make test    setup, then lint + the whole test suite
#   make demo    setup, then the main job
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
STAMP := $(VENV)/.reflex-setup-done
MSG_STAMP := $(VENV)/.reflex-msgs-done

.PHONY: setup test demo lint msgs clean

setup: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-done: requirements.txt | $(VENV)/bin/python
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	touch $@

# Messages: rosidl + CMake against the wheels (see DEVELOPERS.md for the pitfalls handled here).
$(MSG_STAMP): $(VENV)/.deps-done CMakeLists.txt package.xml $(wildcard msg/*.msg) $(wildcard srv/*.srv) $(wildcard interfaces/*/*/*)
	rm -rf build/msgs; mkdir -p build
	AMENT_PREFIX_PATH=$(abspath $(VENV)) cmake -S . -B build/msgs -DREFLEX_INSTALL_PYTHON=OFF \
	  -DCMAKE_PREFIX_PATH=$(abspath $(VENV)) -DCMAKE_INSTALL_PREFIX=$(abspath $(VENV)) \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) -DBUILD_TESTING=OFF > build/msgs.log 2>&1 \
	  || (cat build/msgs.log; exit 1)
	cmake --build build/msgs -j2 >> build/msgs.log 2>&1 || (cat build/msgs.log; exit 1)
	cmake --install build/msgs >> build/msgs.log 2>&1 || (cat build/msgs.log; exit 1)
	# The generated package-level __init__.py would shadow our sources; without it the
	# generated reflex_ros/msg is merged into our package by pkgutil.extend_path. The
	# generated egg-info would make pip "uninstall" (delete) the messages at `pip install -e`.
	rm -rf $(SITE)/reflex_ros/__init__.py $(SITE)/reflex_ros-*.egg-info
	touch $@

$(STAMP): $(MSG_STAMP) setup.py
	$(PIP) install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	# import from outside the repo: proves the sources and the generated messages merge
	cd / && $(abspath $(PY)) -c "import reflex_ros, rclpy, onnxruntime, torch; from reflex_ros.msg import ActionChunk; assert reflex_ros.__version__"
	touch $@

msgs: $(MSG_STAMP)

lint: setup
	$(VENV)/bin/ruff check reflex_ros test benchmarks launch

test: setup lint
	$(VENV)/bin/python -m pytest -q test

demo: setup
	$(VENV)/bin/reflex-ros demo

clean:
	rm -rf $(VENV) build
