"""`make demo` runs the whole protocol on anvil and exits 0."""

from trainproof.demo import run_demo


def test_demo_catches_the_cheat_and_stays_solvent(capsys) -> None:
    assert run_demo() == 0
    out = capsys.readouterr().out
    assert "every checkpoint matches" in out  # the honest run
    assert "the trainer cheated" in out  # the cheating run's verdict
    assert "rejected" in out and "finalized" in out
    assert "yes (balance = liabilities)" in out
