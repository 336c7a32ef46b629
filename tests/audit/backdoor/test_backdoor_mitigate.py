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
        conv = dict(res.model.named_modules())[res.evidence["layer"]]
        if res.evidence["structural"]:  # the channels are gone: the layer is physically smaller
            assert conv.weight.shape[0] == res.evidence["channels"] - res.evidence["pruned"]  # type: ignore[union-attr]
        else:
            w = conv.weight  # type: ignore[union-attr]
            assert float(w[res.evidence["pruned_channels"]].detach().abs().sum()) == 0.0  # pruned channels stay pruned


def test_channel_removal_is_exact_or_refused() -> None:
    """Removing zeroed channels keeps the logits (conv -> ReLU -> linear); a BatchNorm after the zeroed
    channels maps zero to its shift, so removal would change the function and is refused."""
    import torch
    from torch import nn

    from fortify.audit.backdoor.fine_pruning import remove_channels, zero_channels

    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)
    for bn, structural in ((False, True), (True, False)):
        mid: list[nn.Module] = [nn.BatchNorm2d(6)] if bn else []
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), *mid, nn.ReLU(),
                            nn.Flatten(), nn.Linear(6 * 64, 3)).eval()
        if bn:
            with torch.no_grad():
                net[3].bias.fill_(0.3)  # type: ignore[operator]
        zero_channels(net[2], torch.tensor([1, 4]))  # type: ignore[arg-type]
        before = net(x)
        smaller, note = remove_channels(net, "2", torch.tensor([1, 4]), x)
        assert (smaller is not None) == structural, note
        if smaller is not None:
            assert smaller[2].out_channels == 4 and smaller[-1].in_features == 4 * 64
            torch.testing.assert_close(smaller(x), before, rtol=1e-5, atol=1e-6)
        assert torch.equal(net(x), before)  # the input model is untouched
