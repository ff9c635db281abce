"""`make demo` runs the whole protocol on anvil, with the services as processes, and exits 0."""

from trainproof.demo import run_demo


def test_demo_catches_the_cheat_and_stays_solvent(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # works from any folder, not only the checkout (issue 16)
    assert run_demo() == 0
    out = capsys.readouterr().out
    assert "trainer cheated" in out  # the cheating run's verdict
    assert "finalized (trainer" in out and "rejected (trainer" in out
    assert "yes (balance = liabilities)" in out
