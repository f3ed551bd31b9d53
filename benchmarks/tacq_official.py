"""Compare flipbench's TACQ with the official TACQ code's own functions on the bundled model.

    git clone https://github.com/The-Inscrutable-X/TACQ /path/to/TACQ
    python -m benchmarks.tacq_official --tacq /path/to/TACQ [--windows 2x16 16x128]

Prints, per calibration size (``--windows NxT``: N windows of T tokens), the Jaccard overlap |A ∩ B| / |A ∪ B|
of the 16-bit masks (same model, calibration, task data, bits 3, keep 0.35%, same k) for flipbench's `tacq` grids
(MSE search, norm 2.4), for squared-error search (mse_norm=2) and for min-max grids, and the largest difference
between the first GPTQ pass's weights.

The official pieces run as they are, imported from the checkout: gptq/quant.py `Quantizer`, gptq/gptq.py
`GPTQ` (add_batch, fasterquant), `importances_to_mask_top_p_sparse` (utils/quantization_utils.py), and
`sample_abs` and `weight_prod_contrastive_postprocess` read by name from utils/gradient_attributors.py
(that module's other imports need peft and the paper's datasets). What feeds them is flipbench's: the
layer loop with its captured inputs (the official llama.py loop does not run on transformers 5), the
calibration windows, and k (their n_params is set so that int(fraction · n_params) is flipbench's k).
Saliency runs in fp32 on both sides (the official script loads the two models in fp16 for it).
The table goes to ``docs/measured/tacq-official.md`` (``--fragment``) with the checkout's commit.
This is a benchmark, not a test; it needs the checkout and runs on CPU.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from benchmarks.provenance import add_fragment_option, command_line, markdown_table, write_fragment
from flipbench.compress import QuantConfig
from flipbench.compress.calibration import tokenize_calibration
from flipbench.compress.families import quantizable_linears, weight_matrix
from flipbench.compress.layerwise import layer_by_layer, run_layer, sequential_groups
from flipbench.compress.quant.gptq import gptq_model
from flipbench.compress.quant.tacq import n_to_keep, salient_masks

ROOT = Path(__file__).resolve().parents[1]
BITS, KEEP = 3, 0.0035


def official_functions(checkout: Path) -> dict:
    sys.path[:0] = [str(checkout), str(checkout / "gptq")]
    import quant
    from gptq import GPTQ
    from utils.quantization_utils import importances_to_mask_top_p_sparse

    source = (checkout / "utils/gradient_attributors.py").read_text()
    wanted = {"sample_abs", "weight_prod_contrastive_postprocess"}
    body = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    names = {"torch": torch, "Quantizer": quant.Quantizer, "GPTQ": GPTQ, "top_p": importances_to_mask_top_p_sparse}
    exec(compile(ast.Module(body, []), str(checkout / "utils/gradient_attributors.py"), "exec"), names)
    torch.cuda.synchronize = lambda *a, **k: None  # fasterquant synchronises CUDA; here everything is on CPU
    return names


def official_masks(fn: dict, base, calib, task, k: int):
    """The official pipeline's steps on base: gradients, GPTQ pass 1, saliency, top-k. Returns (masks, Q model)."""
    names = list(quantizable_linears(base))
    n_quant = sum(weight_matrix(m).numel() for m in quantizable_linears(base).values())
    model = copy.deepcopy(base)
    acc = {f"{n}.weight": torch.zeros_like(quantizable_linears(model)[n].weight) for n in names}
    params = dict(model.named_parameters())
    hooks = []
    for key in acc:
        def hook(param, key=key):
            acc[key] = fn["sample_abs"](key, acc, param)
            param.grad = None
        hooks.append(params[key].register_post_accumulate_grad_hook(hook))
    for row in task:  # batch 1, mean next-token cross-entropy
        F.cross_entropy(model(input_ids=row[None]).logits[0, :-1], row[1:]).backward()
    for handle in hooks:
        handle.remove()

    corrupt = copy.deepcopy(base)  # pass 1: their Quantizer(perchannel, asymmetric, mse) and fasterquant
    with torch.no_grad():
        for _, layer, _, inputs in layer_by_layer(corrupt, calib, "cpu"):
            for group in sequential_groups(layer, inputs):
                solvers, handles = {}, []
                for name in group:
                    linear = layer.get_submodule(name)
                    solver = fn["GPTQ"](linear)
                    solver.quantizer = fn["Quantizer"]()
                    solver.quantizer.configure(BITS, perchannel=True, sym=False, mse=True)
                    solvers[name] = solver
                    handles.append(linear.register_forward_hook(lambda m, a, o, s=solver: s.add_batch(a[0].data, o.data)))
                run_layer(layer, inputs)
                for handle in handles:
                    handle.remove()
                for solver in solvers.values():
                    solver.fasterquant(percdamp=0.01, groupsize=-1)
    scores = fn["weight_prod_contrastive_postprocess"](acc, base, corrupt)
    scores = {key: value.abs() for key, value in scores.items()}
    masks = fn["top_p"](None, scores, k / n_quant, n_params=n_quant)
    if sum(int(m.sum()) for m in masks.values()) != k:  # int(k/n · n) fell one short in floating point
        masks = fn["top_p"](None, scores, 1.0, n_params=k)
    return {key[: -len(".weight")]: m.bool() for key, m in masks.items()}, corrupt


def jaccard(a: dict, b: dict) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union


