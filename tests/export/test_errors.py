"""Bad input as a new user would try it: one clear line, a non-zero exit, and no output file left behind."""

from __future__ import annotations

import shutil
import sys

import pytest

from greenlm.errors import GreenlmError
from tests.helpers import export_gguf, needs_llamacpp


def _no_leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _gpt2_dir(tmp_path, tiny_model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320, n_positions=64)
    ).save_pretrained(path)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, path / f.name)
    return path


def test_unsupported_architecture_is_refused_without_output(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GreenlmError, match="cannot export architecture GPT2LMHeadModel to GGUF") as info:
        export_gguf(_gpt2_dir(tmp_path, tiny_model_dir), out / "gpt2.gguf", quant="f16")
    assert "\n" not in str(info.value)
    assert _no_leftovers(out) == []


def test_cli_unsupported_architecture_exits_2_with_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from greenlm.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "greenlm",
            "export",
            "--model",
            str(_gpt2_dir(tmp_path, tiny_model_dir)),
            "--out",
            str(tmp_path / "g.gguf"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot export architecture GPT2LMHeadModel")
    assert not (tmp_path / "g.gguf").exists()


def test_non_dense_module_is_refused(tiny_loaded, tmp_path):
    import torch

    from greenlm.llamacpp.gguf_writer import write_float_gguf

    class LowBit(torch.nn.Module):
        def forward(self, x):
            return x

    layer = tiny_loaded.model.model.layers[0].mlp
    original = layer.down_proj
    layer.down_proj = LowBit()
    try:
        with pytest.raises(GreenlmError, match="not a dense linear layer"):
            write_float_gguf(tiny_loaded.model, tiny_loaded.tokenizer, tmp_path / "x.gguf")
    finally:
        layer.down_proj = original


def test_pre_tokenizers_the_exporter_cannot_name_are_refused():
    from greenlm.llamacpp.vocab import _pre_tokenizer_name

    assert _pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt-2"
    digits = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}],
    }
    assert _pre_tokenizer_name({"pre_tokenizer": digits}) == "smollm"
    with pytest.raises(GreenlmError, match="Metaspace"):
        _pre_tokenizer_name({"pre_tokenizer": {"type": "Metaspace"}})


def test_existing_output_is_not_replaced_without_force(tmp_path, tiny_model_dir):
    target = tmp_path / "keep.gguf"
    target.write_bytes(b"precious")
    with pytest.raises(GreenlmError, match="already exists"):
        export_gguf(tiny_model_dir, target, quant="f16")
    assert target.read_bytes() == b"precious"


def test_wrong_suffix_and_format(tmp_path):
    from greenlm.export import ExportConfig

    with pytest.raises(GreenlmError, match="should end in .gguf"):
        ExportConfig(out=str(tmp_path / "x.bin"))
    with pytest.raises(GreenlmError, match="unknown export format 'onnx'"):
        ExportConfig(out=str(tmp_path / "x.gguf"), format="onnx")


@needs_llamacpp
def test_failed_quantization_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch):
    import greenlm.export.runner as runner

    def explode(*_args, **_kwargs):
        raise GreenlmError("llama.cpp could not quantize to q8_0: simulated")

    monkeypatch.setattr(runner, "quantize_gguf", explode)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GreenlmError, match="simulated"):
        export_gguf(tiny_model_dir, out / "x.gguf", quant="q8_0")
    assert _no_leftovers(out) == []  # neither the target, its .partial, nor the f32 scratch file


@needs_llamacpp
def test_truncated_gguf_gives_one_clear_line(tmp_path, tiny_gguf):
    from greenlm.engines.llamacpp_engine import LlamaCppEngine
    from greenlm.llamacpp import tensor_type_report

    data = open(tiny_gguf, "rb").read()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(GreenlmError) as info:
        LlamaCppEngine(truncated, model_name="t")
    message = str(info.value)
    assert "not within the file bounds" in message and "\n" not in message
    with pytest.raises(GreenlmError, match="not a readable GGUF file"):
        tensor_type_report(truncated)


