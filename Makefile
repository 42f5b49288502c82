# Two commands do all set-up: `make lab` and `make test` (README.md says more).
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
WORKERS    ?= 2
LAB_FLAGS  ?=
EXERCISES  ?= exercises
# Where the CPU build of torch comes from on a Linux machine without an NVIDIA GPU (PyPI's torch
# for Linux is the CUDA build: gigabytes that such a machine never uses).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# Jupyter refuses to run as root (common in containers) unless told it may.
ROOT_FLAG  := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root,)
NB         ?= notebooks/*.ipynb
NEEDS_PY   := import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)

.PHONY: help venv lab test lib exercises refresh-exercise notebooks pacing slides grade clean

help:
	@echo "make lab        set up .venv if needed, write your copies to exercises/, open JupyterLab there"
	@echo "make test       set up .venv if needed, then unit tests + nbval on every notebook"
	@echo "make exercises  write the learner copies that are missing from exercises/ (never overwrites)"
	@echo "make refresh-exercise NB=03   replace one learner copy, after asking (old one kept in exercises/.backup/)"
	@echo "make lib        regenerate course_utils/<topic>.py from the notebooks' #@save cells"
	@echo "make notebooks  re-execute notebooks in place (NB=notebooks/01_*.ipynb for one)"
	@echo "make pacing     recompute each lesson's time, core path and slide metadata"
	@echo "make slides     a reveal.js deck per lesson in slides/ (offline; TEACHING.md says more)"
	@echo "make grade SUBMISSIONS=dir   run learners' notebooks, table of learner x exercise in grades/"

$(PY):
	@$(PYTHON) -c '$(NEEDS_PY)' 2>/dev/null || { echo "make: '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing); the course needs Python 3.10 or newer. Run again with PYTHON=python3.12 (or another 3.10+)."; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install only when the dependency list changes; the stamp makes both commands quick afterwards.
# A .venv made by an old Python fails here with a hint instead of the same error on every call.
$(VENV)/.installed: pyproject.toml | $(PY)
	@$(PY) -c '$(NEEDS_PY)' 2>/dev/null || { echo "make: $(VENV) was made by $$($(PY) --version 2>&1); the course needs Python 3.10 or newer. Run 'make clean', then 'make lab PYTHON=python3.12' (or another 3.10+)."; exit 1; }
	@if [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c 'import torch' 2>/dev/null; then \
	  echo "No NVIDIA GPU here: installing the CPU build of torch from $(TORCH_CPU_INDEX)"; \
	  $(PY) -m pip install --quiet --timeout 30 --retries 1 torch --index-url $(TORCH_CPU_INDEX) || \
	  echo "make: the CPU index did not answer; pip will take torch from PyPI instead"; fi
	$(PY) -m pip install --quiet --editable .
	@touch $@

venv: $(VENV)/.installed

lab: venv exercises
	$(PY) -m jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/$(EXERCISES)/00_start_here.ipynb $(ROOT_FLAG) $(LAB_FLAGS)

# --dist loadfile keeps each notebook's cells on one worker (the default would split them).
# One OpenMP thread per process: WORKERS kernels side by side on a small CPU otherwise
# oversubscribe it, and GNU OpenMP's spinning threads then slow every notebook several-fold.
test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(WORKERS) --dist loadfile --nbval tests notebooks

lib: venv
	$(PY) tools/export_lib.py

exercises: venv
	$(PY) tools/make_exercises.py --out $(EXERCISES)

refresh-exercise: venv
	@[ "$(NB)" != "notebooks/*.ipynb" ] || { echo "make: say which lesson, e.g. make refresh-exercise NB=03"; exit 1; }
	$(PY) tools/make_exercises.py --out $(EXERCISES) --refresh $(NB)

notebooks: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) tools/run_notebooks.py $(NB)

pacing: venv
	$(PY) tools/pacing.py

# Lecture decks from the committed outputs (nothing re-executed): slides/NN_topic.slides.html.
SLIDES ?= slides
slides: venv
	$(PY) tools/make_slides.py --out $(SLIDES) $(NB)

# Grading (TEACHING.md): each submission in its own kernel and scratch folder, TIMEOUT seconds per
# notebook; LESSON=03 when the submissions' headers do not settle it; HIDDEN=file of hidden cases.
GRADES  ?= grades
TIMEOUT ?= 300
grade: venv
	@[ -n "$(SUBMISSIONS)" ] || { echo "make: say where the submissions are: make grade SUBMISSIONS=folder (LESSON=03 TIMEOUT=300 HIDDEN=cases.py)"; exit 1; }
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m course_utils.grade $(SUBMISSIONS) --out $(GRADES) --timeout $(TIMEOUT) $(if $(LESSON),--lesson $(LESSON)) $(if $(HIDDEN),--hidden $(HIDDEN)) $(GRADE_FLAGS)

# Removes the environment and caches, never the learner's exercises/.
clean:
	rm -rf $(VENV) .pytest_cache
