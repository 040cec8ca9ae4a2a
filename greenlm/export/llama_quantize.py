"""greenlm's mixed per-tensor plan as the arguments of llama.cpp's own `llama-quantize`, so a user of llama.cpp's
tools can reuse it on the same model:

    llama-quantize $(cat PLAN.args) model-f32.gguf model-mixed.gguf Q4_0

One argument per line: `--tensor-type PATTERN=TYPE` for every (tensor role, type) of the plan, and
`--imatrix FILE` when the plan's llama.cpp candidates were quantized with greenlm's importance matrix (FILE is
written beside, in llama.cpp's GGUF imatrix format). llama-quantize reads each PATTERN as a C++ std::regex,
searched in the tensor name, the first match winning (tools/quantize/quantize.cpp, src/llama-quant.cpp); the
patterns here are anchored and disjoint, one per role and type: `^blk\\.\\d+\\.attn_q\\.weight$=q8_0` when every
layer's attn_q has that type, `^blk\\.(0|3)\\.ffn_down\\.weight$=q4_0` otherwise. The patterns hold no glob
characters and no spaces, so `$(cat FILE)` passes them through unchanged.

llama-quantize applies a `--tensor-type` only when the file type (its positional TYPE) is a quantized one; the
base type given is the plan's most used quantized type. Matrices whose chosen option was greenlm's own codes
(`gptq:q4_0`) get the same type but llama.cpp's rounding: llama-quantize cannot write another tool's codes.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path

import gguf

from greenlm.errors import GreenlmError
from greenlm.io import atomic_file
from greenlm.llamacpp.imatrix import ImportanceMatrix, write_imatrix_gguf

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
IMATRIX_SUFFIX = ".imatrix.gguf"


def imatrix_path(args_path: Path) -> Path:
    """Where the importance matrix goes beside `args_path`: plan.args -> plan.imatrix.gguf."""
    return args_path.with_name(args_path.stem + IMATRIX_SUFFIX)


def check_args_target(path: Path, *, overwrite: bool, imatrix: bool) -> None:
    """Refuse before any work: the args file (and the imatrix beside it) exists or is a folder."""
    targets = [path, imatrix_path(path)] if imatrix else [path]
    for target in targets:
        if target.is_dir():
            raise GreenlmError(f"--llama-quantize-args {path}: {target} is a directory: give a file name")
        if target.exists() and not overwrite:
            raise GreenlmError(
                f"{target} already exists: choose another --llama-quantize-args, or pass --force to replace it "
                "(nothing was written)"
            )


def tensor_type_name(label: str) -> str:
    """A plan option's tensor type as llama.cpp names it: q4_0, f16, and gptq:q4_0 -> q4_0."""
    return label.rpartition(":")[2]


def tensor_type_patterns(types: dict[str, str]) -> list[tuple[str, str]]:
    """[(PATTERN, TYPE)] that give every tensor in `types` (GGUF name -> type) its type and touch no other."""
    patterns: list[tuple[str, str]] = []
    by_role: dict[str, dict[str, list[int]]] = {}  # role -> type -> layers
    for name, ggml_type in types.items():
        match = _LAYER.match(name)
        if match is None:
            patterns.append((f"^{re.escape(name)}$", ggml_type))
        else:
            by_role.setdefault(match.group(2), {}).setdefault(ggml_type, []).append(int(match.group(1)))
    for role, layers_by_type in by_role.items():
        for ggml_type, layers in layers_by_type.items():
            # one type for every layer of this role: any layer number; else the layers named
            which = r"\d+" if len(layers_by_type) == 1 else "(" + "|".join(map(str, sorted(layers))) + ")"
            patterns.append((f"^blk\\.{which}\\.{re.escape(role)}$", ggml_type))
    for pattern, _type in patterns:
        # llama-quantize lowercases a pattern before compiling it: \D or \W would change meaning
        if pattern != pattern.lower():
            raise GreenlmError(
                f"tensor pattern {pattern} has upper case, which llama-quantize would lowercase"
            )
    return patterns


