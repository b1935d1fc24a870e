# The two commands of the README. Both set everything up on a fresh machine (Python 3.11).
#   make demo   install (CPU) and run the demo chain end to end
#   make test   install (CPU) and run the test suite, on TEST_WORKERS processes (default 2: a test file
#               a process; TEST_WORKERS=0 runs it in this one process)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2

.PHONY: demo test install

$(STAMP): pyproject.toml requirements-cpu.txt constraints-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-cpu.txt -c constraints-cpu.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	. $(VENV)/bin/activate && snakemake --cores 1 --resources gpu=1

test: $(STAMP)
	. $(VENV)/bin/activate && python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile
