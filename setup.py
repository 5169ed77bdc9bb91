"""Everything but the bundle templates is in setup.cfg. The templates ship as the package data
``monai_lung/bundles`` mapped onto the repository's ``bundles/`` (one source, no second copy; see
monai_lung/templates.py): a mapping that setup.cfg's ``packages = find:`` cannot express."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["monai_lung", "monai_lung.*"]), "monai_lung.bundles"],
    package_dir={"monai_lung.bundles": "bundles"},
    package_data={"monai_lung.bundles": ["*/LICENSE", "*/configs/*.json", "*/configs/*.conf", "*/docs/*.md", "*/models/.gitkeep"],
                  "monai_lung.clinical": ["*.json"]},
)
