# The two commands: `make demo` and `make test`. Both create .venv first.
# `make canary` (not part of `make test`; network): the newest vLLM release on
# PyPI against the plugin, a few minutes (ci/release_matrix.py --newest, table to
# stdout); fails unless the plugin routes it with its padding semantics checked.
# Run daily by ci/workflows/canary.yml.
.PHONY: setup test demo lint format canary

setup:
	bash ci/setup_env.sh

test: setup
	bash ci/run_tests.sh

canary: setup
	.venv/bin/python ci/release_matrix.py --newest --out -

demo: setup
	.venv/bin/vllm-gemma4-router demo

lint: setup
	.venv/bin/ruff check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

