"""The command-line entry point and the layer demo."""

from __future__ import annotations

import pytest

from lambdanet.cli import main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "models"):
        assert command in out


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_demo_runs_and_reports_exact_algorithms(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from lambdanet.cli import demo

    monkeypatch.setattr(demo, "SHAPES", [((2, 16, 7, 7), 5), ((1, 8, 6, 6), None)])
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("(")]
    assert len(rows) == 2
    for row in rows:
        assert float(row.split()[-3]) < 1e-5  # max relative difference between algorithms


def test_readme_model_table_lists_every_registered_model() -> None:
    """The README's table is `lambdanet models --format markdown`; regenerate it when a model is added."""
    from pathlib import Path

    import lambdanet

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("<!-- models-table")[1].split("<!-- /models-table -->")[0]
    missing = [name for name in lambdanet.list_models() if f"`{name}`" not in table]
    assert not missing, f"README model table lacks {missing}; run `lambdanet models --format markdown`"
