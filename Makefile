# The two commands of the README: `make demo` and `make test`. Both set up what they need first.
PY ?= python3
NPROC ?= 2
RUN ?= runs/demo
SHARDS ?= shards/demo

.PHONY: install install-test demo studio test test-fast clean-demo

install:
	bash launcher/setup.sh $(PY)

install-test:
	bash launcher/setup.sh $(PY) test

# Build the demo corpus from music21's scores, shard it, train on 2 CPU processes, generate, and say where it all is.
demo: install
	$(PY) -m deepj.preprocess demo $(SHARDS)
	$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC) -m deepj.train --config configs/demo.toml data.dir=$(SHARDS) run.dir=$(RUN)
	$(PY) -m deepj.demo_report $(RUN)

# The studio's page for the demo run (or RUN=...): style sliders, a primer to continue, a morph; Ctrl-C stops it.
studio: install
	$(PY) -m deepj.studio $(RUN)

test: install-test
	$(PY) -m pytest -q

test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

clean-demo:
	rm -rf $(RUN) $(SHARDS)
