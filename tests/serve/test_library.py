"""The Server object without HTTP: the transformers engine's padded batches, and a saved model directory
starting on the engine and threads it was chosen with."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from greenlm.energy.settings import EnergySettings
from greenlm.models.run import OPTIMIZE_FILE
from greenlm.serve import ServeConfig, Server
from greenlm.serve.preflight import preflight

CPU_MODEL = EnergySettings(meter="cpu-model")


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the transformers engine sets torch's process-wide thread count


def run_all(server: Server, prompts: list[str], max_tokens: int, together: bool) -> list[tuple[int, ...]]:
    params = server.sampling(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    if not together:
        return [server.submit(server.prompt_from_text(p), params).wait(60).token_ids for p in prompts]
    results: dict[int, tuple[int, ...]] = {}

    def one(i: int) -> None:
        results[i] = server.submit(server.prompt_from_text(prompts[i]), params).wait(60).token_ids

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return [results[i] for i in range(len(prompts))]


def test_transformers_engine_batches_with_the_same_greedy_output(chat_model_dir, torch_threads):
    server = Server(
        ServeConfig(
            model=str(chat_model_dir), engine="transformers", max_batch=4, step_tokens=16, energy=CPU_MODEL
        )
    )
    try:
        # prompts of different lengths, longer than one step's budget: chunked prefill beside decode tokens
        prompts = ["The with statement " * 3, "Lists", "def f(x): return x " * 2, "A class definition is"]
        alone = run_all(server, prompts, 12, together=False)
        together = run_all(server, prompts, 12, together=True)
        assert len(set(alone)) > 1
        # padded batches change float summation order a little; the tiny model's greedy path is stable to it
        assert together == alone
        chat = server.prompt_from_messages([{"role": "user", "content": "Hi"}])
        result = server.submit(
            chat, server.sampling(prompt_tokens=len(chat), max_tokens=4, temperature=0)
        ).wait(60)
        assert result.energy_j > 0 and result.meter == "cpu-model"
        snap = server.energy()
        assert abs(snap["accounting_gap_j"]) < 1e-9 and snap["invariant_gap_rel"] < 1e-3
        assert server.describe()["engine"] == "transformers"
    finally:
        server.close()


def test_a_saved_model_starts_on_its_chosen_engine_and_threads(chat_model_dir, tmp_path, torch_threads):
    saved = tmp_path / "best"
    shutil.copytree(chat_model_dir, saved)
    # what `greenlm optimize --out` writes beside a winner (models/run.py), written by hand
    run = {"engine": "transformers", "threads": 1, "device": "cpu", "speculative": None}
    (saved / OPTIMIZE_FILE).write_text(json.dumps({"label": "hand-written", "run": run}))
    notes: list[str] = []
    server = Server(ServeConfig(model=str(saved), max_batch=2, energy=CPU_MODEL), announce=notes.append)
    try:
        record = server.describe()
        assert (record["engine"], record["threads"], record["device"]) == ("transformers", 1, "cpu")
        assert record["run_settings"] == run
        assert any("as greenlm optimize chose it" in n for n in notes)
    finally:
        server.close()
    # a flag wins (and threads chosen for another engine do not carry over); no saved settings: llama.cpp
    flagged = preflight(ServeConfig(model=str(saved), engine="llamacpp", energy=CPU_MODEL)).config
    assert (flagged.engine, flagged.threads) == ("llamacpp", None)
    assert preflight(ServeConfig(model=str(chat_model_dir), energy=CPU_MODEL)).config.engine == "llamacpp"
