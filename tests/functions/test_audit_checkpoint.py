"""The audit checkpoint timer as the host fires it, against Azurite's table and blob services:
the heads land in the write-once container (created on first use locally) and verification
checks the trail against them."""

from __future__ import annotations

import uuid

import pytest

from drill.azurite import Azurite
from drill.host import LocalHost
from shared.models import Actor, AuditEntry, AuditEvent
from shared.simulator import SimulatedTenant
from tests.conftest import installed, settings_for

pytestmark = pytest.mark.integration


async def test_the_timer_anchors_every_chain_head(sim: SimulatedTenant, azurite: Azurite) -> None:
    container = f"anchors-{uuid.uuid4().hex[:12]}"
    settings = settings_for(sim, azurite, RESPONDER_AUDIT_ANCHOR_CONTAINER=container)
    async with installed(settings) as services:
        assert services.anchor is not None
        entry = AuditEntry(event=AuditEvent.ALERT_RAISED, actor=Actor(), reason="r")
        await services.chain.append(entry)
        await services.chain.append(entry)
        await LocalHost().fire_timer("checkpoint_audit")

        [point] = await services.anchor.checkpoints()
        assert point.count == 2
        report = await services.chain.verify()
        assert report.ok and report.checkpoints_checked == 1
        assert report.checkpoint is not None and report.checkpoint.matches
