"""The protocol kernel: every registered class keeps its base's template ``__call__``."""
from __future__ import annotations

import pytest

import fortify.attacks  # noqa: F401  (registries are filled by discovery)
import fortify.certify  # noqa: F401
import fortify.compress  # noqa: F401
import fortify.train  # noqa: F401
from fortify.attacks.base import Attack
from fortify.certify.base import Certifier
from fortify.compress.base import Transform
from fortify.protocol import TemplateCall, is_template, template
from fortify.registry import Registry


def _protocol_classes() -> list[tuple[str, str, type]]:
    out = []
    for reg in Registry.instances():
        for name, obj in reg.items():
            if isinstance(obj, type) and issubclass(obj, TemplateCall):
                out.append((reg.kind, name, obj))
    return out


CASES = _protocol_classes()


def test_the_protocol_registries_are_enumerated() -> None:
    kinds = {k for k, _, _ in CASES}
    assert {"attack", "certifier", "transform"} <= kinds, kinds


@pytest.mark.parametrize("kind, name, cls", CASES, ids=[f"{k}:{n}" for k, n, _ in CASES])
def test_registered_class_keeps_the_template_call(kind: str, name: str, cls: type) -> None:
    assert is_template(cls.__call__), f"{kind} {name!r}: __call__ is not its base's template method"
    assert any("_run" in c.__dict__ for c in cls.__mro__ if c is not object)


@pytest.mark.parametrize("base", [Attack, Certifier, Transform])
def test_overriding_the_template_is_refused_at_class_creation(base: type) -> None:
    with pytest.raises(TypeError, match="overrides __call__"):
        type("Sneaky", (base,), {"__call__": lambda self, *a, **k: None})


def test_a_new_protocol_base_marks_its_template() -> None:
    class Base(TemplateCall):
        @template
        def __call__(self) -> int:
            return self._run()

        def _run(self) -> int:
            return 1

    class Good(Base):
        def _run(self) -> int:
            return 2

    assert Good()() == 2
    with pytest.raises(TypeError, match="template method of Base"):
        type("Bad", (Base,), {"__call__": lambda self: 3})


def test_the_registered_name_is_the_only_name() -> None:
    from fortify.errors import ConfigError

    reg: Registry[type] = Registry("widget-test")

    class Base:
        name = ""

    @reg.register("alpha")
    class Alpha(Base):
        pass

    assert Alpha.name == "alpha" and Base.name == ""
    with pytest.raises(ConfigError, match="declares name='beta'"):
        reg.register("gamma", type("Beta", (Base,), {"name": "beta"}))
    for kind, name, cls in CASES:
        assert cls.name == name, f"{kind} {name!r} carries name {cls.name!r}"
