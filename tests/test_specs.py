from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from leakbench.errors import UsageError
from leakbench.specs import canonical, parse_spec, resolve_params, split_specs


@dataclass(frozen=True)
class P:
    alpha: float = 0.5
    scale: float = 10.0
    steps: int = 3
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    limit: int | None = None

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha={self.alpha} must be in (0, 1]")


def test_split_keeps_commas_inside_brackets():
    text = "ddim,cpsample[alpha=0.001,scale=1000], rejection"
    assert split_specs(text) == ["ddim", "cpsample[alpha=0.001,scale=1000]", "rejection"]


@pytest.mark.parametrize("bad", ["cpsample[alpha=1", "cpsample]", "a b", "x[alpha]"])
def test_malformed_specs(bad):
    with pytest.raises(UsageError):
        parse_spec(bad)


@pytest.mark.parametrize("bad", ["ddim,cpsample[alpha=1", "ddim]"])
def test_unbalanced_lists(bad):
    with pytest.raises(UsageError, match="name\\[key=value"):
        split_specs(bad)


def test_params_are_typed_and_validated():
    p = resolve_params(P, parse_spec("x[alpha=0.25,steps=7,flag=true,mode=b,limit=none]"), owner="x")
    assert p == P(alpha=0.25, steps=7, flag=True, mode="b", limit=None)
    assert resolve_params(P, parse_spec("x[limit=5]"), owner="x").limit == 5
    with pytest.raises(UsageError, match="no parameter 'beta'; valid parameters: alpha, flag"):
        resolve_params(P, parse_spec("x[beta=1]"), owner="x")
    with pytest.raises(UsageError, match="not a valid float"):
        resolve_params(P, parse_spec("x[alpha=big]"), owner="x")
    with pytest.raises(UsageError, match="not a valid int"):
        resolve_params(P, parse_spec("x[steps=2.5]"), owner="x")
    with pytest.raises(UsageError, match="choose one of a, b"):
        resolve_params(P, parse_spec("x[mode=c]"), owner="x")
    with pytest.raises(UsageError, match=r"alpha=2.0 must be in \(0, 1\]"):
        resolve_params(P, parse_spec("x[alpha=2]"), owner="x")
    with pytest.raises(UsageError, match="twice"):
        parse_spec("x[alpha=0.1,alpha=0.2]")
    with pytest.raises(UsageError, match="scale='nan' is not a number"):
        resolve_params(P, parse_spec("x[scale=nan]"), owner="x")
    big = 2**53 + 1  # exact: an int is not parsed through a float
    assert resolve_params(P, parse_spec(f"x[steps={big}]"), owner="x").steps == big
    assert resolve_params(P, parse_spec("x[steps=64.0]"), owner="x").steps == 64


def test_canonical_names_only_non_defaults_sorted():
    assert canonical("x", P()) == "x"
    assert canonical("x", P(scale=1000.0, alpha=0.001)) == "x[alpha=0.001,scale=1000]"
    # parsing the canonical form gives the same params back
    p = P(scale=1000.0, alpha=0.001)
    assert resolve_params(P, parse_spec(canonical("x", p)), owner="x") == p
