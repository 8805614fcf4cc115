"""The wheel carries the top-level ``properties/`` as ``recbole_llm/properties`` (see recbole_llm.config).

Users read and edit ``properties/`` at the top of the checkout; an installed package needs the same
defaults beside its code, so the folder is mapped into the package instead of being copied.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["recbole_llm*"]) + ["recbole_llm.properties"],
    package_dir={"recbole_llm.properties": "properties"},
    package_data={"recbole_llm.properties": ["*.yaml", "**/*.yaml", "**/*.hyper"]},
)
