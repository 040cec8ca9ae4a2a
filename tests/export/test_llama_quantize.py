"""`greenlm export --mixed --llama-quantize-args FILE`: the per-tensor plan as llama.cpp's own llama-quantize
arguments. Fed to llama.cpp's quantizer (through llama-cpp-python's `llama_model_quantize` with the overrides
parsed as llama-quantize parses them, and to a built `llama-quantize` binary when one is at hand), they must give
every tensor greenlm's type, and the llama.cpp-rounded ones greenlm's very bytes."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from greenlm.errors import GreenlmError
from greenlm.export.config import ExportConfig
from greenlm.export.llama_quantize import base_file_type, tensor_type_patterns
from tests.helpers import export_gguf, needs_llamacpp

SMALL = dict(calibration_samples=4, calibration_tokens=64)
IMATRIX = dict(imatrix=True, imatrix_samples=4, imatrix_tokens=64)


def test_patterns_give_each_tensor_its_type_and_touch_no_other():
    types = {"token_embd.weight": "q8_0", "output.weight": "q6_k"}
    for layer in range(12):
        types[f"blk.{layer}.attn_q.weight"] = "q4_0"  # one type in every layer
        types[f"blk.{layer}.ffn_down.weight"] = "q8_0" if layer in (0, 1, 11) else "q4_0"
    # the other tensors of a real file, which no pattern may match
    others = [
        "blk.3.attn_q_norm.weight",
        "blk.3.attn_norm.weight",
        "output_norm.weight",
        "blk.3.ffn_down_exps",
    ]
    patterns = tensor_type_patterns(types)
    assert ("^blk\\.\\d+\\.attn_q\\.weight$", "q4_0") in patterns
    assert ("^blk\\.(0|1|11)\\.ffn_down\\.weight$", "q8_0") in patterns
    assert len(patterns) == 5
    for name in [*types, *others]:
        # llama.cpp: std::regex (ECMAScript) searched in the name, the first match wins; these constructs mean
        # the same in Python's re
        hits = [t for p, t in patterns if re.search(p, name)]
        assert hits == ([types[name]] if name in types else []), name


def test_the_base_type_is_the_quantized_type_holding_most_parameters():
    types = {"a": "f16", "b": "q4_0", "c": "q8_0", "d": "q4_k"}
    assert base_file_type(types, {"a": 1000, "b": 10, "c": 20, "d": 5}) == "Q8_0"
    assert base_file_type(types, {"a": 1, "b": 1, "c": 1, "d": 50}) == "Q4_K_M"  # no plain Q4_K file type
    assert base_file_type({"a": "f16"}, {"a": 1}) == "F16"


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(llama_quantize_args="plan.args"), "--llama-quantize-args applies to --mixed"),
        (dict(mixed=True, llama_quantize_args="x.gguf"), "must name a text file other than --out"),
    ],
)
def test_bad_args_settings_are_one_line(settings, message):
    with pytest.raises(GreenlmError, match=message):
        ExportConfig(out="x.gguf", **settings)


# --- through llama.cpp -------------------------------------------------------------------------------------


def parse_like_llama_quantize(path: Path) -> tuple[list[tuple[str, gguf.GGMLQuantizationType]], Path | None]:
    """The options in `path` as tools/quantize/quantize.cpp reads them: `--tensor-type NAME=TYPE` split at the
    first '=', the name lowercased, the type by its ggml name in any case; `--imatrix FILE`."""
    args = path.read_text(encoding="utf-8").split()
    overrides, imatrix = [], None
    it = iter(args)
    for flag in it:
        value = next(it)
        if flag == "--tensor-type":
            pattern, _, type_name = value.partition("=")
            overrides.append((pattern.lower(), gguf.GGMLQuantizationType[type_name.upper()]))
        elif flag == "--imatrix":
            imatrix = Path(value)
        else:
            raise AssertionError(f"llama-quantize has no option {flag} in this plan")
    return overrides, imatrix


def load_like_llama_quantize(path: Path) -> dict[str, np.ndarray]:
    """common/imatrix-loader.cpp + quantize.cpp's load_imatrix for a GGUF imatrix: it refuses a file without
    the three metadata keys, and divides each `.in_sum2` by its rounded `.counts` in float32."""
    reader = gguf.GGUFReader(str(path))
    assert {"imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"} <= set(reader.fields)
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    means = {}
    for name in [n.removesuffix(".in_sum2") for n in tensors if n.endswith(".in_sum2")]:
        sums, counts = tensors[f"{name}.in_sum2"].reshape(-1), tensors[f"{name}.counts"].reshape(-1)
        assert counts.size == 1 and tensors[f"{name}.in_sum2"].dtype == np.float32
        means[name] = sums / np.float32(np.rint(counts[0]))
    return means


def quantize_with_overrides(src: Path, dst: Path, base: str, overrides, imatrix: dict | None) -> None:
    """llama_model_quantize with what llama-quantize passes it: the file type, tt_overrides and imatrix."""
    from greenlm.llamacpp.quantize import _imatrix_array
    from greenlm.llamacpp.runtime import import_llama_cpp

    lib = import_llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = int(getattr(lib, f"LLAMA_FTYPE_MOSTLY_{base}"))
    entries = (lib.llama_model_tensor_override * (len(overrides) + 1))()
    keep: list = []
    for i, (pattern, qtype) in enumerate(overrides):
        encoded = pattern.encode()
        keep.append(encoded)
        entries[i].pattern = encoded
        entries[i].type = int(qtype)
    entries[len(overrides)].pattern = None  # the terminator: llama.cpp stops at a null pattern
    params.tt_overrides = ctypes.cast(entries, ctypes.POINTER(lib.llama_model_tensor_override))
    if imatrix:
        params.imatrix = ctypes.cast(
            _imatrix_array(lib, imatrix, keep), ctypes.POINTER(lib.llama_model_imatrix_data)
        )
    assert lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


def tensors_of(path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name.lower(), bytes(t.data)) for t in gguf.GGUFReader(str(path)).tensors}


def assert_reproduces(made: Path, result) -> None:
    """Every tensor of `made` has the mixed file's type; the ones llama.cpp rounded (not greenlm's codes) the
    same bytes."""
    ours, theirs = tensors_of(result.out), tensors_of(made)
    assert ours.keys() == theirs.keys()
    assert {n: t for n, (t, _b) in theirs.items()} == {n: t for n, (t, _b) in ours.items()}
    for name, label in result.mixed["choice"].items():
        if ":" not in label:
            assert theirs[name][1] == ours[name][1], name


@pytest.fixture(scope="module")
def mixed_plan(tiny_model_dir, tmp_path_factory):
    """A mixed export with an importance matrix and its llama-quantize arguments, and the model's f32 GGUF."""
    from greenlm.export import export_model

    root = tmp_path_factory.mktemp("lq")
    result = export_model(
        ExportConfig(
            out=str(root / "mixed.gguf"),
            model=str(tiny_model_dir),
            mixed=True,
            max_kld=1e-4,
            candidates=("q8_0", "q5_0", "q4_0"),
            llama_quantize_args=str(root / "plan.args"),
            **IMATRIX,
            **SMALL,
        )
    )
    f32 = export_gguf(tiny_model_dir, root / "f32.gguf", quant="f32").out
    return result, Path(f32), root


