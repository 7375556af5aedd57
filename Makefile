# fedvlm: every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NAME   ?= demo
ARGS   ?=

.PHONY: install demo test exp describe bench report notebooks sync pretrain-tiny clean

# The hook line runs on every install (it is idempotent and quiet when present), so a venv made
# before the hook existed gets it too: torchvision importable beside the CPU torch in every
# process, also those that never import fedvlm (fedvlm/_torchvision_compat.py).
install: $(STAMP)
	@$(PY) -m fedvlm.install_hook

# torch goes in first, alone, from the pinned release (a local CPU wheel here); the rest is
# resolved under constraints.txt so nothing can swap torch for a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) -m fedvlm demo

test: install
	$(PY) -m pytest -q

exp: install
	$(PY) -m fedvlm run experiments/$(NAME).yaml $(ARGS)

# Speed and memory figures -> docs/BENCHMARKS.md (ARGS="--quick" for a smoke run)
bench: install
	$(PY) -m benchmarks.run $(ARGS)

# Re-make the tiny CLIP shipped in fedvlm/backbone/checkpoints (docs/SYNTHETIC_WORLD.md;
# ARGS="--out other.safetensors" to keep the shipped one)
pretrain-tiny: install
	$(PY) -m fedvlm pretrain-tiny $(ARGS)

# What the tiny CLIPs' features know about the synthetic world, v1 next to v2 (and random weights, the floor) -> docs/WORLD.md
# (fedvlm probe-world; ARGS="--images 800" for a larger sample, ARGS="--json world.json" for the raw table)
.PHONY: world-report
world-report: install
	$(PY) -m fedvlm probe-world --pretrained synthetic-v1 synthetic random --out docs/WORLD.md $(ARGS)

clean:
	rm -rf $(VENV) results .cache

# Analysis: `make report` writes tables and plots of every finished run under RESULTS_DIR
# (docs/REPORT.md); `make notebooks` executes notebooks/*.ipynb on it; `make sync` uploads
# the offline W&B runs (needs network and a W&B login).
RESULTS_DIR ?= results
REPORT_DIR  ?= $(RESULTS_DIR)/report

report: install
	$(PY) -m fedvlm report $(RESULTS_DIR) --out $(REPORT_DIR)

notebooks: install
	$(PY) -m fedvlm.report.notebooks $(RESULTS_DIR) --out $(REPORT_DIR)/notebooks

sync: install
	$(PY) -m fedvlm sync $(RESULTS_DIR)
