"""A simulated Microsoft 365 tenant: a local HTTP server speaking the Graph v1.0 and Exchange admin
API calls we use."""

from shared.simulator.exchange import RULE_SIZE_LIMIT, rule_size
from shared.simulator.server import SimulatedTenant
from shared.simulator.state import Fault, SimUser

__all__ = ["RULE_SIZE_LIMIT", "Fault", "SimUser", "SimulatedTenant", "rule_size"]