@needs_llamacpp
def test_llama_cpp_given_the_arguments_writes_greenlms_plan(mixed_plan, tmp_path):
    result, f32, root = mixed_plan
    info = result.mixed["llama_quantize"]
    assert len(set(result.mixed["choice"].values())) >= 2  # a real mix, not one type everywhere
    assert info["args_file"] == str(root / "plan.args") and info["imatrix_file"] == str(
        root / "plan.imatrix.gguf"
    )
    overrides, imatrix_file = parse_like_llama_quantize(root / "plan.args")
    assert imatrix_file == root / "plan.imatrix.gguf"
    imatrix = load_like_llama_quantize(imatrix_file)
    assert len(imatrix) == result.imatrix["tensors"]
    made = tmp_path / "by-llama.gguf"
    quantize_with_overrides(f32, made, info["base_type"], overrides, imatrix)
    assert_reproduces(made, result)
    # the importance matrix is what makes the bytes equal: without it llama.cpp rounds some tensor otherwise
    blind = tmp_path / "blind.gguf"
    quantize_with_overrides(f32, blind, info["base_type"], overrides, None)
    assert {n: t for n, (t, _b) in tensors_of(blind).items()} == {
        n: t for n, (t, _b) in tensors_of(made).items()
    }
    assert tensors_of(blind) != tensors_of(made)


