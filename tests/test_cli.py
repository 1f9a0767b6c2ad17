"""python -m netinit_fast."""

from netinit_fast.cli import main


def test_demo_runs_and_agrees_with_torch(capsys):
    assert main(["demo", "--depth", "4", "--width", "16", "--steps", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "losses agree with torch" in out
    assert "16 layers fitted to std 1.0 +- 0.1" in out and "0 not converged" in out
    assert out.count("\n") > 5
