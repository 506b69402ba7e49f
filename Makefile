# The two commands of README.md. Each sets up .venv itself on a fresh machine.
PY := .venv/bin/python
MODEL := models/tiny-llama
PROMPT := Once upon a time

.PHONY: setup run test

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/unifer generate --model $(MODEL) --max-tokens 48 "$(PROMPT)"

test: setup
	$(PY) -m pytest -q -n 2 tests --ignore=tests/tpu --ignore=tests/xpu
