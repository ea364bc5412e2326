"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: minutes, not seconds (fresh virtual environments); run by `make test`, "
        'deselect with -m "not slow"',
    )
