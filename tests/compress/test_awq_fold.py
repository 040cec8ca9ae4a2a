"""Folded AWQ: moving a per-input-channel scale into the norm or linear before leaves every family's function
unchanged, and the folded codes need no run-time scale."""

from __future__ import annotations

import pytest
import torch

from greenlm.compress.awq_fold import fold_groups, fold_scale, norm_offset
from greenlm.compress.quant_awq import AWQ
from greenlm.errors import GreenlmError
from tests.helpers import FAMILY_NAMES, build_tiny_family, hf_logits, sample_ids


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_folding_any_scale_keeps_the_function(family, tmp_path):
    from greenlm.models import load_model, resolve_model

    loaded = load_model(resolve_model(str(build_tiny_family(tmp_path / "m", family))))
    ids = sample_ids(loaded.tokenizer)
    before = hf_logits(loaded.model, [ids])
    gen = torch.Generator().manual_seed(0)
    groups = 0
    for layer in loaded.model.model.layers:
        for group in fold_groups(layer):
            width = layer.get_submodule(group.members[0]).in_features
            fold_scale(layer, group, torch.rand(width, generator=gen) * 1.5 + 0.25, norm_offset(loaded.model))
            groups += 1
    after = hf_logits(loaded.model, [ids])
    assert groups >= 3 * len(loaded.model.model.layers)
    assert float((after - before).abs().max()) < 1e-4


def test_fold_needs_sequential():
    with pytest.raises(GreenlmError, match="fold: true quantizes layer by layer"):
        AWQ(fold=True, sequential=False)
