"""The benchmark machinery without timing anything: run_all's results file and the appendix page.

The FLOP counter the benchmarks use is `clipmini.scaling.clip_flops`, tested in tests/test_scaling.py."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import papermill
import pytest
import torch


ROOT = Path(__file__).resolve().parent.parent


def _benchmarks_module(name: str):
    """`benchmarks.<name>` from this repository (benchmarks/ is a folder of scripts, not an installed package)."""
    package = sys.modules.get("benchmarks")
    if package is None or Path(getattr(package, "__file__", "") or "").resolve().parent != ROOT / "benchmarks":
        spec = importlib.util.spec_from_file_location(
            "benchmarks", ROOT / "benchmarks" / "__init__.py", submodule_search_locations=[str(ROOT / "benchmarks")]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"benchmarks.{name}")


common = _benchmarks_module("common")
run_all = _benchmarks_module("run_all")


def test_machine_name_is_a_safe_file_name():
    assert common.machine_name("vm") == "vm"
    assert common.machine_name("build host/01 (ci)") == "build-host-01-ci"
    assert common.machine_name("///") == "machine"


# ----------------------------------------------------------------------------------------------
# run_all: running scripts and merging their results
# ----------------------------------------------------------------------------------------------

FAKE_BENCH = textwrap.dedent(
    """
    import argparse, json, pathlib, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--value", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {}
    data["fake"] = {"value": args.value, "argv": sys.argv[1:]}
    out.write_text(json.dumps(data))
    print("fake benchmark done")
    """
)
BROKEN_BENCH = "import sys\nprint('about to fail')\nsys.exit('broken benchmark: no such model')\n"
DOCUMENT_BENCH = textwrap.dedent(
    """
    import argparse, json, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    pathlib.Path(parser.parse_args().out).write_text(json.dumps({"meta": {}, "results": [{"model": "m", "batch_size": 4, "loop_over_bare": 0.9}]}))
    """
)


def _scripts(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name, source in (("fake", FAKE_BENCH), ("broken", BROKEN_BENCH), ("document", DOCUMENT_BENCH),
                         ("sleepy", "import time\ntime.sleep(60)\n")):
        path = tmp_path / f"bench_{name}.py"
        path.write_text(source)
        paths[name] = str(path)
    return paths


def test_the_recorded_commit_is_dirty_for_code_changes_but_not_for_results_files(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "model.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "vm.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    clean = common.git_commit(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False

    (tmp_path / "benchmarks" / "results" / "vm.json").unlink()  # a fresh run starting from an empty results file
    assert common.git_commit(tmp_path)["dirty"] is False
    (tmp_path / "model.py").write_text("x = 2\n")  # but measuring edited code is recorded as such
    assert common.git_commit(tmp_path)["dirty"] is True


def test_run_all_runs_every_benchmark_merges_results_and_records_the_machine(tmp_path, capsys):
    scripts = _scripts(tmp_path)
    out = tmp_path / "results" / "box.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"older": {"kept": True}}))
    plan = [
        run_all.Benchmark("broken", scripts["broken"], (), ()),
        run_all.Benchmark("fake", scripts["fake"], ("--value", "1"), ("--value", "2")),
        run_all.Benchmark("full_only", scripts["fake"], ("--value", "3"), None),
        run_all.Benchmark("loop", scripts["document"], (), (), writes="document", key="train_loop"),
    ]
    status = run_all.main(["--quick", "--out", str(out)], benchmarks=plan)
    assert status == 1  # one benchmark failed ...
    data = json.loads(out.read_text())
    assert data["fake"]["value"] == 2.0  # ... and the others still ran, with their --quick arguments
    assert data["older"] == {"kept": True}  # merged, not overwritten
    assert data["train_loop"]["results"][0]["loop_over_bare"] == 0.9  # a whole-document script, merged under its key
    assert not list(out.parent.glob("*.tmp"))

    runs = data["run_all"]["benchmarks"]
    assert list(runs) == ["broken", "fake", "loop"]  # full_only has no quick form
    assert data["run_all"]["quick"] is True and data["run_all"]["failed"] == ["broken"]
    assert runs["broken"]["returncode"] == 1 and "broken benchmark: no such model" in runs["broken"]["error"]
    assert runs["fake"]["returncode"] == 0 and runs["fake"]["keys"] == ["fake"] and "error" not in runs["fake"]
    assert runs["fake"]["command"].endswith(f"bench_fake.py --value 2 --out {out}")
    assert data["fake"]["argv"] == ["--value", "2", "--out", str(out)]  # the recorded command is the one that ran
    assert runs["loop"]["keys"] == ["train_loop"]

    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["memory_gib"] > 0
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] >= 1
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    assert len(machine["loadavg_start"]) == 3 and len(machine["loadavg_end"]) == 3
    assert machine["date"][:4].isdigit() and "commit" in machine
    printed = capsys.readouterr()
    assert "fake benchmark done" in printed.out and "FAILED broken" in printed.err


def test_run_all_stops_a_benchmark_at_its_timeout(tmp_path):
    scripts = _scripts(tmp_path)
    out = tmp_path / "r.json"
    plan = [run_all.Benchmark("sleepy", scripts["sleepy"], (), (), timeout=1.0),
            run_all.Benchmark("fake", scripts["fake"], ("--value", "5"), ())]
    assert run_all.main(["--out", str(out)], benchmarks=plan) == 1
    data = json.loads(out.read_text())
    assert "stopped after 1 s" in data["run_all"]["benchmarks"]["sleepy"]["error"]
    assert data["fake"]["value"] == 5.0  # a full run: the full arguments


def test_run_all_rejects_unknown_names_and_lists_its_plan(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope", "--out", str(tmp_path / "x.json")])
    assert "unknown benchmark(s) nope" in capsys.readouterr().err
    assert run_all.main(["--list", "--out", str(tmp_path / "x.json")]) == 0
    listed = capsys.readouterr().out
    for name in ("tokenizer", "train_step_fp32", "loss", "data", "zeroshot", "peak", "ddp"):
        assert f"\n{name} " in "\n" + listed
    assert not (tmp_path / "x.json").exists()  # --list runs nothing
    scripts = {Path(b.script).name for b in run_all.plan()}
    assert {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")} <= scripts  # every script is in the plan


def test_the_plan_measures_small_vit_bf16_only_with_bf16_hardware():
    def bf16_models(flags):
        step = next(b for b in run_all.plan(flags) if b.name == "train_step_bf16")
        return step.args[step.args.index("--models") + 1: step.args.index("--precisions")]

    assert bf16_models({"avx2"}) == ("tiny-vit",)
    assert bf16_models({"avx2", "amx_bf16"}) == ("tiny-vit", "small-vit")


# ----------------------------------------------------------------------------------------------
# The headline summary and the appendix page, on a small fake results file
# ----------------------------------------------------------------------------------------------


def _summary(median: float) -> dict:
    return {"median": median, "min": 0.9 * median, "max": 1.1 * median, "runs": [0.9 * median, median, 1.1 * median]}


FAKE_RESULTS = {
    "machine": {"cpu_model": "Fake CPU 9000", "cores": 2, "memory_gib": 8.0, "torch": "2.x", "torch_threads": 2,
                "python": "3.x", "date": "2030-01-01T00:00:00+00:00", "loadavg_start": [0.1, 0.1, 0.1],
                "loadavg_end": [0.2, 0.1, 0.1], "commit": "abc123", "dirty": False},
    "run_all": {"quick": True, "status": "ok", "wall_s": 12.0, "benchmarks": {
        "tokenizer": {"command": "python benchmarks/bench_tokenizer.py --reps 1", "returncode": 0, "wall_s": 3.0, "keys": ["tokenizer"]},
        "train_step_fp32": {"command": "python benchmarks/bench_train_step.py --quick", "returncode": 0, "wall_s": 5.0,
                            "keys": ["train_step/tiny-vit/fp32/b32", "train_step/small-vit/fp32/b8"]},
    }},
    "tokenizer": {"n_prompts": 80000, "reps": 1, "identical_ids": True, "speedup_cold": 4.5, "speedup_cold_process": 4.0,
                  "speedup_tokenize_only_cold": 20.0, "speedup_warm": 30.0,
                  "warm_prompts_per_s": {"clipmini": 1e5, "open_clip": 3e3},
                  "clipmini": {k: _summary(v) for k, v in (("cold_s", 1.0), ("import_s", 0.6), ("load_s", 0.1), ("tokenize_s", 0.3))},
                  "open_clip": {k: _summary(v) for k, v in (("cold_s", 4.5), ("import_s", 2.0), ("load_s", 0.0), ("tokenize_s", 2.5))}},
    "train_step/tiny-vit/fp32/b32": {"model": "tiny-vit", "precision": "fp32", "batch": 32, "trim_padding": True, "reps": 5,
                                     "steps_per_rep": 2, "threads": 1, "ratio_paired_median": 1.25, "ratio_of_medians": 1.2,
                                     "ratio_paired_min": 1.1, "ratio_paired_max": 1.4,
                                     "samples_per_s": {"clipmini": _summary(200.0), "open_clip": _summary(160.0)}},
    "train_step/small-vit/fp32/b8": {"model": "small-vit", "precision": "fp32", "batch": 8, "trim_padding": True, "reps": 5,
                                     "steps_per_rep": 2, "threads": 1, "ratio_median": 0.9,  # an older layout
                                     "ratio_paired_min": 0.8, "ratio_paired_max": 1.0,
                                     "samples_per_s": {"clipmini": _summary(9.0), "open_clip": _summary(10.0)}},
    "train_step/tiny-vit/fp32/b64": {"model": "tiny-vit", "precision": "fp32", "batch": 64, "ratio_paired_median": 0.5,
                                     "samples_per_s": {"clipmini": _summary(1.0), "open_clip": _summary(2.0)}},  # an earlier run's
    "bench_loss": {"command": "python benchmarks/bench_loss.py --sizes 1024 2048", "config": {"chunk_size": 1024},
                   "runs": [{"n": n, "form": form, "median_s": t, "times_s": [t], "loss_peak_mib": m, "nxn_fp32_mib": n * n * 4 / 2**20,
                             "reps": 1, "loss": 7.0}
                            for n, form, t, m in ((1024, "plain", 0.3, 50.0), (1024, "chunked", 0.8, 30.0),
                                                  (2048, "plain", 1.0, 200.0), (2048, "chunked", 1.3, 80.0))],
                   "skipped": [{"n": 4096, "form": "plain", "predicted_gib": 9.0}],
                   "summary": {"largest_n_both": {"n": 2048, "time_ratio_chunked_over_plain": 1.3,
                                                  "memory_ratio_chunked_over_plain": 0.4, "loss_abs_diff": 1e-6}}},
    "bench_zeroshot": {"tiny-vit/cifar/cpu": {"classes": 10, "templates": 18, "images": 64, "command": "python benchmarks/bench_zeroshot.py",
                                              "cached_images_per_s": _summary(300.0), "rebuild_images_per_s": _summary(100.0),
                                              "speedup_cached_over_rebuild": _summary(3.0)}},
    "bench_peak": {"command": "python benchmarks/bench_peak.py --quick", "threads": 2,
                   "matmul": {"size": 1024, "peak_tflops": 0.1, "tflops_before": _summary(0.09), "tflops_after": _summary(0.09)},
                   "models": {"tiny-vit": {"batch": 32, "flops_per_step": 3.2e9, "step_s": _summary(0.5), "tflops": _summary(0.0064),
                                           "fraction_of_peak": 0.064, "fraction_of_peak_best": 0.07}}},
}


def test_headlines_read_the_goals_from_the_results():
    rows = run_all.headlines(FAKE_RESULTS)
    by_figure = {(r["benchmark"], r["figure"]): r for r in rows}
    cold = next(r for r in rows if r["benchmark"] == "tokenizer" and r["figure"].startswith("cold"))
    assert cold["value"] == 4.5 and cold["goal"] == 3.0 and cold["met"] is True
    few = run_all.headlines({"tokenizer": {**FAKE_RESULTS["tokenizer"], "n_prompts": 8000}})
    assert few[0]["value"] == 4.5 and few[0]["goal"] is None and few[0]["met"] is None  # a smoke run is not judged
    steps = {r["figure"]: r for r in rows if r["benchmark"] == "train_step"}
    assert steps["tiny-vit fp32 b32: clipmini / open_clip samples/s"]["value"] == 1.25  # the paired median
    assert steps["small-vit fp32 b8: clipmini / open_clip samples/s"]["met"] is False
    assert not any("b64" in figure for figure in steps)  # not written by the latest run
    assert by_figure[("loss", "N=2,048: chunked / plain peak memory")]["value"] == 0.4
    assert not [r for r in rows if r["benchmark"] in ("ddp", "data", "train_loop")]  # absent sections are left out
    table = run_all.format_table(rows)
    assert ">= 3x: met" in table and ">= 1x: NOT met" in table and "6.4%" in table
    assert run_all.headlines({"tokenizer": {"speedup_cold": "garbled"}}) == []  # an odd layout is skipped, not fatal


def test_the_appendix_page_runs_on_a_small_results_file(tmp_path):
    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps(FAKE_RESULTS))
    notebook = ROOT / "notebooks" / "90_performance.ipynb"
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(notebook), str(executed), parameters={"results_file": str(fake), "results_dir": str(tmp_path / "out")},
        kernel_name="python3", cwd=str(notebook.parent), progress_bar=False,
    )
    saved = json.loads((tmp_path / "out" / "90_performance.json").read_text())
    assert saved["results_file"] == "fake.json" and saved["quick"] is True and saved["machine"] == "Fake CPU 9000"
    assert saved["tokenizer_speedup_cold"] == 4.5 and saved["goal_tokenizer_3x"] is True
    assert saved["train_step_ratio"]["tiny-vit/fp32/b32"] == 1.25 and saved["train_step_ratio"]["small-vit/fp32/b8"] == 0.9
    assert saved["goal_train_step_fp32_1x"] is False  # small-vit's 0.9 misses it
    assert saved["loss_memory_ratio_chunked_over_plain"] == 0.4 and saved["fraction_of_peak"] == {"tiny-vit": 0.064}
    assert "ddp_ratio_2_over_1" not in saved  # absent from the file: the page says so instead of failing
    text = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/markdown", ""))
        for cell in nbformat.read(executed, as_version=4).cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "Trainer throughput under DDP: not in this results file" in text
    assert "This is a smoke run" in text and "`python benchmarks/bench_train_step.py --quick`" in text
    assert "NOT met" in text
