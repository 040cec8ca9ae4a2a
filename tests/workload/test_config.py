import pytest

from greenlm.errors import GreenlmError
from greenlm.workload import MeasureConfig


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"repeats": -1}, "--repeats"),
        ({"num_prompts": 0}, "--num-prompts"),
        ({"max_new_tokens": 1}, "--max-new-tokens"),
        ({"threads": 0}, "--threads"),
    ],
)
def test_nonsense_values_rejected(kwargs, flag):
    with pytest.raises(GreenlmError, match=flag):
        MeasureConfig(**kwargs)


def test_energy_settings_nest_and_the_stored_config_stays_flat():
    from greenlm.energy.settings import EnergySettings

    config = MeasureConfig(energy=EnergySettings(meter="cpu-model", pue=1.2))
    row = config.to_dict()
    assert "energy" not in row and row["meter"] == "cpu-model" and row["pue"] == 1.2
    keys = list(row)
    assert keys[keys.index("dtype") + 1 : keys.index("speculative")] == list(EnergySettings().to_dict())
    # a config read back as a dict (JSON, Ray) gives its energy as a mapping
    assert MeasureConfig(energy={"meter": "cpu-model"}).energy == EnergySettings(meter="cpu-model")
