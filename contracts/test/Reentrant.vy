# pragma version ~=0.4.3
"""
@title Re-entrancy attacker for TrainProof.withdraw (tests only)
@notice Acts on TrainProof through `forward` (any call, with value) to earn a credit, then
        `attack` withdraws it. Every payment it receives runs `__default__`, which tries to
        re-enter `withdraw` (up to `max_attempts` times) and records whether that worked.
        With `propagate` set, a failed re-entry re-raises, which makes the outer payment,
        and so the whole withdraw, revert.
"""

target: public(address)
propagate: public(bool)
max_attempts: public(uint256)
attempts: public(uint256)
reentered: public(uint256)  # re-entries that succeeded
received: public(uint256)  # wei received through __default__
payments: public(uint256)  # payments received through __default__


@deploy
def __init__(target: address):
    self.target = target
    self.max_attempts = 1


@external
@payable
def forward(data: Bytes[4096]) -> Bytes[256]:
    """Call the target with `data` and `msg.value`, as this contract."""
    return raw_call(self.target, data, max_outsize=256, value=msg.value)


@external
def set_mode(propagate: bool, max_attempts: uint256):
    self.propagate = propagate
    self.max_attempts = max_attempts


@external
def attack():
    """Withdraw this contract's credit (the re-entry happens while it is paid)."""
    raw_call(self.target, method_id("withdraw()"))


@external
@payable
def __default__():
    self.received += msg.value
    self.payments += 1
    if self.attempts < self.max_attempts:
        self.attempts += 1
        ok: bool = raw_call(self.target, method_id("withdraw()"), revert_on_failure=False)
        if ok:
            self.reentered += 1
        elif self.propagate:
            raise "re-entry failed"
