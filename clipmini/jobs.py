"""Chapters as jobs: run every notebook of the book headless with papermill, and check the book builds.

``python -m clipmini.jobs reproduce --profile cpu`` is what ``make reproduce`` runs;
``python -m clipmini.jobs book-check`` is the quick, non-executing book build of ``make test``;
``python -m clipmini.jobs screenshots`` looks at the built book in a browser (``make screenshots``).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clipmini.fileio import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def save_results(chapter: str, results: dict[str, Any], results_dir: str | os.PathLike | None) -> Path | None:
    """Write a chapter's measured results as ``<results_dir>/<chapter>.json`` (atomically).

    Chapters call this last with their ``results_dir`` parameter; an empty value writes nothing, so an
    interactive run leaves no files behind.
    """
    if not results_dir:
        return None
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict of JSON values, got {type(results).__name__}")
    path = Path(results_dir) / f"{chapter}.json"
    atomic_write_json(path, results)
    return path


def toc_files(toc_path: str | os.PathLike = ROOT / "_toc.yml") -> list[str]:
    """Every page of ``_toc.yml`` (the root first), as written there: paths without extensions."""
    toc = yaml.safe_load(Path(toc_path).read_text())
    files: list[str] = [toc["root"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)

    walk(toc)
    return files


def toc_chapters(toc_path: str | os.PathLike = ROOT / "_toc.yml") -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in book order (prose pages are skipped)."""
    root = Path(toc_path).resolve().parent
    notebooks = [root / f"{name}.ipynb" for name in toc_files(toc_path)]
    return [nb for nb in notebooks if nb.exists()]


