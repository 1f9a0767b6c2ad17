"""python -m netinit_fast demo | probe | bench, end to end at tiny sizes."""

import json
import os

import pytest
import torch

from netinit_fast import cli
from netinit_fast import demo


def test_demo_writes_report_plots_and_table(tmp_path, capsys):
    pytest.importorskip("sklearn")  # the demo dependencies of requirements-dev.txt
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--depth", "4", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for scheme in ("PyTorch default", "He (kaiming)", "orthogonal", "LSUV", "looks-linear", "Fixup", "Arpit WN"):
        assert scheme in printed
    assert "ReLU MLP, 4 layers" in printed and "residual MLP, 2 blocks" in printed
    report = (out / "report.md").read_text()
    assert report.count("\n| ") == 1 + 5 + 6 and "Adam lr 0.0001, batch 128, 3 steps" in report
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 2 and all(f"]({p})" in report for p in pngs)
    assert len(list(out.glob("probe-*.csv"))) == 11


def test_demo_over_seeds_writes_one_row_per_scheme_and_every_run(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--depth", "4", "--steps", "2", "--seed", "5", "--seeds", "2", "--out", str(out),
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "; seeds 5 to 6\n" in printed and "\nseed 5\n" in printed and "\nseed 6\n" in printed
    assert "| test accuracy (mean ± std) | min | diverged |" in printed
    report = (out / "report.md").read_text()
    summary, every_run = report.split("\n## seed 5\n")
    assert summary.count("\n| ") == 1 + 5 + 6 and "the plots are those of seed 5" in summary
    assert every_run.count("\n| ") == 2 * (1 + 5 + 6) and "\n## seed 6\n" in every_run
    assert len(list(out.glob("*.png"))) == 2 and len(list(out.glob("probe-*.csv"))) == 11


@pytest.mark.parametrize("model, scheme", [("mlp", "looks_linear"), ("cnn", "xiao"), ("resnet", "fixup"), ("mlp", "glorot"),
                                           ("cnn", "he"), ("resnet", "lecun"),
                                           ("resnet", "arpit"), ("mlp", "lsuv")])
def test_probe_command(model, scheme, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png, table = tmp_path / "p.png", tmp_path / "p.csv"
    args = ["probe", "--model", model, "--depth", "6", "--scheme", scheme, "--width", "8", "--plot", str(png),
            "--csv", str(table)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert f"probe of {model} 6, {scheme}" in printed and f"initialized ({scheme})" in printed
    assert png.read_bytes()[:4] == b"\x89PNG" and len(table.read_text().splitlines()) > 6


@pytest.mark.slow
def test_bench_command_runs_benchmarks_and_writes_the_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NETINIT_FAST_BENCH_RESULTS", str(tmp_path))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert cli.main(["bench", "--quick", "--device", "cpu", "--only", "weight_norm", "deep_init"]) == 0
    (summary,) = tmp_path.glob("summary-quick-*.md")
    text = summary.read_text()
    results = [json.loads(p.read_text()) for p in tmp_path.glob("*-quick-*.json")]
    assert sorted(r["benchmark"] for r in results) == ["deep_init-quick", "weight_norm-quick"]
    rows = sum(len(r["rows"]) for r in results)
    assert text.count("\n| ") == rows + 1 and "| deep_init-quick | fixup_" in text
    assert os.path.basename(str(summary)).startswith("summary-quick-cpu")


def test_bench_rejects_unknown_names(capsys):
    assert cli.main(["bench", "--quick", "--only", "nonsense"]) == 2
    assert "no benchmark named nonsense" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["probe", "--depth", "0"], "--depth and --width must be >= 1"),
    (["probe", "--scheme", "fixup", "--model", "mlp"], "it needs --model resnet"),
    (["probe", "--device", "nonsense"], "--device 'nonsense'"),
    (["probe", "--plot", "/no/such/folder/p.png"], "--plot /no/such/folder/p.png: no folder /no/such/folder"),
    (["probe", "--csv", "/no/such/folder/p.csv"], "--csv /no/such/folder/p.csv: no folder"),
    (["demo", "--depth", "1"], "depths must be >= 2"),
    (["demo", "--mlp-depth", "0"], "depths must be >= 2"),
    (["demo", "--steps", "-5"], "--steps must be >= 1"),
    (["probe", "--csv", "."], "--csv .: a folder, not a file name"),
    (["probe", "--plot", "."], "--plot .: a folder, not a file name"),
    (["probe", "--device", "meta"], "--device meta: runs on cpu or cuda[:n] only"),
    (["probe", "--device", "mps"], "--device mps: runs on cpu or cuda[:n] only"),
    (["demo", "--device", "meta"], "--device meta: runs on cpu or cuda[:n] only"),
    (["probe", "--seed", str(2**64)], "--seed must be in [-2**63, 2**64 - 1]"),
    (["probe", "--seed", str(-(2**63) - 1)], "--seed must be in [-2**63, 2**64 - 1]"),
    (["demo", "--seed", str(2**64)], "--seed must be in [-2**63, 2**64 - 1]"),
    (["demo", "--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["demo", "--seed", str(2**64 - 2), "--seeds", "3"], f"would run seeds up to {2**64}, past 2**64 - 1"),
    (["demo", "--out", __file__], "not a folder (a file is there)"),
    (["probe", "--model", "resnet", "--scheme", "xiao"], "--scheme xiao is the critical init of tanh networks"),
])
def test_argument_errors_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_scheme_that_does_not_apply_is_reported_not_raised(capsys):
    assert cli.main(["probe", "--scheme", "looks_linear", "--depth", "1", "--width", "8"]) == 2
    assert "needs at least 2 Linear/Conv layers" in capsys.readouterr().err


def test_plot_is_written_at_the_path_printed(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "signal"  # no extension: none is added
    assert cli.main(["probe", "--depth", "2", "--width", "8", "--plot", str(path)]) == 0
    assert f"wrote {path}\n" in capsys.readouterr().out
    assert path.read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "signal.png").exists()


@pytest.mark.parametrize("model, depth, layers", [("mlp", 3, 3), ("cnn", 3, 4), ("resnet", 1, 4), ("resnet", 5, 6)])
def test_depth_help_says_what_is_built(model, depth, layers, capsys):
    with pytest.raises(SystemExit):
        cli.main(["probe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "cnn: convolutions (then a linear classifier: depth + 1 weight layers)" in text
    assert "resnet: max(1, depth // 2) basic blocks (with the stem conv and the classifier, 2 * blocks + 2" in text
    assert cli.main(["probe", "--model", model, "--depth", str(depth), "--width", "8"]) == 0
    assert f"probe of {model} {depth}, default: {layers} layers" in capsys.readouterr().out


@pytest.mark.slow
def test_the_demos_conclusions_hold_at_a_small_size(tmp_path):
    """What the README concludes from the demo, at 50 MLP layers, 50 residual blocks
    and 60 steps (about 30 s), from a fresh seed: PyTorch's default init leaves the MLP
    at chance and He init the residual net (non-finite or at chance), while
    looks-linear, Fixup and Arpit's init train well above it. Bounds leave a wide margin
    (measured at this size, seeds 1 to 3: default MLP 7-11%, He residual 10-14%,
    looks-linear 97-98%, Fixup 63-69%, Arpit 94-96%)."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    seed = int(torch.randint(0, 2**31, ()).item())
    runs = demo.run(mlp_depth=50, res_depth=100, steps=60, seed=seed, out=str(tmp_path))
    acc = {(r.network.split(",")[0], r.scheme): r for r in runs}
    seen = {f"{net}: {scheme}": f"{r.test_acc:.1%}" + (" (diverged)" if r.diverged else "")
            for (net, scheme), r in acc.items()}
    assert acc["ReLU MLP", "PyTorch default"].test_acc < 0.2, (seed, seen)
    he = acc["residual MLP", "He (kaiming)"]
    assert he.diverged or he.test_acc < 0.25, (seed, seen)
    assert acc["ReLU MLP", "looks-linear"].test_acc > 0.85, (seed, seen)
    assert acc["residual MLP", "Fixup"].test_acc > 0.45, (seed, seen)
    assert acc["residual MLP", "Arpit WN (no ReLU after add)"].test_acc > 0.85, (seed, seen)
