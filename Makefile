# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-encoder demo-t5 demo-finetune test lint
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

# The second recipe (issue 17): LoRA fine-tuning of the demo's decoder on instructions made from
# the standard library's docstrings ("What does json.dumps do?" -> its first line), then the
# answers to held-out questions before and after. Trains the decoder first when `make demo` has
# not (a shorter run); a few minutes on 2 cores.
demo-finetune: $(STAMP)
	test -f $(DEMO)/decoder/run/weights.safetensors || ( rm -rf $(DEMO)/decoder && \
		$(WITH_STDLIB) $(BIN)/llmspec train specs/tiny-decoder.yaml --data $(CORPUS) \
		-o $(DEMO)/decoder/run $(TRAIN) --steps 200 --batch-size 8 --seq-len 256 )
	test -d $(DEMO)/decoder/artifact || $(BIN)/llmspec export $(DEMO)/decoder/run \
		-o $(DEMO)/decoder/artifact
	rm -rf $(DEMO)/finetune
	$(BIN)/python bench/finetune_demo.py data $(DEMO)/finetune/data
	$(BIN)/llmspec estimate specs/tiny-decoder.yaml --finetune lora --lora-rank 16 \
		--lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
		--batch-size 8 --seq-len 96
	$(BIN)/llmspec finetune $(DEMO)/decoder/run --data $(DEMO)/finetune/data/train.jsonl \
		--eval-data $(DEMO)/finetune/data/held_out.jsonl -o $(DEMO)/finetune/run \
		--lora r=16,alpha=32,targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
		--steps 300 --batch-size 8 --seq-len 96 --lr 3e-3 --warmup 20 --eval-every 50
	$(BIN)/llmspec export $(DEMO)/finetune/run -o $(DEMO)/finetune/artifact
	$(BIN)/python bench/finetune_demo.py compare $(DEMO)/decoder/artifact \
		$(DEMO)/finetune/artifact $(DEMO)/finetune/data/held_out.jsonl 6
	@echo "adapter: $(DEMO)/finetune/run/adapter; loss curve: $(DEMO)/finetune/run/loss.png"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q
