"""Attacks: white-box, score-based and decision-based, behind one protocol (see ``base.py``).

``fortify.attacks.ATTACKS`` maps names to attack classes; each class is constructed with its
hyper-parameters and then called as ``attack(model, x, y, threat)``. Every module of this package
is imported here by :func:`fortify.registry.discover`, so an attack is available everywhere (CLI, presets, contract tests) as soon as
its file registers it; the registered classes are re-exported by class name
(``fortify.attacks.PGD``).
"""
from __future__ import annotations

from fortify.attacks.base import Attack, AttackResult, Oracle
from fortify.attacks.registry import ATTACKS
from fortify.registry import discover

discover(__name__)
for _name, _cls in ATTACKS.items():
    globals()[_cls.__name__] = _cls


def create(name: str, **kwargs: object) -> Attack:
    """Instantiate the attack registered as ``name`` with its hyper-parameters (ConfigError naming the
    allowed ones for an unknown keyword)."""
    return ATTACKS.create(name, **kwargs)


__all__ = ["ATTACKS", "Attack", "AttackResult", "Oracle", "create"] + [c.__name__ for _, c in ATTACKS.items()]
