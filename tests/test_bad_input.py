"""Bad input never gets past the door: each case is refused in one line, before any evaluation, leaving no run
folder; hostile text completes with an intact report; Ctrl-C is one line and exit 130.

Most cases call the importable entry in-process (``cli.precheck`` for the command line's config check, then
``pipeline.run``); a few run ``python -m flipbench`` to see the exit code and stderr as a user does.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flipbench import cli, pipeline, rundir
from flipbench.config import ConfigError
from tests.conftest import MC_YAML, compose

ROOT = Path(__file__).resolve().parent.parent
GSM8K_FILE = ROOT / "tasks/synth/data/synth_gsm8k_test.jsonl"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1",
           HF_DATASETS_DISABLE_PROGRESS_BARS="1")


def model_copy(src: Path, dest: Path, config: dict | None = None, weights: bytes | None = None,
               config_text: str | None = None) -> Path:
    """A copy of a model folder with config.json's fields or text replaced, or its weights file's bytes."""
    shutil.copytree(src, dest)
    if config_text is not None:
        (dest / "config.json").write_text(config_text)
    if config is not None:
        data = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps({**data, **config}))
    if weights is not None:
        (dest / "model.safetensors").write_bytes(weights)
    return dest


def task_folder(tmp: Path, mini_tasks: Path, name: str, extra: dict[str, str]) -> Path:
    """The mini tasks plus extra files (name -> text), in a folder of their own."""
    folder = tmp / name
    folder.mkdir()
    (folder / "data").symlink_to(mini_tasks / "data")
    for yaml in ("mini_mc.yaml", "mini_gen.yaml"):
        shutil.copy(mini_tasks / yaml, folder / yaml)
    for rel, text in extra.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


BROKEN_JSON = '{"model_type": "llama",'
def mc_task_yaml(name: str) -> str:
    """The mini multiple-choice task's YAML, renamed, reading ``<name>/test.jsonl`` beside it."""
    return (MC_YAML.replace("task: mini_mc", f"task: {name}").replace("data/mc_train.jsonl", f"{name}/test.jsonl")
            .replace("data/mc_test.jsonl", f"{name}/test.jsonl"))


