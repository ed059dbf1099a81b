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
