"""Shared fixtures: a tiny random Llama and tiny local lm-eval tasks, all built here, nothing downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CLI subprocesses some tests start inherit this: one intra-op thread, like the in-process tests below.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

MC_YAML = """task: mini_mc
dataset_path: json
dataset_kwargs:
  data_files:
    train: data/mc_train.jsonl
    test: data/mc_test.jsonl
training_split: train
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

GEN_YAML = """task: mini_gen
dataset_path: json
dataset_kwargs:
  data_files:
    train: data/gen_train.jsonl
    test: data/gen_test.jsonl
training_split: train
test_split: test
output_type: generate_until
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9]+)"
      - function: take_first
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
"""


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_mini_tasks(folder: Path, n_test: int = 12) -> Path:
    """Two tasks (multiple choice with subjects, generative with two filters) with relative data files."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "mini_mc.yaml").write_text(MC_YAML)
    (folder / "mini_gen.yaml").write_text(GEN_YAML)
    colours = ["red", "green", "blue", "yellow"]

    def mc(i: int) -> dict:
        return {"question": f"what colour is thing {i}?", "choices": [colours[(i + k) % 4] + " one" * k for k in range(4)],
                "answer": i % 4, "subject": ["alpha", "beta"][i % 2]}

    _write_jsonl(folder / "data/mc_test.jsonl", [mc(i) for i in range(n_test)])
    _write_jsonl(folder / "data/mc_train.jsonl", [mc(i) for i in range(100, 120)])
    gen = lambda i: {"question": f"what is {i} plus 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}  # noqa: E731
    _write_jsonl(folder / "data/gen_test.jsonl", [gen(i) for i in range(n_test // 2)])
    _write_jsonl(folder / "data/gen_train.jsonl", [gen(i) for i in range(100, 120)])
    return folder


def build_random_llama(folder: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = ["Question: what colour is thing 12? Answer: red green blue yellow one", "what is 3 plus 1? 3 + 1 = 4 #### 4"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(text * 20, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Every test and fixture runs torch on one thread: the tiny models' matmuls are all thread hand-off on a 2-core machine
    (several times the CPU time with two threads, ~40x slower when the machine is busy). Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def lm_eval_registry_scanned_once():
    """lm-eval's own task folder (thousands of YAML files, ~10 s of parsing) is indexed once per session. It is read
    whenever a TaskManager includes the defaults: flipbench's fallback for a task name outside the quick index (to
    suggest the closest), and simple_evaluate without a manager. Each manager still gets its own copy of the index,
    with the include paths indexed afresh and merged over it in lm-eval's order."""
    import copy

    from lm_eval.tasks import _index

    registry = Path(_index.__file__).parent
    real = _index.TaskIndex.build
    scanned = {}

    def build(paths, *, resolve_includes=True):
        paths = [Path(p) for p in paths]
        if not paths or paths[0] != registry:
            return real(paths, resolve_includes=resolve_includes)
        if resolve_includes not in scanned:
            scanned[resolve_includes] = real([registry], resolve_includes=resolve_includes)
        index = copy.deepcopy(scanned[resolve_includes])
        index.update(real(paths[1:], resolve_includes=resolve_includes))  # later paths override, as in build
        return index

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_index.TaskIndex, "build", staticmethod(build))
        yield


@pytest.fixture(scope="session")
def random_llama(tmp_path_factory) -> Path:
    return build_random_llama(tmp_path_factory.mktemp("random_llama"))


@pytest.fixture(scope="session")
def mini_tasks(tmp_path_factory) -> Path:
    return write_mini_tasks(tmp_path_factory.mktemp("mini_tasks"))


def compose(overrides: list[str]):
    """The real config files, composed as the CLI does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import flipbench.cli  # noqa: F401  (registers the schema and resolvers)

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def mini_overrides(random_llama: Path, mini_tasks: Path, root: Path) -> list[str]:
    """A fast run on the random model and mini tasks, writing under root (runs sharing a root share its cache)."""
    return [f"model=hf", f"model.path={random_llama}", f"suite.include_path={mini_tasks}", "suite.tasks=[mini_mc,mini_gen]",
            "+suite.metrics.mini_mc=[acc_norm,acc]", f"output.root={root}", "eval.batch_size=4", "eval.bootstrap=200"]


@pytest.fixture
def mini_run_overrides(random_llama, mini_tasks, tmp_path) -> list[str]:
    """A fast run on the random model and mini tasks, writing under tmp_path."""
    return mini_overrides(random_llama, mini_tasks, tmp_path / "results")


@pytest.fixture(autouse=True)
def _measured_tables_stay_out_of_the_docs(monkeypatch, tmp_path_factory):
    """A benchmark called by a test writes its docs/measured/ fragment into a temporary folder, never the docs."""
    import benchmarks.provenance

    monkeypatch.setattr(benchmarks.provenance, "MEASURED", tmp_path_factory.mktemp("measured"))

