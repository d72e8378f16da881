"""Root conftest: labwarden's fixtures come from its pytest plugin (`fixtures/`),
registered by the `pytest11` entry point when the package is installed."""
