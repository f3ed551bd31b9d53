"""A local data file with fewer rows than the few-shot draw needs is one line before any model loads (issue 23, 10).

lm-eval draws shots + 1 docs from a few-shot split that is also the test split (and drops the asked doc); with
fewer rows it raises ``ValueError: Sample larger than population`` after the model has loaded.
"""

from __future__ import annotations

import pytest

from flipbench import tasks
from flipbench.config import ConfigError, SuiteConfig
from tests.test_standard_tasks import GSM8K, write


@pytest.mark.parametrize("rows, shots, refused", [(1, 5, True), (5, 5, True), (6, 5, False), (1, 0, False)])
def test_one_gsm8k_file_needs_shots_plus_one_rows(tmp_path, rows, shots, refused):
    path = write(GSM8K[:rows], tmp_path / "gsm8k.jsonl")
    suite = SuiteConfig(name="standard", tasks=["gsm8k"], data_files={"gsm8k": str(path)}, num_fewshot={"gsm8k": shots})
    if not refused:
        assert tasks.resolve(suite).leaves == ["gsm8k"]
        return
    with pytest.raises(ConfigError, match=rf"split 'test' has {rows} rows?, fewer than the {shots} shots plus the "
                                          r"asked doc .*lower suite.num_fewshot.gsm8k") as err:
        tasks.resolve(suite)
    assert "\n" not in str(err.value)


def test_train_split_needs_only_the_shots(tmp_path):
    """From a separate train split lm-eval draws exactly the shots: five rows serve 5-shot."""
    spec = {"train": str(write(GSM8K[:5], tmp_path / "train.jsonl")), "test": str(write(GSM8K, tmp_path / "test.jsonl"))}
    assert tasks.resolve(SuiteConfig(name="standard", tasks=["gsm8k"], data_files={"gsm8k": spec},
                                     num_fewshot={"gsm8k": 5})).leaves == ["gsm8k"]
    spec["train"] = str(write(GSM8K[:4], tmp_path / "short.jsonl"))
    with pytest.raises(ConfigError, match="split 'train' has 4 rows, fewer than the 5 shots;"):
        tasks.resolve(SuiteConfig(name="standard", tasks=["gsm8k"], data_files={"gsm8k": spec}, num_fewshot={"gsm8k": 5}))
