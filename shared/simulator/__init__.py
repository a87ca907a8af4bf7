"""A simulated Microsoft 365 tenant: a local HTTP server speaking the Graph v1.0 calls we use."""

from shared.simulator.server import SimulatedTenant
from shared.simulator.state import Fault, SimUser

__all__ = ["Fault", "SimUser", "SimulatedTenant"]
