"""The examples in the public entry points' docstrings run, and show what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["wsi_seg.stages.tiling", "wsi_seg.stages.vectorize.driver", "wsi_seg.stages.backends",
           "wsi_seg.core.params", "wsi_seg.core.storage", "wsi_seg.core.errors",
           "wsi_seg.stages.object_store"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} lost its examples"
    assert result.failed == 0
