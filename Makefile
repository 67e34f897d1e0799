# The two commands: `make demo` and `make test`. Both create .venv first.
# `make canary` (not part of `make test`; network): the newest vLLM release on
# PyPI against the plugin, a few minutes (ci/release_matrix.py --newest, table to
# stdout); fails unless the plugin routes it with its padding semantics checked.
# Run daily by ci/workflows/canary.yml.
.PHONY: setup test demo lint format canary cute-offline upstream-tree upstream-series

setup:
	bash ci/setup_env.sh

test: setup
	bash ci/run_tests.sh

canary: setup
	.venv/bin/python ci/release_matrix.py --newest --out -

# `make cute-offline` (not part of `make test`; ~210 MB of wheels, cached): the CuTe
# DSL of vLLM 0.26.0 (4.6.0) and 0.34.0 (4.8.0) compiles a kernel for sm_90a with no
# GPU, and the cubins are checked (ci/cute_dsl_offline.sh). Run by ci/workflows/ci.yml.
cute-offline:
	bash ci/cute_dsl_offline.sh

demo: setup
	.venv/bin/vllm-gemma4-router demo

lint: setup
	.venv/bin/ruff check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .


# The upstream patch series, against vLLM 0.34.0's sdist (fetched,
# sha256-checked): SERIES=routing (upstream/000N-*.patch, the default) or
# SERIES=gate_tier (upstream/gate_tier/). `upstream-tree` applies it as commits
# in its work tree (.cache/upstream/vllm-0.34.0, .cache/upstream/gate_tier);
# edit and commit there, then `upstream-series` writes the .patch files back.
# No vLLM file is stored in this repository.
SERIES ?= routing

upstream-tree: setup
	.venv/bin/python upstream/series.py tree --series $(SERIES)

upstream-series: setup
	.venv/bin/python upstream/series.py export --series $(SERIES)
	.venv/bin/python upstream/series.py check --series $(SERIES)
