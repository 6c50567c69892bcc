"""Metrics at their edges, added where mutation testing (bench/mutation.py) found changes to the
code that no test noticed: errors name the value at fault, JSON-ready summaries keep their keys."""

from __future__ import annotations

import pytest
from torch import nn

from robustprune.metrics import active_units, sparsity_summary, total_units, unit_sparsity, weight_sparsity
from robustprune.models import build_model
from robustprune.models.base import mask_slots
from robustprune.sparsity import install_bbd


def test_a_mask_outside_the_unit_mask_contract_is_named_with_its_slot_and_type() -> None:
    model = install_bbd(build_model("lenet5-caffe"))
    name, slot = mask_slots(model)[1]
    slot.mask = nn.Identity()  # no units / active() / n_active(): not a UnitMask
    for measure in (active_units, unit_sparsity):
        with pytest.raises(ValueError, match=rf"mask '{name}' \(Identity\) does not follow the UnitMask contract"):
            measure(model)


def test_sparsity_summary_is_the_four_measures_under_their_names() -> None:
    model = install_bbd(build_model("lenet5-caffe"))
    summary = sparsity_summary(model)
    assert summary == {"unit_sparsity": unit_sparsity(model), "weight_sparsity": weight_sparsity(model),
                       "active_units": active_units(model), "total_units": total_units(model)}
