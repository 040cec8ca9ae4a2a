import pytest

from greenlm.errors import GreenlmError
from greenlm.models import load_model, resolve_model


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_builtin_resolves_to_packaged_gguf():
    spec = resolve_model(None)
    assert spec.kind == "builtin" and spec.name == "smollm2-135m"
    assert spec.path.suffix == ".gguf" and spec.path.is_file()


def test_hf_dir_resolves_and_loads(tiny_model_dir):
    spec = resolve_model(str(tiny_model_dir))
    assert spec.kind == "hf-dir"
    loaded = load_model(spec)
    assert loaded.load_source == "hf-dir" and loaded.load_s > 0
    assert loaded.model.config.num_hidden_layers == 2


def test_fingerprint_follows_content(tiny_model_dir, tmp_path):
    import shutil

    a = resolve_model(str(tiny_model_dir)).fingerprint()
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert resolve_model(str(copy)).fingerprint() != a


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "nope", "not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no config.json"),
        (lambda p: _write(p / "bad.gguf", b"NOTGGUF" * 10), "not a GGUF file"),
        (lambda p: _write(p / "model.bin2", b"x"), "unsupported model file"),
    ],
)
def test_bad_model_paths_give_one_clear_line(tmp_path, setup, message):
    with pytest.raises(GreenlmError, match=message) as info:
        resolve_model(str(setup(tmp_path)))
    assert "\n" not in str(info.value)


def test_config_without_weights(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(GreenlmError, match="no weights"):
        resolve_model(str(tmp_path))


def test_truncated_gguf_is_a_clear_error(tmp_path, shared_cache_dir):
    src = resolve_model(None).path
    bad = tmp_path / "truncated.gguf"
    with src.open("rb") as f:
        bad.write_bytes(f.read(200_000))  # valid magic, cut mid-metadata/tensors
    spec = resolve_model(str(bad))
    with pytest.raises(GreenlmError, match="cannot load GGUF"):
        load_model(spec)
    assert not list(shared_cache_dir.glob("models/truncated-*")), "nothing half-written to the cache"


def test_directory_holding_one_gguf_resolves_to_it(tmp_path):
    """`greenlm optimize --out` saves a llama.cpp winner as a directory with its one .gguf file."""
    (tmp_path / "greenlm-optimize.json").write_text("{}")
    gguf = _write(tmp_path / "chosen-q8_0.gguf", b"GGUF" + b"\0" * 64)
    spec = resolve_model(str(tmp_path))
    assert spec.kind == "gguf" and spec.path == gguf.resolve()
    _write(tmp_path / "second.gguf", b"GGUF" + b"\0" * 64)
    with pytest.raises(GreenlmError, match="no config.json"):
        resolve_model(str(tmp_path))  # two files: ambiguous, the usual message
