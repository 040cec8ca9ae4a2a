"""Sampling settings and the streamed text: greedy, seeded sampling, top-p, UTF-8 across tokens, stop strings."""

import numpy as np
import pytest

from greenlm.errors import GreenlmError
from greenlm.serve.sampling import SamplingParams, sample
from greenlm.serve.text import TextStream


def test_greedy_takes_the_argmax():
    logits = np.array([0.1, 3.0, 2.9], dtype=np.float32)
    params = SamplingParams(max_tokens=4, temperature=0)
    assert sample(logits, params, params.generator()) == 1


def test_a_seed_makes_sampling_repeatable():
    logits = np.linspace(0, 1, 100, dtype=np.float32)
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=7)
    first = [sample(logits, params, rng) for rng in [params.generator()] for _ in range(20)]
    again = [sample(logits, params, rng) for rng in [params.generator()] for _ in range(20)]
    assert first == again and len(set(first)) > 1


def test_top_p_keeps_the_nucleus():
    logits = np.log(np.array([0.6, 0.3, 0.05, 0.05], dtype=np.float64))
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.8, seed=0)
    rng = params.generator()
    assert {sample(logits, params, rng) for _ in range(200)} == {0, 1}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"max_tokens": 4, "temperature": -1},
        {"max_tokens": 4, "temperature": float("nan")},
        {"max_tokens": 4, "top_p": 0},
        {"max_tokens": 4, "stop": ("a", "b", "c", "d", "e")},
        {"max_tokens": 4, "stop": ("",)},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(GreenlmError):
        SamplingParams(**kwargs)


PIECES = {0: b"Hel", 1: b"lo", 2: b" w", 3: b"\xc3", 4: b"\xa9", 5: b"!", 6: b" STO", 7: b"P x"}


def detok(ids):
    return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


def run(stream: TextStream):
    out = []
    for i in range(8):
        out.append(stream.add(i))
        if stream.stopped:
            break
    return out + [stream.finish()]


def test_characters_split_across_tokens_come_out_whole():
    out = run(TextStream(detok))
    assert "".join(out) == "Hello wé! STOP x"
    assert all("\ufffd" not in piece for piece in out)


def test_a_stop_string_across_tokens_ends_the_text_before_it():
    stream = TextStream(detok, ("STOP",))
    out = run(stream)
    assert stream.stopped and "".join(out) == "Hello wé! "
    assert not any("ST" in piece for piece in out)  # the partial match was held back, never sent


def test_text_held_for_a_stop_that_never_comes_is_released_at_the_end():
    stream = TextStream(detok, ("xyz",))
    assert "".join(run(stream)) == "Hello wé! STOP x" and not stream.stopped
