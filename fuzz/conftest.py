"""`make fuzz`: the fixtures of the test suite (one Azurite per session)."""

from tests.conftest import azurite

__all__ = ["azurite"]
