import subprocess

import pytest

from greenlm.errors import GreenlmError
from greenlm.optimize.config import EvalSettings, OptimizeConfig
from greenlm.optimize.search import optimize
from greenlm.report import build_report, write_report
from greenlm.store import Store
from tests.helpers import headless_browser
from tests.optimize.fake_work import fake_final, fake_work

SPACE = "grids:\n  - engine: llamacpp\n    quant_types: [q8_0, q4_k_m, q4_0]\n"


@pytest.fixture
def searched(tmp_path, tiny_model_dir):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    store = Store(tmp_path / "s.db")
    settings = EvalSettings(model=str(tiny_model_dir), workdir=str(tmp_path / "work"))
    result = optimize(
        OptimizeConfig(settings=settings, space=str(space)), store=store, work=fake_work, final=fake_final
    )
    yield store, result
    store.close()


def test_report_has_plots_table_and_provenance(searched):
    store, result = searched
    page = build_report(store)
    assert page.count("<svg") == 2 and "id='pareto-plot'" in page and "id='phase-plot'" in page
    assert "estimated by a model" in page and "builtin:pydoc-topics/evaluation" in page
    assert page.count("<tr class=") == len(result.rows)
    assert "class='chosen'" in page
    assert "<script" not in page and "<link" not in page and "src=" not in page, (
        "nothing fetched at view time"
    )


def test_report_errors(tmp_path):
    with Store(tmp_path / "empty.db") as store, pytest.raises(GreenlmError, match="no optimization results"):
        build_report(store)


def test_unknown_search_id(searched):
    store, _ = searched
    with pytest.raises(GreenlmError, match="no search 'nope'"):
        build_report(store, "nope")


def test_renders_in_headless_chromium(searched, tmp_path):
    browser = headless_browser()
    store, _ = searched
    page = write_report(store, tmp_path / "report.html")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert "pareto-plot" in dom.stdout and dom.stdout.count("<svg") == 2
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    image = Image.open(shot).convert("L")
    colours = image.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 20, "the page rendered more than a blank canvas"


def test_trained_candidates_show_training_energy_and_payback(tmp_path, tiny_model_dir):
    """A candidate row that carries training energy (a healed cut) gets its payback against the baseline."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)

    def trained_work(candidate, front):
        if candidate.quant_type == "q8_0":  # saves 0.5 - 0.2 J/token: repaid after 10,000 tokens
            return fake_work(candidate, front, training_energy_j=3000.0)
        return fake_work(candidate, front)

    with Store(tmp_path / "s.db") as store:
        settings = EvalSettings(model=str(tiny_model_dir), workdir=str(tmp_path / "work"))
        optimize(
            OptimizeConfig(settings=settings, space=str(space)),
            store=store,
            work=trained_work,
            final=fake_final,
        )
        page = build_report(store)
    assert "<th>payback tokens</th>" in page and "<td>10000</td>" in page and "Payback tokens:" in page