GRIDS = {  # flipbench's settings compared with the official masks
    "`compression=tacq` (MSE, norm 2.4, as the official code; float64 Hessian)": dict(mse=True, mse_norm=2.4),
    "`compression=tacq compression.hessian_dtype=float32` (the official code's float32 Hessian)":
        dict(mse=True, mse_norm=2.4, hessian_dtype="float32"),
    "`compression.mse_norm=2` (squared-error search)": dict(mse=True, mse_norm=2.0),
    "`compression.mse=false` (min-max grids)": dict(mse=False),
}
PASS1 = ("float64", "float32")  # GPTQ pass 1 compared with the official one, per Hessian dtype


def compare(fn: dict, n_samples: int, seq_len: int) -> dict:
    """Masks and GPTQ pass 1 on the bundled model with ``n_samples`` calibration windows of ``seq_len`` tokens:
    k, the quantized weights, the Jaccard overlap per grid setting and the largest |flipbench - official| weight."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tiny = ROOT / "flipbench/assets/tiny"
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    data = ROOT / "tasks/synth/data"
    world = [row.get("text") or json.dumps(row) for row in map(json.loads, open(data / "synth_world_train.jsonl"))]
    mmlu = [json.dumps(row) for row in map(json.loads, open(data / "synth_mmlu_train.jsonl"))]
    calib = tokenize_calibration(tokenizer, world, n_samples, seq_len, seed=0)
    task = tokenize_calibration(tokenizer, mmlu, max(n_samples // 2, 1), 64, seed=1)
    n_quant = sum(weight_matrix(m).numel() for m in quantizable_linears(model).values())
    k = n_to_keep(KEEP, n_quant)

    reference, corrupt = official_masks(fn, model, calib, task, k)
    print(f"{n_samples}x{seq_len}: official code: {k} of {n_quant} weights kept", flush=True)
    overlap = {}
    for label, grid in GRIDS.items():
        settings = QuantConfig(method="tacq", bits=BITS, keep_fraction=KEEP, **grid).gptq
        ours, _ = salient_masks(copy.deepcopy(model), calib, task, settings, KEEP, "cpu")
        overlap[label] = jaccard(ours, reference)
        print(f"{n_samples}x{seq_len}: {label}: Jaccard vs official {overlap[label]:.4f}", flush=True)
    diff = {}
    for dtype in PASS1:
        mine = copy.deepcopy(model)
        gptq_model(mine, calib, QuantConfig(method="gptq", bits=BITS, mse=True, mse_norm=2.4, hessian_dtype=dtype).gptq,
                   "cpu")
        diff[dtype] = max((weight_matrix(quantizable_linears(mine)[n])
                           - weight_matrix(quantizable_linears(corrupt)[n])).abs().max().item()
                          for n in quantizable_linears(mine))
        print(f"{n_samples}x{seq_len}: GPTQ pass 1 ({dtype} Hessian), max |flipbench - official| over all weights: "
              f"{diff[dtype]:.3g}", flush=True)
    return {"k": k, "n_quant": n_quant, "overlap": overlap, "pass1_diff": diff}


def checkout_commit(checkout: Path) -> str:
    out = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h (%ad)", "--date=short"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown (not a git checkout)"


def body(results: dict[tuple[int, int], dict], official: str) -> str:
    first = next(iter(results.values()))
    columns = {f"`--windows {n}x{t}` ({n} windows of {t} tokens)": r for (n, t), r in results.items()}
    rows = [{"flipbench grids": label, **{c: f"{r['overlap'][label]:.4f}" for c, r in columns.items()}}
            for label in GRIDS]
    rows += [{"flipbench grids": f"GPTQ pass 1, {dtype} Hessian: max \\|flipbench − official\\| weight",
              **{c: f"{r['pass1_diff'][dtype]:.3g}" for c, r in columns.items()}} for dtype in PASS1]
    return (f"Jaccard overlap |A∩B|/|A∪B| of the 16-bit masks, flipbench's TACQ against the official code at commit "
            f"{official} (3 bits, keep {100 * KEEP:.2f}%: {first['k']} of {first['n_quant']} weights; both sides fed "
            "the same calibration windows from `synth_world_train`, task windows from `synth_mmlu_train`, and the "
            "same k):\n\n" + markdown_table(pd.DataFrame(rows)))


def window(text: str) -> tuple[int, int]:
    n, _, t = text.partition("x")
    if not (n.isdigit() and t.isdigit() and int(n) > 0 and int(t) > 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not NxT (windows x tokens, e.g. 16x128)")
    return int(n), int(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tacq", type=Path, required=True, help="a checkout of The-Inscrutable-X/TACQ")
    parser.add_argument("--windows", type=window, nargs="+", default=[(2, 16), (16, 128)],
                        help="calibration sizes to compare, NxT: N windows of T tokens (default 2x16 16x128)")
    add_fragment_option(parser, "tacq-official")
    args = parser.parse_args(argv)
    missing = [f for f in ("gptq/quant.py", "gptq/gptq.py", "utils/quantization_utils.py",
                           "utils/gradient_attributors.py") if not (args.tacq / f).is_file()]
    if missing:
        parser.exit(2, f"tacq_official: --tacq {args.tacq} lacks {', '.join(missing)}; pass a checkout of "
                       "https://github.com/The-Inscrutable-X/TACQ\n")
    fn = official_functions(args.tacq)
    load = os.getloadavg()[0]
    results = {(n, t): compare(fn, n, t) for n, t in args.windows}
    if args.fragment:
        command = command_line("benchmarks.tacq_official", list(sys.argv[1:] if argv is None else argv))
        print(write_fragment(args.fragment, command, body(results, checkout_commit(args.tacq)), load_at_start=load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