@needs_llamacpp
def test_cli_truncated_gguf_exits_2(tmp_path, tiny_gguf, capsys, monkeypatch):
    from greenlm.cli import main

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(open(tiny_gguf, "rb").read()[:4096])
    monkeypatch.setattr(
        sys, "argv", ["greenlm", "measure", "--engine", "llamacpp", "--model", str(truncated)]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: llama.cpp cannot load {truncated}")


# ---- without the llamacpp extra ----------------------------------------------------------------------------


@pytest.fixture
def without_llama_cpp(monkeypatch):
    """Make `import llama_cpp` fail as it does when the extra is not installed."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)


def test_engine_without_the_extra_says_how_to_install(without_llama_cpp, tiny_model_dir):
    from greenlm.engines import create_engine
    from greenlm.models import resolve_model

    with pytest.raises(GreenlmError) as info:
        create_engine("llamacpp", resolve_model(str(tiny_model_dir)))
    message = str(info.value)
    assert "llama-cpp-python" in message and "pip install 'greenlm[llamacpp]'" in message
    assert "\n" not in message


def test_cli_measure_without_the_extra_exits_2(without_llama_cpp, tiny_model_dir, capsys, monkeypatch):
    from greenlm.cli import main

    monkeypatch.setattr(
        sys, "argv", ["greenlm", "measure", "--engine", "llamacpp", "--model", str(tiny_model_dir)]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs the llama-cpp-python package" in lines[0]


def test_quantized_export_without_the_extra_fails_before_loading(without_llama_cpp, tmp_path, tiny_model_dir):
    with pytest.raises(GreenlmError, match="llama-cpp-python"):
        export_gguf(tiny_model_dir, tmp_path / "x.gguf", quant="q8_0")
    assert _no_leftovers(tmp_path) == []


def test_float_export_without_the_extra_still_works(without_llama_cpp, tmp_path, tiny_model_dir):
    result = export_gguf(tiny_model_dir, tmp_path / "x.gguf", quant="f16")
    assert result.tokenizer_check == "not checked: llama-cpp-python is not installed"
    assert (tmp_path / "x.gguf").is_file()


def test_engines_list_says_why_llamacpp_is_unusable(without_llama_cpp):
    from greenlm.engines import available_engines

    found = {e["engine"]: e for e in available_engines()}
    assert found["transformers"]["usable"] is True
    assert found["llamacpp"]["usable"] is False
    assert "pip install" in found["llamacpp"]["reason"]


# ---- as a user meets them on the command line: one line, exit 2, nothing written -------------------------


def _cli(monkeypatch, capsys, *args) -> tuple[int, list[str]]:
    """Run `greenlm ARGS` in-process; (exit code, stderr lines)."""
    from greenlm.cli import main

    monkeypatch.setattr(sys, "argv", ["greenlm", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def _refuse_to_load(monkeypatch) -> None:
    """Make loading the model an error: a test using this proves a check ran before the slow part."""
    import greenlm.export.runner as runner

    def load(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(runner, "load_for_export", load)


def test_unsupported_architecture_is_refused_before_loading(tmp_path, tiny_model_dir, monkeypatch):
    gpt2 = _gpt2_dir(tmp_path, tiny_model_dir)
    _refuse_to_load(monkeypatch)
    with pytest.raises(GreenlmError, match="cannot export architecture GPT2LMHeadModel"):
        export_gguf(gpt2, tmp_path / "g.gguf", quant="q8_0")
    assert not (tmp_path / "g.gguf").exists()


def test_gguf_of_another_architecture_is_refused(tmp_path, monkeypatch):
    import gguf

    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _refuse_to_load(monkeypatch)
    with pytest.raises(GreenlmError, match="cannot export architecture gpt2 to GGUF"):
        export_gguf(path, tmp_path / "out.gguf")
    assert _no_leftovers(tmp_path) == ["other.gguf"]


def test_cli_unknown_quant_type(tmp_path, tiny_model_dir, capsys, monkeypatch):
    code, err = _cli(
        monkeypatch,
        capsys,
        "export",
        "--model",
        str(tiny_model_dir),
        "--quant",
        "q3_zz",
        "--out",
        str(tmp_path / "x.gguf"),
    )
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: unknown quant type 'q3_zz': choose one of f32, f16, bf16, ")
    assert _no_leftovers(tmp_path) == []


def test_cli_existing_output_is_kept(tmp_path, tiny_model_dir, capsys, monkeypatch):
    target = tmp_path / "keep.gguf"
    target.write_bytes(b"precious")
    _refuse_to_load(monkeypatch)
    code, err = _cli(monkeypatch, capsys, "export", "--model", str(tiny_model_dir), "--out", str(target))
    assert code == 2 and len(err) == 1
    assert (
        err[0]
        == f"error: {target} already exists: choose another --out, or pass --force to replace it (nothing was written)"
    )
    assert target.read_bytes() == b"precious" and _no_leftovers(tmp_path) == ["keep.gguf"]


def test_output_under_a_file_is_refused_before_loading(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "afile").write_text("x")
    _refuse_to_load(monkeypatch)
    with pytest.raises(GreenlmError, match="is not a writable folder"):
        export_gguf(tiny_model_dir, tmp_path / "afile" / "x.gguf", quant="f16")


def test_calibration_text_flags(tmp_path, tiny_model_dir, monkeypatch):
    from greenlm.export import ExportConfig

    with pytest.raises(GreenlmError, match="--text is calibration text for --imatrix"):
        ExportConfig(out=str(tmp_path / "x.gguf"), quant="q8_0", text="notes.txt")
    _refuse_to_load(monkeypatch)
    with pytest.raises(GreenlmError, match="text file '.*missing.txt' not found"):
        export_gguf(
            tiny_model_dir,
            tmp_path / "x.gguf",
            quant="q4_k_m",
            imatrix=True,
            text=str(tmp_path / "missing.txt"),
        )
    assert _no_leftovers(tmp_path) == []


# ---- interrupted: the temporary files go, the command says so in one line --------------------------------


def test_interrupted_quantization_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch):
    import greenlm.export.runner as runner

    def interrupt(src, dst, *_args, **_kwargs):
        dst.write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "quantize_gguf", interrupt)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_gguf(tiny_model_dir, out / "x.gguf", quant="q8_0")
    assert _no_leftovers(out) == []


def test_cli_interrupted_export_says_so_in_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import greenlm.llamacpp.gguf_writer as writer

    def interrupt(model, tokenizer, out_path, **_kwargs):
        out_path.write_bytes(b"GGUF half a header")
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_float_gguf", interrupt)
    target = tmp_path / "x.gguf"
    code, err = _cli(monkeypatch, capsys, "export", "--model", str(tiny_model_dir), "--out", str(target))
    assert code == 130
    assert err[-1] == f"interrupted: {target} was not written"
    assert not any("Traceback" in line for line in err)
    assert _no_leftovers(tmp_path) == []


@needs_llamacpp
def test_ctrl_c_inside_llama_cpp_is_not_swallowed(tmp_path, tiny_model_dir, monkeypatch):
    """Python delivers a Ctrl-C pressed during a llama.cpp call inside our log callback, where ctypes would
    print and drop it; it must still stop the export once llama.cpp returns."""
    from greenlm.llamacpp.runtime import LogCapture

    original = LogCapture._add
    fired = []

    def add(self, level, text):
        if not fired and "llama_model_quantize" in text:
            fired.append(text)
            raise KeyboardInterrupt
        original(self, level, text)

    monkeypatch.setattr(LogCapture, "_add", add)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(tiny_model_dir, tmp_path / "x.gguf", quant="q8_0")
    assert fired and _no_leftovers(tmp_path) == []


@needs_llamacpp
def test_ctrl_c_during_decode_is_raised(tiny_gguf, monkeypatch):
    import greenlm.llamacpp.runtime as runtime
    from greenlm.engines.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(tiny_gguf, model_name="t", threads=1)
    try:
        monkeypatch.setattr(runtime, "_interrupted", True)  # as the log callback leaves it
        with pytest.raises(KeyboardInterrupt):
            engine.prefill([[1, 2, 3]])
        assert runtime._interrupted is False
        assert engine.prefill([[1, 2, 3]]).prompt_tokens == 3
    finally:
        engine.close()


# ---- truncated or damaged GGUF files, wherever a model goes in -------------------------------------------


@pytest.fixture
def truncated_gguf(tmp_path, tiny_gguf):
    data = open(tiny_gguf, "rb").read()
    path = tmp_path / "models" / "truncated.gguf"
    path.parent.mkdir()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_gguf_as_export_input(tmp_path, truncated_gguf):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GreenlmError, match="not a readable GGUF file") as info:
        export_gguf(truncated_gguf, out / "x.gguf", quant="q8_0")
    assert "\n" not in str(info.value)
    assert _no_leftovers(out) == []


@needs_llamacpp
def test_eval_of_a_truncated_gguf_fails_before_the_reference_pass(
    truncated_gguf, tiny_model_dir, capsys, monkeypatch
):
    import greenlm.evaluate.runner as runner

    def reference(*_args, **_kwargs):
        raise AssertionError("the reference ran before the damaged file was refused")

    monkeypatch.setattr(runner, "reference_stats", reference)
    code, err = _cli(
        monkeypatch,
        capsys,
        "eval",
        "--engine",
        "llamacpp",
        "--model",
        str(truncated_gguf),
        "--reference",
        str(tiny_model_dir),
    )
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {truncated_gguf} is not a readable GGUF file")


def test_eval_without_the_extra_fails_before_the_reference_pass(
    without_llama_cpp, tiny_gguf, tiny_model_dir, monkeypatch
):
    import greenlm.evaluate.runner as runner
    from greenlm.evaluate import EvalConfig, evaluate

    monkeypatch.setattr(runner, "reference_stats", lambda *a, **k: pytest.fail("the reference ran first"))
    with pytest.raises(GreenlmError, match="needs the llama-cpp-python package"):
        evaluate(EvalConfig(model=tiny_gguf, engine="llamacpp", reference=str(tiny_model_dir)))


def test_engines_table_shows_the_install_command(without_llama_cpp, capsys, monkeypatch):
    from greenlm.cli import main
    from greenlm.cli.common import out

    monkeypatch.setattr(sys, "argv", ["greenlm", "engines"])
    monkeypatch.setattr(out, "_width", 250)  # one line per row, so the command is not wrapped
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert "pip install 'greenlm[llamacpp]'" in capsys.readouterr().out  # not eaten as rich markup


@needs_llamacpp
def test_llamacpp_engine_on_a_directory_it_cannot_export(tmp_path, tiny_model_dir):
    from greenlm.engines import create_engine
    from greenlm.models import resolve_model

    spec = resolve_model(str(_gpt2_dir(tmp_path, tiny_model_dir)))
    with pytest.raises(
        GreenlmError, match="runs GGUF files and .*gpt2 is not one: cannot export architecture GPT2"
    ):
        create_engine("llamacpp", spec)
