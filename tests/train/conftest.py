"""Tiny teacher/student pairs for the training tests: a 2-layer random Llama and a 1-layer cut of it."""

from __future__ import annotations

import pytest

from greenlm.compress.config import CompressConfig
from greenlm.compress.pipeline import compress

# Small enough that a training step of the tiny model takes milliseconds.
FAST = dict(seq_len=32, batch_size=2, precision="fp32", lr=1e-3, teacher_topk=0)


@pytest.fixture(scope="session")
def student_dir(tiny_model_dir, tmp_path_factory):
    """A greenlm variant: the tiny model with its second decoder layer removed."""
    out = tmp_path_factory.mktemp("students") / "drop1"
    compress(
        CompressConfig(
            recipe=[{"method": "drop_layers", "layers": [1]}],
            out=str(out),
            model=str(tiny_model_dir),
            evaluate=False,
        )
    )
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy shared machine a second thread waiting at every
    operation's barrier costs more than it gives."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_text(tmp_path_factory):
    """A few thousand tokens of the built-in docs as a .txt: a teacher pass over all of it is quick."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text("\n\n".join(topics[k] for k in sorted(topics)[:12]), encoding="utf-8")
    return path