def cases(tmp: Path, llama: Path, mini_tasks: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (overrides on top of the mini run, text the one-line error must contain)."""
    truncated = llama.joinpath("model.safetensors").read_bytes()
    binary = tmp / "calib.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    mmlu_bad = tmp / "mmlu_bad.jsonl"
    mmlu_bad.write_text(jsonl([{"question": "q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 9}]))
    arc_bad = tmp / "arc_bad.jsonl"
    arc_bad.write_text(jsonl([{"question": "q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "E"}]))
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    output_file = tmp / "a_file"
    output_file.write_text("x")
    long_rows = jsonl([{"question": "pick", "choices": ["short", "word " * 700], "answer": 0}])
    return {
        "gate typo with +": (["+gate.max_flipz=0"], "unknown config key 'gate.max_flipz' (did you mean gate.max_flips"),
        "gate typo without +": (["gate.max_flipz=0"], "did you mean gate.max_flips"),
        "unknown group with +": (["+unknown.key=1"], "unknown config key 'unknown'"),
        "compression typo with +": (["+compression.group_sise=64"], "did you mean compression.group_size"),
        "new mapping entry without +": (["suite.num_fewshot.mini_mc=0"], "+suite.num_fewshot.mini_mc"),
        "per_task on a task not run": (["+gate.per_task.mini_mcq.max_flips=0.1"], "did you mean mini_mc"),
        "per_task unknown limit": (["+gate.per_task.mini_mc.max_flip=0.1"], "did you mean max_flips"),
        "negative gate limit": (["gate.max_flips=-0.1"], "outside [0, 1]"),
        "gate fraction above 1": (["+gate.per_task.mini_mc.max_lost=1.5"], "outside [0, 1]"),
        "negative KL limit": (["gate.max_choice_kl_mean=-1"], "must be >= 0"),
        "retired KL key": (["gate.max_kl_mean=0.1"], "gate.max_kl_mean is retired; KL has one scale per kind: use "
                                                     "gate.max_choice_kl_mean"),
        "bad device": (["model.device=tpu9"], "model.device='tpu9'"),
        "output root is a file": ([f"output.root={output_file}"], "is a file, not a folder"),
        "output root under a file": ([f"output.root={output_file}/results"], "which is a file"),
        "config.json not JSON": ([f"model.path={model_copy(llama, tmp / 'badjson', config_text=BROKEN_JSON)}"],
                                 "config.json is not valid JSON"),
        "truncated safetensors": ([f"model.path={model_copy(llama, tmp / 'trunc', weights=truncated[: len(truncated) // 2])}"],
                                  "(truncated)"),
        "garbage safetensors": ([f"model.path={model_copy(llama, tmp / 'garbage', weights=b'not a safetensors file')}"],
                                "weight file"),
        "checkpoint vocabulary differs": (["compression=checkpoint",
                                           f"compression.path={model_copy(llama, tmp / 'vocab', config={'vocab_size': 999})}"],
                                          "vocabulary of 999 tokens"),
        "mmlu answer out of range": (["suite.tasks=[mmlu]", f"suite.data_files.mmlu={mmlu_bad}"], "row 1: answer=9"),
        "arc answerKey not a label": (["suite.tasks=[arc_easy]", f"suite.data_files.arc_easy={arc_bad}"], "answerKey='E'"),
        "empty data file": (["suite.tasks=[gsm8k]", f"suite.data_files.gsm8k={empty}"], "is empty"),
        "task YAML syntax error": ([f"suite.include_path={task_folder(tmp, mini_tasks, 'yaml', {'broken.yaml': 'task: [oops'})}"],
                                   "broken.yaml line 2"),
        "binary calibration file": (["compression=gptq", "calibration=text", f"calibration.path={binary}"],
                                    f"calibration.path='{binary}' is not UTF-8 text"),
        "budget on a multiple-choice task": (["+suite.max_gen_toks.mini_mc=8"], "not generative"),
        "answer choice longer than the context": (
            [f"suite.include_path={task_folder(tmp, mini_tasks, 'long', {'long_choice.yaml': mc_task_yaml('long_choice'), 'long_choice/test.jsonl': long_rows})}",
             "suite.tasks=[long_choice]"], "longer than the model's context of 512 tokens"),
        "generation budget fills the context": (["model=tiny", "suite.tasks=[gsm8k]", f"suite.data_files.gsm8k={GSM8K_FILE}"],
                                                "generation budget of 256 tokens leaves no room"),
        "few-shot prompts do not fit": (["model=tiny", "suite.tasks=[gsm8k]", f"suite.data_files.gsm8k={GSM8K_FILE}",
                                         "suite.max_gen_toks.gsm8k=64"], "++suite.num_fewshot.gsm8k=0; now 5"),
    }


NAMES = ["gate typo with +", "gate typo without +", "unknown group with +", "compression typo with +",
         "new mapping entry without +", "per_task on a task not run", "per_task unknown limit", "negative gate limit",
         "gate fraction above 1", "negative KL limit", "bad device", "output root is a file", "output root under a file",
         "config.json not JSON", "truncated safetensors", "garbage safetensors", "checkpoint vocabulary differs",
         "mmlu answer out of range", "arc answerKey not a label", "empty data file", "task YAML syntax error",
         "binary calibration file", "budget on a multiple-choice task", "answer choice longer than the context",
         "generation budget fills the context", "few-shot prompts do not fit"]


def attempt(overrides: list[str]) -> str | None:
    """The command line's two steps in-process: the config check, then the run. Returns the error line."""
    error = cli.precheck(overrides)
    if error:
        return error
    try:
        pipeline.run(compose(overrides))
    except ConfigError as err:
        return str(err)
    return None


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_one_line_before_any_evaluation(name, mini_run_overrides, random_llama, mini_tasks, tmp_path,
                                                    monkeypatch):
    overrides, expected = cases(tmp_path, random_llama, mini_tasks)[name]
    evaluated = []
    monkeypatch.setattr(pipeline, "evaluate_side", lambda *a, **k: evaluated.append(1))
    monkeypatch.setattr(pipeline.models, "load_model", lambda *a, **k: evaluated.append("weights"))
    base = [o for o in mini_run_overrides if not o.startswith("model")] if "model=tiny" in overrides else mini_run_overrides
    start = time.perf_counter()
    error = attempt(base + overrides)
    seconds = time.perf_counter() - start
    assert error is not None and expected in error, error
    assert "\n" not in error and "Traceback" not in error
    assert not evaluated  # no weight read, nothing evaluated
    results = tmp_path / "results"
    assert not (results / "runs").exists() or not any((results / "runs").iterdir())
    assert seconds < 20


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_root_not_writable(mini_run_overrides, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    error = attempt(mini_run_overrides + [f"output.root={locked / 'results'}"])
    assert error and "is not writable" in error


def test_sweep_preflights_every_member_before_the_first_starts(mini_run_overrides, tmp_path):
    error = cli.precheck(["-m", *mini_run_overrides, "compression=rtn", "gate.max_flips=0.1,-0.5"])
    assert error and error.startswith("sweep member ") and "gate.max_flips=-0.5 is outside [0, 1]" in error
    assert "\n" not in error
    error = cli.precheck(["-m", *mini_run_overrides, "compression=rtn,none", "model.device=cpu,tpu9"])
    assert error and "model.device='tpu9'" in error
    assert not (tmp_path / "results").exists()


def test_command_line_bad_input_exits_2_with_one_line(random_llama, tmp_path):
    done = subprocess.run([sys.executable, "-m", "flipbench", "model=hf", f"model.path={random_llama}",
                           "model.device=tpu9", f"output.root={tmp_path / 'results'}"],
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("flipbench: error: model.device='tpu9'")
    assert not (tmp_path / "results").exists()


def test_ctrl_c_names_the_stage_and_marks_the_run_failed(mini_run_overrides, tmp_path):
    run_dir = tmp_path / "results" / "runs" / "interrupted"
    args = [sys.executable, "-m", "flipbench", *mini_run_overrides, "compression=none", "eval.cache=false",
            f"output.run_dir={run_dir}"]
    # A test session started in the background by a shell without job control ignores SIGINT, and so would the
    # child (Python keeps an inherited SIG_IGN): give it the default disposition, as a terminal's process has.
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    manifest = run_dir / "manifest.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(manifest.read_text()).get("stage") == "evaluate_baseline":
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    data = json.loads(manifest.read_text())
    stage = data["error"].removeprefix("interrupted during ")
    assert data["status"] == "failed" and stage in ("evaluate_baseline", "token_kl_reference", "compress")
    # the last line (the console's progress log may come before it), and no traceback
    assert stderr.strip().splitlines()[-1] == f"flipbench: interrupted during {stage}; run {run_dir} marked failed"
    assert "Traceback" not in stderr
    assert not (tmp_path / "results" / "latest").exists()


def test_a_run_whose_process_is_gone_is_stale_and_marked_failed(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "runs" / "killed"
    run_dir.mkdir(parents=True)
    rundir.write_json(run_dir / "manifest.json", {"status": "running", "pid": dead.pid, "host": socket.gethostname()})
    alive = tmp_path / "runs" / "alive"
    alive.mkdir()
    rundir.write_json(alive / "manifest.json", {"status": "running", "pid": os.getppid(), "host": socket.gethostname()})
    assert rundir.state(run_dir) == "stale" and rundir.state(alive) == "running"
    assert rundir.mark_stale(tmp_path / "runs", pipeline.log) == [run_dir]
    data = json.loads((run_dir / "manifest.json").read_text())
    assert data["status"] == "failed" and data["error"].startswith(f"stale: process {dead.pid}")
    assert "marked failed (stale)" in caplog.text


def test_a_run_folder_in_use_is_refused(mini_run_overrides, tmp_path):
    run_dir = tmp_path / "member"
    run_dir.mkdir()
    rundir.write_json(run_dir / "manifest.json", {"status": "running", "pid": os.getppid(), "host": socket.gethostname()})
    error = attempt(mini_run_overrides + [f"output.run_dir={run_dir}"])
    assert error and "is being written by a running process" in error


def test_cache_lock_file_is_removed_when_released(tmp_path):
    from flipbench.cache import BaselineCache

    cache = BaselineCache(tmp_path)
    with cache.lock("k"):
        assert (tmp_path / "k.lock").exists()
    assert not list(tmp_path.glob("*.lock"))


HOSTILE = ["$x$ costs $5 and $\\frac{1}{0}$", "<script>alert(1)</script><svg onload=alert(2)><style>*{}</style>",
           "evil\u202etxt.exe\u2066", "a_b^c {braces} \\n"]



def test_hostile_text_completes_with_an_intact_report(tmp_path):
    """A tiny run on the bundled model: a custom task whose subjects, questions and choices hold mathtext, HTML and
    bidi controls, and a model name with both, completes with its plots (per-subject included) and reports."""
    rows = [{"subject": HOSTILE[i % 4], "question": f"{HOSTILE[(i + 1) % 4]} number {i}?",
             "choices": [HOSTILE[(i + k) % 4] + f" {k}" for k in range(4)], "answer": i % 4} for i in range(8)]
    folder = tmp_path / "tasks"
    (folder / "hostile").mkdir(parents=True)
    (folder / "hostile.yaml").write_text(mc_task_yaml("hostile"))
    (folder / "hostile/test.jsonl").write_text(jsonl(rows))
    run_dir = pipeline.run(compose([f"suite.include_path={folder}", "suite.tasks=[hostile]", "compression.bits=2",
                                    f"output.root={tmp_path / 'results'}", "eval.bootstrap=50", "model.name='$m$<b>\u202e'"]))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    page, md = (run_dir / "report.html").read_text(), (run_dir / "report.md").read_text()
    for text in (page, md):
        assert "<b>" not in text and "&lt;b&gt;" in text
    assert (run_dir / "plots" / "subjects_hostile.png").stat().st_size > 0


def test_report_tables_escape_user_text_and_show_bidi_controls(tmp_path):
    """The report's tables (worst flips: prompts, targets, answers) from a samples table full of hostile text."""
    from flipbench import report
    from flipbench.metrics import annotate
    from tests.test_report import fixture_samples, make_run

    run_dir, cfg = make_run(tmp_path)
    samples = fixture_samples()
    samples["prompt"] = [f"{HOSTILE[i % 4]} {HOSTILE[(i + 1) % 4]} {i}" for i in range(len(samples))]
    samples["choices"] = [[HOSTILE[0], HOSTILE[1] + HOSTILE[2]]] * len(samples)
    samples["prompt"] += " [claim your prize](https://evil.example) ![x](https://evil.example/t.png)"
    annotate(samples).to_parquet(run_dir / "samples.parquet", index=False)
    report.build(run_dir, cfg)
    page, md = (run_dir / "report.html").read_text(), (run_dir / "report.md").read_text()
    for text in (page, md):
        assert "<script" not in text and "<svg" not in text and "<style>*" not in text
        assert "\u202e" not in text and "\u2066" not in text
        assert "&lt;script&gt;" in text
        assert "$x$ costs $5" in text
    assert "&lt;U+202E&gt;" in page and "&lt;U+202E&gt;" in md  # the control shown as its code point
    # Markdown link and image syntax in user text stays text: brackets escaped in report.md, no anchor in HTML
    assert "[claim your prize](" not in md and "[claim your prize\\](https://evil.example)" in md
    assert "![x](" not in md and "![x\\](https://evil.example/t.png)" in md and '<a href="https://evil' not in page and "[claim your prize](https://evil.example)" in page
