"""A ladder of variants read from an optimize search in the store."""

import pytest

from greenlm.errors import GreenlmError
from greenlm.optimize.config import EvalSettings, OptimizeConfig
from greenlm.optimize.search import optimize
from greenlm.serve.ladder import ladder_from_search
from greenlm.store import Store
from tests.optimize.fake_work import fake_final, fake_work


def test_ladder_from_the_latest_search_front(tmp_path, tiny_model_dir):
    space = tmp_path / "space.yaml"
    space.write_text("grids:\n  - engine: llamacpp\n    quant_types: [q8_0, q4_k_m, q4_0]\n")

    def work(candidate, front):  # the fake figures, with a file each variant can be served from
        return fake_work(candidate, front, model_path=str(tiny_model_dir))

    settings = EvalSettings(model=str(tiny_model_dir), workdir=str(tmp_path / "work"))
    with Store(tmp_path / "s.db") as store:
        result = optimize(
            OptimizeConfig(settings=settings, space=str(space)), store=store, work=work, final=fake_final
        )
        ladder = ladder_from_search(store, "latest")
        assert ladder_from_search(store, result.search_id).names == ladder.names
        with pytest.raises(GreenlmError, match="no search 'nope'"):
            ladder_from_search(store, "nope")
    # the front (q4_0, q4_k_m, the GGUF as given, q8_0 dominated by it), cheapest first; the float32
    # reference baseline is not a variant to serve
    assert [v.decode_j_per_token for v in ladder] == sorted(v.decode_j_per_token for v in ladder)
    assert "transformers" not in [v.engine for v in ladder]
    assert {v.kld for v in ladder} >= {0.2, 0.04}
    assert [v.name for v in ladder if not v.inside(0.05)] == ["q4_0"]
    assert all("candidate row" in v.source and "cpu-model estimated" in v.source for v in ladder)
    assert ladder.cheapest(0.05).kld == 0.04 and ladder.best_quality().kld == min(v.kld for v in ladder)