def base_file_type(types: dict[str, str], params: dict[str, int]) -> str:
    """llama-quantize's positional TYPE: the quantized type holding most parameters (F16 if none is), as a
    file type name it accepts (Q4_0, Q8_0, Q6_K, Q4_K_M for q4_k, ...)."""
    weight: Counter[str] = Counter()
    for name, ggml_type in types.items():
        qtype = gguf.GGMLQuantizationType[ggml_type.upper()]
        if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            weight[ggml_type] += params[name]
    if not weight:
        return "F16"
    top = weight.most_common(1)[0][0].upper()
    for candidate in (top, f"{top}_M"):
        if f"MOSTLY_{candidate}" in gguf.LlamaFileType.__members__:
            return candidate
    raise GreenlmError(f"no llama.cpp file type stores {top.lower()} tensors")


def quantize_args(types: dict[str, str], imatrix_file: Path | None) -> list[str]:
    args: list[str] = []
    for pattern, ggml_type in tensor_type_patterns(types):
        args += ["--tensor-type", f"{pattern}={ggml_type}"]
    if imatrix_file is not None:
        args += ["--imatrix", str(imatrix_file)]
    return args


def write_llama_quantize_args(
    path: Path,
    choice: dict[str, str],
    params: dict[str, int],
    *,
    imatrix: ImportanceMatrix | None,
    arch: str,
    dataset: str,
    overwrite: bool,
) -> dict:
    """Write the plan `choice` (GGUF name -> option label) as llama-quantize arguments to `path`, and the
    importance matrix beside it when there is one. Returns what the export reports about them."""
    types = {name: tensor_type_name(label) for name, label in choice.items()}
    # absolute: llama-quantize may run from another folder
    imatrix_file = imatrix_path(path).absolute() if imatrix is not None else None
    args = quantize_args(types, imatrix_file)
    base = base_file_type(types, params)
    if imatrix is not None and imatrix_file is not None:
        with atomic_file(imatrix_file, overwrite=overwrite, check=False) as tmp:
            write_imatrix_gguf(imatrix, tmp, arch=arch, dataset=dataset)
    with atomic_file(path, overwrite=overwrite, check=False) as tmp:
        tmp.write_text("\n".join(args) + "\n", encoding="utf-8")
    re_rounded = sorted(name for name, label in choice.items() if ":" in label)
    notes = []
    if re_rounded:
        notes.append(
            f"{len(re_rounded)} matrices hold greenlm codes in the exported file; llama-quantize gives them the "
            "same types with its own rounding"
        )
    return {
        "args_file": str(path),
        "imatrix_file": None if imatrix_file is None else str(imatrix_file),
        "base_type": base,
        "tensor_types": len(types),
        "patterns": len(args) // 2 - (imatrix_file is not None),
        "command": f"llama-quantize $(cat {shlex.quote(str(path))}) MODEL-F32.gguf OUT.gguf {base}",
        "re_rounded": re_rounded,
        "notes": notes,
    }


def plan_as_llama_quantize_args(
    config, gguf_file: Path, choice: dict[str, str], imatrix: ImportanceMatrix | None, *, arch: str
) -> dict:
    """`export --mixed --llama-quantize-args FILE`: the plan just written to `gguf_file`, as llama-quantize's
    arguments (and the importance matrix its llama.cpp candidates were quantized with)."""
    params = {t.name: int(t.n_elements) for t in gguf.GGUFReader(str(gguf_file)).tensors}
    text = config.text or "greenlm's built-in corpus"
    return write_llama_quantize_args(
        Path(config.llama_quantize_args).expanduser(),
        choice,
        params,
        imatrix=imatrix,
        arch=arch,
        dataset=f"{text} (calibration split)",
        overwrite=config.force,
    )
