"""The package's version, from its installed metadata only: pyproject.toml is its one source."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """`vv-edge`'s version as installed; "0+unknown" when run from a tree that was never installed."""
    try:
        return version("vv-edge")
    except PackageNotFoundError:
        return "0+unknown"


VERSION = package_version()
