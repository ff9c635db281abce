"""Amounts as operators read them: wei shown in ETH."""

from __future__ import annotations

from decimal import Decimal

WEI_PER_ETH = 10**18


def eth(wei: int, places: int = 6) -> str:
    """``wei`` in ETH, e.g. ``eth(10**17) == "0.1 ETH"``; tiny non-zero amounts keep their
    significant digits (``eth(21_000) == "0.000000000000021 ETH"``)."""
    value = Decimal(int(wei)) / WEI_PER_ETH
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    if text in ("0", "-0") and wei:
        text = format(value.normalize(), "f")
    return f"{text} ETH"
