"""The run directory: its name, the manifest written around the run, and the ``results/latest`` link.

``manifest.json`` says ``"status": "running"`` while a run is under way and becomes ``"complete"`` only
as the last write, so a crashed or interrupted run never looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf


def run_tag(model_name: str, method: str, bits: int) -> str:
    tag = f"{model_name}-{method}" + (f"-w{bits}" if method in ("rtn", "gptq", "tacq") else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag)[:60]


def member_tag(compression) -> str:
    """A sweep member's folder tag from its compression config (a mapping holding the method's own keys): rtn-w4,
    wanda-s0.5, sparsegpt-2_4-w4, layerdrop-n2, none, checkpoint."""
    method, bits = compression["method"], compression.get("bits")
    if method == "layerdrop":
        tag = f"{method}-n{compression['n_layers']}"
    elif method in ("magnitude", "wanda", "sparsegpt"):
        pattern = compression["pattern"]
        tag = f"{method}-" + (f"s{compression['sparsity']}" if pattern == "unstructured" else str(pattern))
        tag += f"-w{bits}" if bits is not None else ""
    else:
        tag = method + (f"-w{bits}" if bits is not None else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag)[:60]


def new_run_id(model_name: str, method: str, bits: int) -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + run_tag(model_name, method, bits)


def write_json(path: Path, data: dict) -> None:
    """Atomic: write a sibling temp file, then rename over the target."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def versions() -> dict:
    import lm_eval  # noqa: F401  (version lookup below)
    import torch
    import transformers
    from importlib.metadata import version

    import flipbench

    return {"flipbench": flipbench.__version__, "lm_eval": version("lm_eval"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def compute() -> dict:
    """What results may depend on beyond versions: torch's threads, the CPU, the BLAS torch was built with, the
    deterministic-algorithms switch and the CUDA device. Same machine and threads: identical compression; otherwise
    within the compression noise (compression.replicas)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    config = torch.__config__.show()
    blas = config.split("BLAS_INFO=", 1)[1].split(",", 1)[0].strip() if "BLAS_INFO=" in config else None
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "blas": blas, "mkldnn": torch.backends.mkldnn.is_available(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MB; None where there is no /proc."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return round(int(match.group(1)) / 1024, 1) if match else None


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (Linux: ``echo 5 > /proc/self/clear_refs``) so the next reading is
    one stage's own peak. False where that is not possible; readings are then the process's peak so far.
    Side effect: the whole process's peak as seen from outside (``ru_maxrss``, ``/usr/bin/time``) then only
    covers the last stage; the manifest's per-stage peaks are the record."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(stage_scoped: bool = False) -> dict:
    """Peak resident memory: the stage's own (``stage_scoped``, after :func:`reset_peak_rss`) or the process's
    so far; and the GPU's peak since the last reading, where there is one."""
    import resource

    import torch

    hwm = _status_mb("VmHWM") if stage_scoped else None
    peak = {"rss": hwm if hwm is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_scope": "stage" if hwm is not None else "process"}
    if torch.cuda.is_available():
        peak["cuda"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    return peak


LOGGERS = ("flipbench", "lm_eval")  # whose records a run's run.log receives


def attach_log(path: Path) -> logging.Handler:
    """Copy flipbench's and lm-eval's log records into ``path`` (the run's own log) until detached."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.setLevel(logging.INFO)
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
    return handler


def detach_log(handler: logging.Handler) -> None:
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()


class Manifest:
    """manifest.json, rewritten atomically after every stage."""

    def __init__(self, run_dir: Path, seed: int, device: str, name: str = "manifest.json"):
        self.path = run_dir / name
        self.data = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(), "versions": versions(),
                     "git_sha": git_sha(), "device": device, "seed": seed, "compute": compute(),
                     "started": datetime.now(timezone.utc).isoformat(), "stage_seconds": {}}
        self.current: str | None = None  # the stage under way (named when a run is interrupted)
        self.flush()

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.flush()

    @contextmanager
    def stage(self, name: str, log):
        log.info("stage %s ...", name)
        self.current = name
        self.update(stage=name)
        rss_start, scoped = _status_mb("VmRSS"), reset_peak_rss()
        start = time.perf_counter()
        yield
        seconds = round(time.perf_counter() - start, 3)
        self.data["stage_seconds"][name] = seconds
        self.data.setdefault("peak_memory_mb", {})[name] = {"rss_start": rss_start, **peak_memory_mb(scoped)}
        log.getChild("stages").info("stage %s done in %.1fs", name, seconds)  # run.log; the console keeps one line
        self.flush()

    def flush(self) -> None:
        write_json(self.path, self.data)

    def complete(self, **fields) -> None:
        # status goes last: everything else is on disk before the run claims to be complete.
        self.data.update(fields)
        self.data["finished"] = datetime.now(timezone.utc).isoformat()
        self.data.pop("status")
        self.data.pop("stage", None)
        self.data["status"] = "complete"
        self.flush()

    def fail(self, error: str) -> None:
        self.data.update(status="failed", error=error)
        self.flush()


def save_config(run_dir: Path, cfg) -> None:
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def point_latest(root: Path, run_dir: Path) -> None:
    """``results/latest`` → the newest complete run (a relative symlink, swapped atomically)."""
    link = root / "latest"
    tmp = root / f".latest.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(run_dir, root))
    os.replace(tmp, link)


def is_complete(run_dir: Path) -> bool:
    return state(run_dir) == "complete"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_manifest(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def in_use(run_dir: Path) -> bool:
    """Another live process is writing this run folder."""
    return state(run_dir) == "running" and read_manifest(run_dir).get("pid") != os.getpid()


def state(run_dir: Path) -> str:
    """complete | failed | running | stale (says running, but its process on this host is gone) | missing.

    A run on another host cannot be checked from here and stays ``running``."""
    data = read_manifest(run_dir)
    status = data.get("status", "missing")
    if status == "running" and data.get("host") == socket.gethostname() and isinstance(data.get("pid"), int):
        if data["pid"] != os.getpid() and not _alive(data["pid"]):
            return "stale"
    return status


def mark_stale(runs: Path, log) -> list[Path]:
    """Run folders under ``runs`` whose process died without a word (SIGKILL, power loss) become ``failed``
    with the reason, so that nothing reads them as under way; returns them."""
    stale = [d for d in sorted(Path(runs).glob("*")) if d.is_dir() and state(d) == "stale"]
    for run_dir in stale:
        path = run_dir / "manifest.json"
        data = json.loads(path.read_text())
        data.update(status="failed", error=f"stale: process {data['pid']} on {data['host']} ended without finishing the run")
        write_json(path, data)
        log.warning("run %s was left 'running' by a process that is gone (pid %s); marked failed (stale)", run_dir,
                    data["pid"])
    return stale
