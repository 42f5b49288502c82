# Two commands do all set-up: `make lab` and `make test` (README.md says more).
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
WORKERS    ?= 2
LAB_FLAGS  ?=
# Jupyter refuses to run as root (common in containers) unless told it may.
ROOT_FLAG  := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root,)
NB         ?= notebooks/*.ipynb

.PHONY: help venv lab test lib exercises notebooks clean

help:
	@echo "make lab        set up .venv if needed and open JupyterLab on notebooks/"
	@echo "make test       set up .venv if needed, then unit tests + nbval on every notebook"
	@echo "make lib        regenerate course_utils/<topic>.py from the notebooks' #@save cells"
	@echo "make exercises  write learner versions (solutions replaced by stubs) to exercises/"
	@echo "make notebooks  re-execute notebooks in place (NB=notebooks/01_*.ipynb for one)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the dependency list changes; the stamp makes both commands quick afterwards.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --editable .
	@touch $@

venv: $(VENV)/.installed

lab: venv exercises
	$(PY) -m jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks/00_start_here.ipynb $(ROOT_FLAG) $(LAB_FLAGS)

# --dist loadfile keeps each notebook's cells on one worker (the default would split them).
# One OpenMP thread per process: WORKERS kernels side by side on a small CPU otherwise
# oversubscribe it, and GNU OpenMP's spinning threads then slow every notebook several-fold.
test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(WORKERS) --dist loadfile --nbval tests notebooks

lib: venv
	$(PY) tools/export_lib.py

exercises: venv
	$(PY) tools/make_exercises.py

notebooks: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) tools/run_notebooks.py $(NB)

clean:
	rm -rf $(VENV) exercises .pytest_cache
