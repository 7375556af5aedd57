# fedvlm: every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NAME   ?= demo
ARGS   ?=

.PHONY: install demo test exp describe bench report pretrain-tiny clean

install: $(STAMP)

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

clean:
	rm -rf $(VENV) results .cache
