"""The walkthrough notebooks: in sync with their sources, with a SMOKE switch, and committed with real outputs.

(Executing them is nbmake's job: ``pytest --nbmake notebooks`` with SMOKE=1.)
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BUILD = NOTEBOOKS / "_build"
MAX_BYTES = 2 * 2**20

notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
sources = sorted(BUILD.glob("[0-9][0-9]_*.py"))


def _builder():
    spec = importlib.util.spec_from_file_location("nb_build", BUILD / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_issue_notebook_exists():
    numbers = {p.name[:2] for p in notebooks}
    assert numbers >= {f"{i:02d}" for i in range(8)}, f"missing notebooks: {sorted({f'{i:02d}' for i in range(8)} - numbers)}"


def test_every_notebook_has_a_source_and_back():
    assert [p.stem for p in notebooks] == [p.stem for p in sources]


@pytest.mark.parametrize("path", notebooks, ids=lambda p: p.stem)
def test_notebook_matches_its_source(path):
    """The committed notebook's cells are exactly what build.py makes from the source (edit the source)."""
    built = _builder().build(BUILD / f"{path.stem}.py")
    nb = nbformat.read(path, as_version=4)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in built.cells], \
        f"{path.name} is out of date: run python notebooks/_build/build.py {path.name[:2]} --execute"


@pytest.mark.parametrize("path", notebooks, ids=lambda p: p.stem)
def test_notebook_has_smoke_switch_and_run_record(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup = code[0].source
    assert "ex.start_run()" in setup and "ex.settings(" in setup and "smoke=dict(" in setup, \
        f"{path.name}: the first code cell must start the run and define the smoke/cpu settings"
    assert "run.report()" in code[-1].source, f"{path.name}: the last cell must record the device and times"


@pytest.mark.parametrize("path", notebooks, ids=lambda p: p.stem)
def test_committed_outputs_come_from_a_real_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        assert cell.get("execution_count"), f"{path.name}: code cell {i} was not executed"
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.name}: code cell {i} raised {errors[0].get('ename')}: {errors[0].get('evalue')}"
    report = "".join(o.get("text", "") for o in code[-1].get("outputs", []) if o.get("output_type") == "stream")
    match = re.search(r"^profile\s+(\w+)", report, re.MULTILINE)
    assert match, f"{path.name}: the last cell has no run record"
    assert match.group(1) in ("cpu", "gpu"), f"{path.name}: committed outputs are from a {match.group(1)} run"
    for field in ("device", "torch", "wall_time_s"):
        assert re.search(rf"^{field}\s+\S", report, re.MULTILINE), f"{path.name}: the run record lacks {field}"


@pytest.mark.parametrize("path", notebooks, ids=lambda p: p.stem)
def test_notebook_size(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB"


def test_parse_percent_format():
    cells = _builder().parse("# header, ignored\n\n# %% [markdown]\n# # Title\n# text\n\n# %%\nx = 1\n\n\n# %%\n"
                             "print(x)\n")
    assert [(c.cell_type, c.source) for c in cells] == [("markdown", "# Title\ntext"), ("code", "x = 1"),
                                                          ("code", "print(x)")]


def test_text_only_refresh_keeps_outputs_and_refuses_changed_code(tmp_path):
    build = _builder()
    src = tmp_path / "99_demo.py"
    src.write_text("# %% [markdown]\n# Old words\n\n# %%\nprint(1)\n", encoding="utf-8")
    committed = build.build(src)
    committed.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    committed.cells[1].execution_count = 1

    src.write_text("# %% [markdown]\n# New words\n\n# %%\nprint(1)\n", encoding="utf-8")
    refreshed = build.refresh_text(build.build(src), committed)
    assert refreshed.cells[0].source == "New words"
    assert refreshed.cells[1].outputs[0]["text"] == "1\n" and refreshed.cells[1].execution_count == 1

    src.write_text("# %% [markdown]\n# New words\n\n# %%\nprint(2)\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"code cells \[1\] changed"):
        build.refresh_text(build.build(src), committed)
    src.write_text("# %% [markdown]\n# New words\n", encoding="utf-8")
    with pytest.raises(ValueError, match="adds, removes or moves cells"):
        build.refresh_text(build.build(src), committed)
