"""Every --csv file opens in a spreadsheet as data (perfkit.console.csv_text, behind summary --csv and compare
--csv): a label, model, checkpoint or SLO name that a spreadsheet would run as a formula (tests/hostile_text.py
FORMULAS: =cmd|..., =HYPERLINK(...), cells starting with +, -, @, a tab or a CR) is written with a leading ',
and numbers, negative ones included, stay numbers."""

import csv
import os

import pandas as pd
from helpers import call_cli, make_row, write_rows
from hostile_text import FORMULA_START, FORMULA_WORDS, FORMULAS

from perfkit.console import csv_text


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _cells(directory) -> dict[str, list[list[str]]]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), newline="") as f:
            out[name] = list(csv.reader(f))
    return out


def assert_inert(directory, shown: list[str]) -> None:
    """No cell or header of the CSV files in `directory` starts a formula, and each text of `shown` is there
    as typed behind a '."""
    seen = set()
    for name, rows in _cells(directory).items():
        for row in rows:
            for cell in row:
                assert not (cell.startswith(FORMULA_START) and not _is_number(cell)), f"{name}: {cell!r}"
                seen.add(cell)
    for text in shown:
        assert "'" + text in seen, text


def _rows(system: str, scale: float) -> list[dict]:
    """A point at batches 1 and 2 of every FORMULAS model (a checkpoint folder may be named so)."""
    return [make_row(system, model, 32, 8, b, [10.0 * b * scale] * 3, [50.0 * b * scale] * 3)
            for model in FORMULAS for b in (1, 2)]


def test_summary_csv_files_hold_no_formula(tmp_path):
    d = write_rows(tmp_path / "res", [r for label in FORMULAS for r in _rows(label, 1.0)])
    out = tmp_path / "csv"
    r = call_cli("summary", d, *(f"--slo={name}:100:10" for name in FORMULA_WORDS), "--csv", out)
    assert r.returncode == 0, r.stderr
    assert_inert(out, FORMULAS + FORMULA_WORDS)  # labels and models; SLO names in slo.csv
    slo = pd.read_csv(out / "slo.csv")
    assert pd.api.types.is_float_dtype(slo["output_tok_s"]) and set(slo["slo"]) == {"'" + n for n in FORMULA_WORDS}


def test_compare_csv_files_hold_no_formula(tmp_path):
    t = write_rows(tmp_path / "t", _rows(FORMULAS[0], 0.5))
    b = write_rows(tmp_path / "b", _rows(FORMULAS[1], 1.0))
    out = tmp_path / "csv"
    r = call_cli("compare", t, b, *(f"--slo={name}:100:10" for name in FORMULA_WORDS), "--csv", out,
                 "--n-boot", "200")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["frontier.csv", "points.csv", "slo.csv", "study.csv"]
    assert_inert(out, FORMULAS + FORMULA_WORDS)  # models in every file, SLO names in slo.csv
    study = pd.read_csv(out / "study.csv")
    assert study["ratio"].tolist() == [0.5] * len(study)  # still numbers


def test_numbers_stay_numbers_and_headers_are_cells_too():
    table = pd.DataFrame({"=SUM(A1)": FORMULAS[:3], "delta": [-1.5, 0.0, 2.0], "count": pd.array([-3, None, 4],
                                                                                                    dtype="Int64"),
                          "text": ["-2.5", "+7", "-1e3"], "mixed": pd.Series([-4, "-x", None], dtype=object)})
    back = list(csv.reader(csv_text(table).splitlines()))
    assert back[0] == ["'=SUM(A1)", "delta", "count", "text", "mixed"]
    assert [row[0] for row in back[1:]] == ["'" + f for f in FORMULAS[:3]]
    assert [row[1:] for row in back[1:]] == [["-1.5", "-3", "-2.5", "-4"], ["0.0", "", "+7", "'-x"],
                                             ["2.0", "4", "-1e3", ""]]
