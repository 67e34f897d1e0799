"""The package's one version source.

pyproject.toml reads it (setuptools dynamic version), the plugin's log lines show
it, and CHANGELOG.md's newest release heading must match it (ci/check_dist.py).
"""

__version__ = "0.1.0"
