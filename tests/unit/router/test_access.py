"""The registry link's periodic work (routes refresh, giving unused allowance back): a registry away is said once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from vllm_fleet.router.access import RegistryLink


def test_a_failing_periodic_task_is_logged_once_until_it_works_again(caplog: pytest.LogCaptureFixture) -> None:
    outcomes = ["down", "down", "down", "up", "up", "down", "up"]

    async def main() -> None:
        done = asyncio.Event()

        async def work() -> None:
            outcome = outcomes.pop(0)
            if not outcomes:
                done.set()
            if outcome == "down":
                raise OSError("registry unreachable")

        task = asyncio.create_task(RegistryLink._every(0.001, work, "giving unused key allowance back"))
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="vllm_fleet.router"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == [
        "giving unused key allowance back failed (said once until it works again): registry unreachable",
        "giving unused key allowance back works again",
        "giving unused key allowance back failed (said once until it works again): registry unreachable",
        "giving unused key allowance back works again",
    ]
