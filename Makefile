# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-encoder demo-t5 test lint
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: train the tiny decoder on part of Python's own standard library for a couple of
# minutes, export it to a verified ONNX artifact, and generate from it with ONNX Runtime.
DEMO ?= out/demo
WITH_STDLIB = STDLIB=$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])");
CORPUS = $$STDLIB/json $$STDLIB/email $$STDLIB/logging $$STDLIB/collections
TRAIN = --lr 3e-3 --warmup 30

demo: $(STAMP)
	$(BIN)/llmspec validate specs/*.yaml
	$(BIN)/llmspec estimate specs/tiny-decoder.yaml
	rm -rf $(DEMO)/decoder
	$(WITH_STDLIB) $(BIN)/llmspec train specs/tiny-decoder.yaml --data $(CORPUS) \
		-o $(DEMO)/decoder/run $(TRAIN) --steps 500 --batch-size 8 --seq-len 256
	$(BIN)/llmspec export $(DEMO)/decoder/run -o $(DEMO)/decoder/artifact
	$(BIN)/llmspec generate $(DEMO)/decoder/artifact --max-new-tokens 200 --seed 0 \
		--prompt "    def __init__(self"
	@echo "loss curve: $(DEMO)/decoder/run/loss.png"

# The same for the tiny encoder (masked LM, then fill-mask) and the tiny T5 (span corruption).
demo-encoder: $(STAMP)
	rm -rf $(DEMO)/encoder
	$(WITH_STDLIB) $(BIN)/llmspec train specs/tiny-encoder.yaml --data $(CORPUS) \
		-o $(DEMO)/encoder/run $(TRAIN) --steps 2000 --batch-size 16 --seq-len 128
	$(BIN)/llmspec export $(DEMO)/encoder/run -o $(DEMO)/encoder/artifact
	$(BIN)/llmspec fill-mask $(DEMO)/encoder/artifact "    def __init__(se[MASK]f):"
	@echo "loss curve: $(DEMO)/encoder/run/loss.png"

demo-t5: $(STAMP)
	rm -rf $(DEMO)/t5
	$(WITH_STDLIB) $(BIN)/llmspec train specs/tiny-t5.yaml --data $(CORPUS) \
		-o $(DEMO)/t5/run $(TRAIN) --steps 2000 --batch-size 16 --seq-len 128
	$(BIN)/llmspec export $(DEMO)/t5/run -o $(DEMO)/t5/artifact
	$(BIN)/llmspec generate $(DEMO)/t5/artifact --max-new-tokens 40 \
		--prompt "    def __init__(self<extra_id_0>):<extra_id_1> = None"
	@echo "loss curve: $(DEMO)/t5/run/loss.png"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q
