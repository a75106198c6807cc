"""`python -m clipmini.jobs claims`: every claim of every seed's run is collected, failures included."""

from __future__ import annotations

import json

import nbformat

from clipmini import jobs

CHAPTER = '''
import clipmini
from clipmini.claims import Claims
from clipmini.stats import Interval

claims = Claims("98_toy", seeds=[seed])
claims.at_least("grows with the seed", Interval(seed / 10, seed / 10 - 0.05, seed / 10 + 0.05, 100, "toy"), 0.1)
claims.greater("always holds", Interval(0.5, 0.4, 0.6, 100, "toy"))
clipmini.save_results("98_toy", {"claims": claims.records()}, results_dir)
claims.check()
'''


def _toy_chapter(folder):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('seed: int = 0  # the seed\nresults_dir: str = ""  # where results go')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(CHAPTER)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "98_toy.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_sweep_records_failed_claims_without_losing_the_others(tmp_path, monkeypatch):
    notebook = _toy_chapter(tmp_path)
    monkeypatch.setattr(jobs, "toc_chapters", lambda: [notebook])
    monkeypatch.delenv("CLIPMINI_CLAIMS", raising=False)
    path = jobs.sweep_claims([0, 3], label="toy", out_root=tmp_path / "runs")
    sweep = json.loads(path.read_text())
    assert sweep["setting"]["label"] == "toy" and sweep["setting"]["seeds"] == [0, 3]
    by_seed = {run["seed"]: run for run in sweep["runs"]}
    # seed 0 fails its first claim, yet the run records both claims, then fails as a whole
    assert by_seed[0]["status"] == "failed", by_seed[0]
    assert [c["verdict"] for c in by_seed[0]["claims"]] == ["FAILS", "holds"]
    assert by_seed[3]["status"] == "ok" and [c["verdict"] for c in by_seed[3]["claims"]] == ["holds", "holds"]
    table = jobs.claims_sweep_table([path])
    assert "| 98_toy | grows with the seed | ≥ 10.0% | 0.0% to 30.0% | [-5.0%, 5.0%] (toy/0) | 1 of 2 |" in table
    assert "| 98_toy | always holds | > 0.0% | 50.0% to 50.0% | [40.0%, 60.0%] (toy/0) | 2 of 2 |" in table
    assert "2 chapter runs, 1 stopped before" in table


def test_sweep_table_over_several_settings(tmp_path):
    def sweep(label, estimates):
        runs = [{"chapter": "06_x", "seed": s, "status": "ok", "error": "", "seconds": 1.0,
                 "claims": [{"name": "A beats B", "kind": "greater", "bound": 0.0, "estimate": e, "low": e - 0.02,
                             "high": e + 0.02, "passed": e - 0.02 > 0, "percent": True}]}
                for s, e in enumerate(estimates)]
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps({"setting": {"label": label}, "runs": runs}))
        return path

    table = jobs.claims_sweep_table([sweep("default", [0.10, 0.05, 0.08]), sweep("1-thread", [0.01])])
    assert "| 06_x | A beats B | > 0.0% | 1.0% to 10.0% | [-1.0%, 3.0%] (1-thread/0) | 3 of 4 |" in table


def _sweep_file(path, label, claims_by_seed, chapter="07_x"):
    runs = [{"chapter": chapter, "seed": s, "status": "ok", "error": "", "seconds": 1.0, "claims": claims}
            for s, claims in claims_by_seed.items()]
    path.write_text(json.dumps({"setting": {"label": label}, "runs": runs}))
    return path


def _claim(name, kind, bound, low, high, passed):
    return {"name": name, "kind": kind, "bound": bound, "estimate": (low + high) / 2, "low": low, "high": high,
            "passed": passed, "percent": True}


def test_runs_are_judged_by_the_claim_as_the_chapter_states_it_now(tmp_path):
    # an early run asserted "> 10%" and failed; the chapter has since moved the bound to 0 and demoted another
    early = _sweep_file(tmp_path / "early.json", "early", {
        0: [_claim("gap", "greater", 0.1, 0.05, 0.3, False), _claim("order", "greater", 0.0, -0.1, 0.2, False),
            _claim("dropped", "greater", 0.0, 0.1, 0.2, True)]})
    now = _sweep_file(tmp_path / "now.json", "now", {
        1: [_claim("gap", "greater", 0.0, 0.02, 0.2, True),
            _claim("order", "unresolved", None, -0.2, 0.3, None)]})
    table = jobs.claims_sweep_table([early, now], current=[now])
    assert "| 07_x | gap | > 0.0% | 11.0% to 17.5% | [2.0%, 20.0%] (now/1) | 2 of 2 |" in table
    # a claim not asserted shows the interval that reaches lowest
    assert "| 07_x | order | — | 5.0% to 5.0% | [-20.0%, 30.0%] (now/1) | not asserted (2 runs) |" in table
    assert "dropped" not in table  # a claim the chapter no longer states
    # without the current definitions, the first run's claim decides: the early "> 10%" fails there
    assert "| 07_x | gap | > 10.0% | 11.0% to 17.5% | [2.0%, 20.0%] (now/1) | 0 of 2 |" in jobs.claims_sweep_table(
        [early, now])


def test_a_claim_not_asserted_in_a_run_never_counts_as_holding(tmp_path):
    path = _sweep_file(tmp_path / "s.json", "s", {
        0: [_claim("ratio", "at most", 0.5, 0.1, 0.4, True)],
        1: [_claim("ratio", "at most", 0.5, 0.3, 0.7, None)]})  # this run's interval reaches past the bound
    assert "| 07_x | ratio | ≤ 50.0% | 25.0% to 50.0% | [30.0%, 70.0%] (s/1) | 1 of 2 |" in jobs.claims_sweep_table([path])
