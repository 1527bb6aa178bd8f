# Two commands: `make demo` (install + the toy reproduction) and `make test` (install + all tests).
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python

.PHONY: install browser demo test gpu-check notebooks assignments grade site clean

install: $(VENV)/.installed

# The site's MathJax: only the files the jupyter-server-mathjax wheel ships. It is also a Jupyter server
# extension, and its dependencies (a Jupyter server, whose event schemas pull a URI grammar into every
# `import nbformat`, a second per process) serve nothing here: installed without them.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps jupyter-server-mathjax==0.2.6
	touch $@

demo: install
	$(PY) -m toy.reproduce

# The site's browser test needs Debian's Chromium (driven by Playwright's Python package, never its download).
browser:
	@test -x /usr/bin/chromium || { command -v apt-get > /dev/null && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium > /dev/null; } || \
		{ echo "make: the site's browser test needs Chromium at /usr/bin/chromium (Debian: apt-get install chromium)"; exit 1; }

test: install browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadscope --durations=15 tests notebooks --ignore=notebooks/assignments \
		--nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg

# On a machine with CUDA (README: Scaling out): the gradients on the device, SD 1.5 at 512x512, both benches.
gpu-check: install
	$(PY) -m stable_diffusion.gpu_check --out results/gpu

# After editing a notebook's .py: rebuild and execute its paired .ipynb (commit both).
notebooks: install
	for nb in notebooks/*.py notebooks/assignments/a[0-9]_*.py; do \
		$(VENV)/bin/jupytext --to ipynb --execute "$$nb" || exit 1; done

# Course assignments (README: For instructors). SUBMISSIONS holds <student>/<assignment>.ipynb;
# paths may be relative to this folder. REGRADE=1 grades every notebook again; NO_SANDBOX=1 grades without the
# sandbox (only notebooks you trust: they can then read the solutions and change the grades).
BUILT       ?= dist/assignments
GRADES      ?= grades
SUBMISSIONS ?= submissions
assignments: install
	$(PY) notebooks/assignments/course.py build --out $(BUILT)

grade: install
	$(PY) notebooks/assignments/course.py grade $(SUBMISSIONS) --built $(BUILT) --out $(GRADES) $(if $(filter 1,$(REGRADE)),--regrade) $(if $(filter 1,$(NO_SANDBOX)),--no-sandbox)

# The course site (README: Start here): the executed notebooks as committed, the README, the instructors' page.
site: install
	$(PY) notebooks/site/build.py --out site

clean:
	rm -rf $(VENV) .pytest_cache dist site  # never grades/: it holds the hand-graded points you typed
