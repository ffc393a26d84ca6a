# Setup is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean redis

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The pinned CPU wheel first: a bare "torch" requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[torch,test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/blobtier demo

# redis-server, installed with apt-get when missing (CI runs as root): the Redis metadata
# tests start their own (on free ports; a service apt may start on 6379 is never used;
# under CI they fail without it), `blobtier up` runs it for metadata.backend =
# "redis-cluster", and benchmarks/metadata_backends.py measures it.
redis:
	command -v redis-server >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y redis-server) || echo "no redis-server: its tests are skipped (failed under CI)"

test: $(BIN)/.installed redis
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
