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
        ({"watts_per_core": -3.0}, "--watts-per-core"),
    ],
)
def test_nonsense_values_rejected(kwargs, flag):
    with pytest.raises(GreenlmError, match=flag):
        MeasureConfig(**kwargs)
