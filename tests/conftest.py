"""Shared pytest configuration, and the framework adapters of the conformance suite."""

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: a fresh virtual environment and a pip install (minutes); run by `make test`, "
        'deselect with -m "not slow"',
    )


FRAMEWORKS = ("torch", "keras", "linen", "nnx")


_ADAPTERS = {}


@pytest.fixture(params=FRAMEWORKS)
def framework(request):
    """Each framework's adapter (``tests/adapters.py``), built once per session.

    Imported on first use, so a test file that does not ask for it imports no framework.
    """
    if request.param not in _ADAPTERS:
        import adapters

        _ADAPTERS[request.param] = adapters.ADAPTERS[request.param]()
    return _ADAPTERS[request.param]
