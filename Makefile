# The two commands: `make demo` and `make test`. Both create .venv first.
.PHONY: setup test demo lint format

setup:
	bash ci/setup_env.sh

test: setup
	bash ci/run_tests.sh

demo: setup
	.venv/bin/vllm-gemma4-router demo

lint: setup
	.venv/bin/ruff check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .
