"""The book's foundation: outputs policy, parameters cells, profiles, and a failing chapter failing the build."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from clipmini import jobs

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# papermill's parser splits on "=", so a help comment must not hold one
PARAM_LINE = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*): (?P<type>[A-Za-z_][\w\[\], |]*) = (?P<value>[^=#]+?)\s+# [^=]+$")
REQUIRED_PARAMETERS = {"device", "seed", "results_dir"}


def test_there_are_chapters():
    assert NOTEBOOKS, "notebooks/ holds no chapter"
    for nb in NOTEBOOKS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", nb.name), f"{nb.name}: chapters are named NN_topic.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    """Our outputs policy (README, Contributing): notebooks are committed without outputs."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.get("outputs") == [], f"{path.name} cell {index} has stored outputs: run `make strip`"
        assert cell.get("execution_count") is None, f"{path.name} cell {index} has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell(path):
    """One cell tagged `parameters`, the first code cell, flat `name: type = value  # help` lines."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0] is code[0], f"{path.name}: the parameters cell must be the first code cell"
    names = set()
    for line in tagged[0].source.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PARAM_LINE.match(line)
        assert match, f"{path.name}: parameters must be `name: type = value  # help`, got {line!r}"
        names.add(match["name"])
    assert REQUIRED_PARAMETERS <= names, f"{path.name}: missing parameters {sorted(REQUIRED_PARAMETERS - names)}"
    inspected = papermill.inspect_notebook(str(path))
    assert set(inspected) == names, f"{path.name}: papermill sees {sorted(inspected)}, the cell declares {sorted(names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_that_may_train_keep_their_progress_bars_out_of_the_book(path):
    """`load_or_train` trains when the model cache misses (a fresh clone, CI) and its progress bar goes to
    stderr, which the book turns into a warning unless the cell is tagged `remove-stderr`."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and re.search(r"\bload_or_train\(", cell.source):
            assert "remove-stderr" in cell.metadata.get("tags", []), (
                f"{path.name} cell {index} calls load_or_train: tag it remove-stderr"
            )


def test_toc_lists_every_chapter_and_only_existing_files():
    files = jobs.toc_files(ROOT / "_toc.yml")
    for name in files:
        assert any((ROOT / f"{name}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml lists missing {name}"
    listed = [f for f in files if f.startswith("notebooks/")]
    on_disk = {f"notebooks/{p.stem}" for p in NOTEBOOKS}
    assert on_disk == set(listed), f"chapters not in _toc.yml: {sorted(on_disk - set(listed))}; missing: {sorted(set(listed) - on_disk)}"
    assert [f"notebooks/{p.stem}" for p in jobs.toc_chapters(ROOT / "_toc.yml")] == listed


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "params").glob("*.yaml") if not p.stem.startswith("train")))
def test_chapters_expose_the_parameters_their_profiles_set(profile):
    data = jobs.load_profile(profile)
    chapters = {p.stem: p for p in NOTEBOOKS}
    assert set(data["chapters"]) <= set(chapters), f"params/{profile}.yaml names unknown chapters"
    for stem, path in chapters.items():
        declared = set(papermill.inspect_notebook(str(path)))
        wanted = set(jobs.chapter_parameters(data, stem))
        assert wanted <= declared, f"params/{profile}.yaml sets {sorted(wanted - declared)} that {stem} does not declare"


def test_profile_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no parameter profile 'nope'"):
        jobs.load_profile("nope")
    (tmp_path / "bad.yaml").write_text("defaults: {}\nchapter: {}\n")
    with pytest.raises(ValueError, match="unknown top-level keys \\['chapter'\\]"):
        jobs.load_profile("bad", params_dir=tmp_path)


def test_save_results_writes_json_only_when_asked(tmp_path):
    assert jobs.save_results("00_x", {"acc": 0.5}, "") is None
    path = jobs.save_results("00_x", {"acc": 0.5}, tmp_path / "runs")
    assert json.loads(path.read_text()) == {"acc": 0.5}
    assert not list((tmp_path / "runs").glob(".*tmp"))


def _one_page_book(folder: Path, source: str) -> None:
    """A minimal book that uses our real _config.yml execution settings and one notebook page."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    small = {"title": "check", "only_build_toc_files": True, "execute": dict(config["execute"], execute_notebooks="force")}
    (folder / "_config.yml").write_text(yaml.safe_dump(small))
    (folder / "_toc.yml").write_text("format: jb-book\nroot: page\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Page"), nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, folder / "page.ipynb")


def _jupyter_book() -> str:
    return shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"


def test_a_raising_cell_fails_the_book_build_and_a_good_one_does_not(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    _one_page_book(good, "x = 1 + 1\nprint(x)")
    _one_page_book(bad, "raise RuntimeError('a broken chapter')")
    ok = subprocess.run([_jupyter_book(), "build", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    broken = subprocess.run([_jupyter_book(), "build", str(bad)], capture_output=True, text=True)
    assert broken.returncode != 0, "a chapter whose cell raises must fail the book build"
    assert "a broken chapter" in broken.stdout + broken.stderr


def test_a_raising_cell_fails_nbval(tmp_path):
    _one_page_book(tmp_path, "raise RuntimeError('a broken chapter')")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "-o", "addopts=", "-o", "testpaths=", str(tmp_path / "page.ipynb")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert run.returncode == 1, run.stdout[-2000:]
    assert "1 failed" in run.stdout


def test_make_on_an_old_python_says_so_in_one_line(tmp_path):
    """`make` checks the Python version before it builds anything, and leaves no environment behind."""
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python 3.10.14"; exit 0; fi\nexit 1\n')
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "env", f"PYTHON={fake}", f"VENV={venv}"],
                          capture_output=True, text=True)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("make: clipmini")]
    assert len(lines) == 1 and "needs Python 3.11 or newer" in lines[0] and "Python 3.10.14" in lines[0], done.stderr
    assert not venv.exists()
