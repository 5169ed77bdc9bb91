"""The package's lazy subpackages (bundle configs reach them as `monai_lung.<name>` after `import monai_lung`)."""

from __future__ import annotations

import importlib

import pytest

import monai_lung


@pytest.mark.parametrize("name", monai_lung._SUBPACKAGES)
def test_every_lazy_subpackage_imports(name):
    assert getattr(monai_lung, name) is importlib.import_module(f"monai_lung.{name}")


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="networks"):
        monai_lung.networks
