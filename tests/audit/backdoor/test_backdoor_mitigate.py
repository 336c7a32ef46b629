"""Mitigations lower the planted model's ASR, keep clean accuracy, and return a NEW model."""
from __future__ import annotations

import pytest

from conftest import Planted
from fortify.audit.backdoor import BACKDOOR_MITIGATIONS
from fortify.models.state import fingerprint


@pytest.mark.parametrize("name,opts", [("fine-pruning", {"epochs": 3}), ("nc-unlearning", {"steps": 100, "epochs": 3})])
def test_mitigation_lowers_asr_and_leaves_the_input_model_untouched(planted: Planted, name: str,
                                                                     opts: dict[str, int]) -> None:
    before = fingerprint(planted.model)
    mit = BACKDOOR_MITIGATIONS.create(name, **opts)
    res = mit(planted.model, planted.x_test[500:1000], planted.y_test[500:1000], poison=planted.poison,
              x_test=planted.x_test[:500], y_test=planted.y_test[:500])
    assert fingerprint(planted.model) == before
    assert res.model is not planted.model
    assert res.before is not None and res.after is not None
    assert res.after.asr < res.before.asr - 0.05
    assert res.after.clean_accuracy > res.before.clean_accuracy - 0.05
    if name == "nc-unlearning":
        assert res.evidence["target"] == 3 and res.after.asr < 0.5
    else:
        assert 0 < res.evidence["pruned"] < res.evidence["channels"]
        w = dict(res.model.named_modules())[res.evidence["layer"]].weight  # type: ignore[union-attr]
        assert float(w[res.evidence["pruned_channels"]].detach().abs().sum()) == 0.0  # pruned channels stay pruned