def load_profile(profile: str, params_dir: str | os.PathLike = ROOT / "params") -> dict[str, Any]:
    """Read ``params/<profile>.yaml``: ``defaults`` for every chapter, ``chapters.<name>`` for one."""
    path = Path(params_dir) / f"{profile}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(params_dir).glob("*.yaml"))
        raise ValueError(f"no parameter profile {profile!r}: {path} does not exist (profiles: {known})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise TypeError(f"{path} must hold a mapping with 'defaults' and 'chapters'; got a {type(data).__name__}")
    unknown = set(data) - {"defaults", "chapters", "description"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; expected 'defaults' and 'chapters'")
    data["defaults"] = data.get("defaults") or {}
    data["chapters"] = data.get("chapters") or {}
    if not isinstance(data["defaults"], dict):
        raise TypeError(f"{path}: 'defaults' must map parameter names to values; got a {type(data['defaults']).__name__}")
    if not isinstance(data["chapters"], dict):
        raise TypeError(f"{path}: 'chapters' must map chapter names to their parameters; got a {type(data['chapters']).__name__}")
    for chapter, params in data["chapters"].items():
        if not isinstance(params or {}, dict):
            raise TypeError(f"{path}: chapters.{chapter} must map parameter names to values; got a {type(params).__name__}")
    return data


# papermill's name for a parameter's annotation -> the Python values it accepts (bool is no number here)
_PARAMETER_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


def check_parameters(notebook: str | os.PathLike, parameters: dict[str, Any]) -> None:
    """Raise if `parameters` names a parameter the chapter's `parameters` cell does not declare, or has the wrong type.

    papermill itself only warns about an unknown name and injects any value, so a typo in a profile would run
    a chapter for an hour with its default instead.
    """
    import papermill

    notebook = Path(notebook)
    declared = papermill.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(str(name), list(declared), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{notebook.stem} has no parameter {', '.join(hints)}; its parameters are {', '.join(declared)}")
    for name, value in parameters.items():
        annotation = str(declared[name].get("inferred_type_name") or "").replace(" ", "")  # e.g. "int", "str|None"
        allowed = _PARAMETER_TYPES.get(annotation.removesuffix("|None").split("[")[0])
        if allowed is None or (value is None and annotation.endswith("|None")):
            continue  # an annotation we do not check, or an optional left empty
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise TypeError(f"{notebook.stem}: parameter {name!r} must be {annotation}; got {type(value).__name__} {value!r}")


def check_profile(profile: dict[str, Any], notebooks: list[Path]) -> None:
    """Check a loaded profile against the chapters it will run, before any of them starts."""
    stems = {Path(nb).stem: Path(nb) for nb in notebooks}
    unknown = sorted(set(profile.get("chapters") or {}) - set(stems))
    if unknown:
        raise ValueError(f"the profile sets parameters for chapters that are not in the book: {unknown}; the chapters are {sorted(stems)}")
    for stem, notebook in stems.items():
        check_parameters(notebook, chapter_parameters(profile, stem))


def chapter_parameters(profile: dict[str, Any], chapter: str) -> dict[str, Any]:
    """The parameters a profile sets for one chapter: its defaults, then the chapter's own values."""
    params = dict(profile.get("defaults") or {})
    params.update((profile.get("chapters") or {}).get(chapter) or {})
    return params


@dataclass
class JobResult:
    chapter: str
    status: str
    seconds: float
    results: dict[str, Any]
    error: str = ""


def run_chapter(notebook: Path, out_dir: Path, parameters: dict[str, Any], *, timeout: int = 3600) -> JobResult:
    """Execute one chapter with papermill; its results JSON lands beside the executed notebook."""
    import papermill

    chapter = notebook.stem
    params = dict(parameters, results_dir=str(out_dir.resolve()))
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(out_dir / notebook.name),
            parameters=params,
            kernel_name="python3",
            cwd=str(notebook.parent),
            progress_bar=False,
            execution_timeout=timeout,
        )
    except Exception as err:  # papermill raises PapermillExecutionError with the failing cell
        status, error = "failed", str(err).strip().splitlines()[-1][:200]
    else:
        status, error = "ok", ""
    seconds = time.perf_counter() - start
    results_file = out_dir / f"{chapter}.json"  # written before a chapter's final claims check
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    return JobResult(chapter, status, seconds, results, error)


def summarize(jobs: list[JobResult]) -> str:
    """A plain-text table: chapter, status, wall time and the chapter's headline results."""
    lines = [f"{'chapter':<32} {'status':<7} {'time':>8}  results"]
    for job in jobs:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in list(job.results.items())[:4])
        lines.append(f"{job.chapter:<32} {job.status:<7} {job.seconds:>7.1f}s  {shown or job.error}")
    ok = sum(job.status == "ok" for job in jobs)
    lines.append(f"{ok} passed, {len(jobs) - ok} failed")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


def reproduce(profile_name: str, *, chapters: list[str] | None = None, out_root: Path = ROOT / "runs") -> list[JobResult]:
    profile = load_profile(profile_name)
    notebooks = toc_chapters()
    check_profile(profile, notebooks)  # a typo fails now, not after hours of other chapters
    out_dir = out_root / profile_name
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for notebook in notebooks:
        if chapters and notebook.stem not in chapters:
            continue
        print(f"running {notebook.stem} ...", flush=True)
        jobs.append(run_chapter(notebook, out_dir, chapter_parameters(profile, notebook.stem)))
    atomic_write_json(out_dir / "summary.json", [job.__dict__ for job in jobs])
    return jobs


def sweep_claims(seeds: list[int], *, label: str, chapters: list[str] | None = None,
                 parameters: dict[str, Any] | None = None, out_root: Path = ROOT / "runs" / "claims") -> Path:
    """Run chapters headless once per seed with claims collected (not raised); write ``<label>/claims.json``.

    The environment this runs in is the setting swept (``ATEN_CPU_CAPABILITY``, thread counts): each
    setting should use its own ``CLIPMINI_CACHE``, so that its models are trained under it.
    """
    from clipmini.claims import COLLECT_ENV

    notebooks = [nb for nb in toc_chapters() if not chapters or nb.stem in chapters or nb.stem[:2] in chapters]
    if not notebooks:
        raise ValueError(f"no chapter matches {chapters}; the chapters are {[nb.stem for nb in toc_chapters()]}")
    import papermill

    chosen = {}  # notebook -> the swept parameters it declares (threads=1 skips a chapter without threads)
    for notebook in notebooks:
        declared = papermill.inspect_notebook(str(notebook))
        chosen[notebook] = {k: v for k, v in (parameters or {}).items() if k in declared}
        check_parameters(notebook, {**chosen[notebook], "seed": seeds[0]})
    os.environ[COLLECT_ENV] = "collect"  # the kernels papermill starts inherit it
    out = out_root / label
    setting = {"label": label, "seeds": seeds, "parameters": parameters or {},
               "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", ""), "torch_threads": _threads()}
    path = out / "claims.json"
    runs = []
    for seed in seeds:
        for notebook in notebooks:
            print(f"[{label}] {notebook.stem}, seed {seed} ...", flush=True)
            job = run_chapter(notebook, out / f"seed-{seed}", {**chosen[notebook], "seed": seed})
            runs.append({"chapter": job.chapter, "seed": seed, "status": job.status, "seconds": round(job.seconds, 1),
                         "error": job.error, "claims": job.results.get("claims", [])})
            atomic_write_json(path, {"setting": setting, "runs": runs})  # after every run: a stopped sweep keeps its runs
    return path


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def claims_sweep_table(paths: list[Path], current: list[Path] | None = None) -> str:
    """Markdown: each claim of each chapter across every run of the sweeps in `paths` (their claims.json).

    A claim holds in a run when that run's interval meets what the claim needs. With `current` (claims.json
    files of runs of the chapters as they are now), a chapter's rows are its current claims, and every run's
    recorded interval is judged by the current claim's kind and bound: runs made before a claim was
    restated (a bound moved, a claim demoted to "not resolved") count by what the chapter states today,
    and claims the chapter no longer makes are left out. Without it, each claim is judged as its first run
    states it. A run whose claim was not asserted never counts as holding.
    """
    from clipmini.claims import format_value, needed_text

    definitions: dict[tuple[str, str], dict] = {}
    for path in current or []:
        for run in json.loads(Path(path).read_text())["runs"]:
            for claim in run["claims"]:
                definitions[(run["chapter"], claim["name"])] = claim
    judged_chapters = {chapter for chapter, _ in definitions}
    rows: dict[tuple[str, str], list[dict]] = {}
    failed_runs, total_runs = [], 0
    for path in paths:
        sweep = json.loads(Path(path).read_text())
        label = sweep["setting"]["label"]
        for run in sweep["runs"]:
            total_runs += 1
            if run["status"] != "ok":
                failed_runs.append(f"{run['chapter']} ({label}, seed {run['seed']}): {run['error']}")
            for claim in run["claims"]:
                key = (run["chapter"], claim["name"])
                if run["chapter"] in judged_chapters and key not in definitions:
                    continue  # a claim the chapter no longer states
                rows.setdefault(key, []).append({**claim, "run": f"{label}/{run['seed']}"})
    lines = ["| chapter | claim | needed | estimates (min to max) | worst interval | holds in |",
             "|---|---|---|---|---|---|"]
    for key in sorted(rows, key=lambda k: k[0]):  # by chapter; a chapter's claims in the order first met
        chapter, name = key
        rule = definitions.get(key, rows[key][0])
        found = [{**c, "kind": rule["kind"], "bound": rule["bound"]} for c in rows[key]]
        percent = rule.get("percent", True)
        fmt = functools.partial(format_value, percent=percent)
        needed = needed_text(rule["kind"], rule["bound"], percent)
        estimates = [c["estimate"] for c in found]
        # the interval nearest to failing; for a claim not asserted, the one reaching lowest
        worst = min(found, key=_slack if rule["kind"] != "unresolved" else lambda c: c["low"])
        if rule["kind"] == "unresolved":
            verdict = f"not asserted ({len(found)} runs)"
        else:
            held = sum(_holds(c) for c in found)
            verdict = f"{held} of {len(found)}"
        lines.append(f"| {chapter} | {name} | {needed} | {fmt(min(estimates))} to {fmt(max(estimates))} "
                     f"| [{fmt(worst['low'])}, {fmt(worst['high'])}] ({worst['run']}) | {verdict} |")
    summary = f"{total_runs} chapter runs, {len(failed_runs)} stopped before their claims were all recorded."
    if definitions:
        summary += (" Every run's interval is judged by the claim as its chapter states it today"
                    " (a failure listed below may be of a claim since restated).")
    return "\n".join(lines) + "\n\n" + summary + "".join(f"\n- {f}" for f in failed_runs) + "\n"


