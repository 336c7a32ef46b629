"""The attack registry. Each attack module registers its class with ``@ATTACKS.register(name)``."""
from __future__ import annotations

from fortify.registry import Registry

ATTACKS: Registry = Registry("attack")
