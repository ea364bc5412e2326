"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: a fresh virtual environment and a pip install (minutes); run by `make test`, "
        'deselect with -m "not slow"',
    )