def _slack(claim: dict) -> float:
    """How far a claim's interval is from failing (negative: it failed); unresolved claims sort last."""
    low, high, bound = claim["low"], claim["high"], claim["bound"]
    return {
        "greater": lambda: low - bound,
        "at least": lambda: low - bound,
        "at most": lambda: bound - high,
        "equivalent": lambda: min(low + bound, bound - high),
        "unresolved": lambda: math.inf,
    }[claim["kind"]]()


def _holds(claim: dict) -> bool:
    """The verdict of `clipmini.claims` from a recorded interval: strict for > and ≈, inclusive for ≥ and ≤."""
    slack = _slack(claim)
    return slack > 0 if claim["kind"] in ("greater", "equivalent") else slack >= 0


def strip_outputs(paths: list[Path]) -> list[Path]:
    """Remove outputs and execution counts (our outputs policy: notebooks are committed stripped)."""
    import nbformat

    changed = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        dirty = False
        for cell in nb.cells:
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
                cell.outputs, cell.execution_count, dirty = [], None, True
        if dirty:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def book_check(out: Path = ROOT / "_build" / "check") -> int:
    """Build the book without executing notebooks, warnings as errors (what ``make test`` runs)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    # Nothing runs here, so no glued value exists: `{glue:text}` and friends are checked by `make book`.
    sphinx_config = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx_config["suppress_warnings"] = [*sphinx_config.get("suppress_warnings", []), "mystnb.glue", "mystnb.glue_ref"]
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "_config.noexec.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    cmd = [jb, "build", str(ROOT), "--config", str(config_path), "--path-output", str(out), "-W", "--keep-going", "-q"]
    print("book-check:", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipmini.jobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run every chapter headless with a parameter profile")
    rep.add_argument("--profile", default="cpu", help="params/<profile>.yaml (default: cpu)")
    rep.add_argument("--chapter", action="append", help="only these chapters (notebook stems); repeatable")
    sub.add_parser("book-check", help="build the book without executing it, warnings as errors")
    sweep = sub.add_parser("claims", help="run chapters under several seeds, collecting every claim's verdict")
    sweep.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default: 0,1,2,3,4)")
    sweep.add_argument("--label", default="default", help="this setting's name, e.g. default, aten-default, 1-thread")
    sweep.add_argument("--chapter", action="append", help="only these chapters (stems or their numbers); repeatable")
    sweep.add_argument("--param", action="append", default=[], metavar="NAME=YAML",
                       help="a parameter for every chapter that declares it, e.g. threads=1; repeatable")
    table = sub.add_parser("claims-table", help="the Markdown table of sweeps' claims.json files")
    table.add_argument("paths", nargs="+", type=Path)
    table.add_argument("--out", type=Path, help="write the table here (atomically) instead of printing it")
    table.add_argument("--current", type=Path, action="append", default=[],
                       help="claims.json of runs of the chapters as they are now: their claims decide the rows, and "
                            "every run is judged by them (repeatable)")
    strip = sub.add_parser("strip", help="strip outputs from notebooks (default: notebooks/*.ipynb)")
    strip.add_argument("paths", nargs="*", type=Path)
    shots = sub.add_parser("screenshots", help="every page of the built book in headless Chromium: PNGs, a contact "
                           "sheet, and a report of overflowing code and broken images")
    shots.add_argument("html_dir", nargs="?", type=Path, default=ROOT / "_build" / "html",
                       help="the built HTML (default: _build/html; _build/check/_build/html after book-check)")
    shots.add_argument("--out", type=Path, default=ROOT / "_build" / "screenshots", help="default: _build/screenshots")
    shots.add_argument("--fail-on-overflow", action="store_true",
                       help="exit 1 when any code block overflows its column (a broken image always does)")
    shots.add_argument("--width", type=int, default=1280, help="the desktop window's width in pixels (default: 1280)")
    shots.add_argument("--sample", help="the page shot on a phone and in dark mode (default: the first chapter)")
    shots.add_argument("--chromium", help="the browser binary (default: $CHROMIUM, else chromium on the PATH)")
    shots.add_argument("--allow-network", action="store_true", help="let pages fetch off-site files (MathJax's CDN)")
    args = parser.parse_args(argv)
    if args.command == "screenshots":
        from clipmini import screenshots

        return screenshots.main(args)
    if args.command == "book-check":
        return book_check()
    if args.command == "claims":
        params = {}
        for item in args.param:
            name, _, value = item.partition("=")
            params[name] = yaml.safe_load(value)
        seeds = [int(s) for s in args.seeds.split(",")]
        path = sweep_claims(seeds, label=args.label, chapters=args.chapter, parameters=params)
        print(claims_sweep_table([path]))
        return 0
    if args.command == "claims-table":
        text = claims_sweep_table(args.paths, current=args.current)
        if args.out:
            atomic_write_text(args.out, text)
        else:
            print(text)
        return 0
    if args.command == "strip":
        for path in strip_outputs(args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))):
            print(f"stripped {path}")
        return 0
    jobs = reproduce(args.profile, chapters=args.chapter)
    print(summarize(jobs))
    return 0 if jobs and all(job.status == "ok" for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
