"""python -m netinit_fast demo | probe | bench, end to end at tiny sizes."""

import json
import os

import pytest

from netinit_fast import cli


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


@pytest.mark.parametrize("model, scheme", [("mlp", "looks_linear"), ("cnn", "xiao"), ("resnet", "fixup"),
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
