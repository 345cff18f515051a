"""
Packaging lives in pyproject.toml; this file adds the one thing it cannot say: the
twistd plugin module, installed into Twisted's C{twisted.plugins} namespace (which
has no C{__init__.py} of ours) so that C{twistd --help} lists C{streamd}.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["streamd", "streamd.*"]) + ["twisted.plugins"],
    package_dir={"": "."},
    package_data={"twisted.plugins": ["streamd_plugin.py"],
                  # PEP 561: streamd ships its annotations, for the mypy of a plugin or a
                  # client's user.
                  "streamd": ["py.typed"],
                  # The live page (GET / in a browser), one file with inline JS and CSS.
                  "streamd.web": ["static/*.html"]},
)
