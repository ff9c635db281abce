"""The dashboard in headless Chromium (issue 16): amounts in ETH with the exact wei on hover,
times with their zone, and each job's reward shown."""

from __future__ import annotations

import re

from test_api_dashboard import chromium, pytestmark, server

__all__ = ["pytestmark", "server"]


def test_job_list_shows_reward_and_stake_in_eth(server) -> None:
    dom = chromium("--dump-dom", url=server + "/dashboard/?live=0")
    assert "<th>reward</th>" in dom, dom[-2000:]
    cells = re.findall(r'<td class="reward"><span class="eth" data-wei="(\d+)" '
                       r'title="(\d+) wei">([0-9.]+) ETH</span></td>', dom)  # fmt: skip
    assert len(cells) == 12, dom[-3000:]
    for wei, hover, shown in cells:
        assert wei == hover and int(wei) == round(float(shown) * 10**18)
    assert " wei<" not in dom  # no bare wei amounts left


def test_job_view_times_carry_their_zone(server) -> None:
    dom = chromium("--dump-dom", url=server + "/dashboard/?live=0#/jobs/4")
    assert 'id="reward"' in dom and " ETH</span>" in dom, dom[-2000:]
    times = re.findall(r'<time datetime="([^"]+)"[^>]*>([^<]+)</time>', dom)
    assert times, dom[-2000:]
    for iso, shown in times:
        assert shown.endswith(" UTC") and iso.endswith("Z")
        assert shown.removesuffix(" UTC") == iso.replace("T", " ")[:19]
