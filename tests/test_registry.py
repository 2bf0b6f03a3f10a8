from __future__ import annotations

import pytest

from leakbench.api import Attack, Defense, Finding, Metric
from leakbench.errors import UsageError
from leakbench.registry import ATTACKS, DATASETS, DEFENSES, FEATURES, Registry


def test_builtins_come_from_entry_points():
    assert "ddim" in DEFENSES.names()
    assert "replication" in ATTACKS.names()
    assert {"digits", "medmnist", "npz"} <= set(DATASETS.names())
    assert "pixels" in FEATURES.names()
    assert DEFENSES.origin("ddim").startswith("entry point baselines.ddim")


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(UsageError) as exc:
        DEFENSES.get("dddim")
    msg = str(exc.value)
    assert "Did you mean 'ddim'?" in msg
    assert "Known:" in msg and "ddim" in msg


def test_duplicate_and_bad_names_are_errors():
    reg = Registry("widget", "leakbench.test-widgets")

    class A:
        name = "a"

    class B:
        name = "a"

    reg.add("a", A)
    reg.add("a", A)  # the same object twice is harmless
    with pytest.raises(UsageError, match="already registered"):
        reg.add("a", B)
    with pytest.raises(UsageError, match="lower-case"):
        reg.add("Bad Name!", B)


def test_base_class_is_checked():
    class NotADefense:
        name = "nope"

    with pytest.raises(UsageError, match="not a subclass of Defense"):
        DEFENSES.add("nope", NotADefense)
    assert "nope" not in DEFENSES


def test_decorator_registration_round_trip():
    @ATTACKS.register("throwaway-attack")
    class Throwaway(Attack):
        name = "throwaway-attack"

        def run(self, target, ctx):
            return Finding([Metric("x", 1.0)])

    try:
        assert ATTACKS.get("throwaway-attack") is Throwaway
    finally:
        ATTACKS.remove("throwaway-attack")
    assert "throwaway-attack" not in ATTACKS.names()
    assert issubclass(DEFENSES.get("ddim"), Defense)
