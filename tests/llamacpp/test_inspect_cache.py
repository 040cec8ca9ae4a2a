"""A GGUF's metadata is parsed once per version of the file: a rewritten file is read again."""

import os

from greenlm.llamacpp import inspect


def test_summary_is_cached_per_version_of_the_file(tiny_gguf, tmp_path, monkeypatch):
    copy = tmp_path / "m.gguf"
    copy.write_bytes(open(tiny_gguf, "rb").read())
    reads = []
    real = inspect._reader
    monkeypatch.setattr(inspect, "_reader", lambda p: reads.append(p) or real(p))
    inspect._summary.cache_clear()
    counts = inspect.tensor_type_counts(copy)
    inspect.file_quant_type(copy)
    assert len(reads) == 1  # both answers from one parse
    some_type = next(iter(counts))
    counts[some_type] = -1  # callers get a copy: the cached answer stays as read
    assert inspect.tensor_type_counts(copy)[some_type] > 0
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file "changed"
    inspect.tensor_type_counts(copy)
    assert len(reads) == 2
