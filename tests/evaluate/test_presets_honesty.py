"""`standard` is AutoAttack-standard's suite at its budgets with no shortcut; `fast` carries its caveat."""
from __future__ import annotations

from fortify.attacks import ATTACKS
from fortify.evaluate.presets import PRESET_CAVEATS, PRESETS, preset_specs, resolve_kwargs
from fortify.pipeline.stages.robustness import RobustnessConfig, preset_caveat

#: AutoAttack-standard (Croce & Hein 2020, version="standard", Linf): attack -> semantic budget
AUTOATTACK_STANDARD = {"apgd": {"steps": 100}, "apgd-t": {"steps": 100, "n_target_classes": 9},
                       "fab": {"steps": 100, "n_target_classes": 9}, "square": {"queries": 5000}}


def test_standard_runs_every_autoattack_attack_at_its_budget_on_every_survivor() -> None:
    for norm in ("linf", "l2"):
        specs, _ = preset_specs("standard", norm)
        by_attack = {s.attack: s for s in specs}
        for attack, budget in AUTOATTACK_STANDARD.items():
            assert attack in by_attack or norm not in ATTACKS.get(attack).norms, (norm, attack)
            if attack not in by_attack:
                continue  # the attack does not support this norm (listed as skipped)
            spec = by_attack[attack]
            assert spec.when == "always", (norm, spec.label)  # no skipping on the absence of a sanity flag
            for key, value in budget.items():
                assert spec.kwargs[key] >= value, (norm, spec.label, key)
            resolved, notes = resolve_kwargs(spec.attack, spec.kwargs)
            assert not [n for n in notes if any(k in n for k in budget)], notes  # every budget key reaches the attack


def test_only_presets_weaker_than_autoattack_carry_a_caveat() -> None:
    assert set(PRESET_CAVEATS) == {"fast"} and set(PRESET_CAVEATS) <= set(PRESETS)
    assert "AutoAttack" in preset_caveat(RobustnessConfig(preset="fast"))
    assert preset_caveat(RobustnessConfig(preset="standard")) is None
    assert preset_caveat(RobustnessConfig(preset="thorough")) is None
