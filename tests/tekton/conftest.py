from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # schema_check, rules and harness are test code, not a package

import tekton_rules as rules  # noqa: E402

ROOT = HERE.parents[1]
TEKTON = ROOT / "tekton"


@pytest.fixture(scope="session")
def pristine() -> rules.Manifests:
    return rules.load(TEKTON)


@pytest.fixture
def manifests(pristine: rules.Manifests) -> rules.Manifests:
    """A private copy of every manifest, safe to plant mistakes in."""
    return rules.Manifests(copy.deepcopy(pristine.docs))