@needs_llamacpp
def test_llama_cpp_reads_the_per_layer_patterns_as_greenlm_means_them(mixed_plan, tmp_path):
    """Layers of one role with different types (`^blk\\.(0)\\.ffn_down...`), an f16 matrix among quantized ones,
    the embedding: llama.cpp's std::regex gives each tensor the type the pattern names."""
    _result, f32, _root = mixed_plan
    types = {"token_embd.weight": "q8_0"}
    for layer, (down, q) in enumerate((("q8_0", "f16"), ("q4_0", "q4_1"))):
        for role in ("attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"):
            types[f"blk.{layer}.{role}.weight"] = "q4_0"
        types[f"blk.{layer}.ffn_down.weight"] = down
        types[f"blk.{layer}.attn_q.weight"] = q
    overrides = [(p, gguf.GGMLQuantizationType[t.upper()]) for p, t in tensor_type_patterns(types)]
    made = tmp_path / "per-layer.gguf"
    quantize_with_overrides(f32, made, "Q4_0", overrides, None)
    held = {n: t for n, (t, _b) in tensors_of(made).items()}
    assert {n: held[n] for n in types} == types
    assert {t for n, t in held.items() if n not in types} == {"f32"}  # norms untouched


def _llama_quantize_binary() -> str | None:
    return os.environ.get("GREENLM_LLAMA_QUANTIZE") or shutil.which("llama-quantize")


@needs_llamacpp
@pytest.mark.skipif(
    _llama_quantize_binary() is None,
    reason="no llama-quantize binary (put llama.cpp's on PATH or name it in GREENLM_LLAMA_QUANTIZE)",
)
def test_llama_quantize_binary_given_the_file_writes_greenlms_plan(mixed_plan, tmp_path):
    result, f32, root = mixed_plan
    info = result.mixed["llama_quantize"]
    args = (root / "plan.args").read_text(encoding="utf-8").split()
    made = tmp_path / "by-llama-quantize.gguf"
    run = subprocess.run(
        [_llama_quantize_binary(), *args, str(f32), str(made), info["base_type"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "loaded" in run.stdout and "importance matrix entries" in run.stdout
    assert_reproduces(made, result)


@needs_llamacpp
def test_cli_writes_the_arguments_and_reports_them(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from greenlm.cli import main

    args_file = tmp_path / "plan.args"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "greenlm",
            "export",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "m.gguf"),
            "--mixed",
            "--max-kld",
            "1e-3",
            "--candidates",
            "q8_0,q4_0",
            "--calibration-samples",
            "4",
            "--calibration-tokens",
            "64",
            "--llama-quantize-args",
            str(args_file),
            "--json",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    info = json.loads(captured.out)["mixed"]["llama_quantize"]
    assert info["imatrix_file"] is None and info["command"].startswith(f"llama-quantize $(cat {args_file})")
    lines = args_file.read_text(encoding="utf-8").splitlines()
    assert lines[0::2] == ["--tensor-type"] * info["patterns"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "plan.args"]


@needs_llamacpp
def test_an_existing_args_file_is_refused_before_any_work(tiny_model_dir, tmp_path):
    from greenlm.export import export_model

    (tmp_path / "plan.args").write_text("mine\n")
    with pytest.raises(GreenlmError, match="plan.args already exists"):
        export_model(
            ExportConfig(
                out=str(tmp_path / "m.gguf"),
                model=str(tiny_model_dir),
                mixed=True,
                llama_quantize_args=str(tmp_path / "plan.args"),
                **SMALL,
            )
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.args"]
    assert (tmp_path / "plan.args").read_text() == "mine\n"
