"""Safe loading: no file clipmini reads can run code, and downloaded files are verified before use.

- A malicious pickle (its `__reduce__` runs a shell command or Python code) handed to every loader that
  reads checkpoint-like files never runs: the marker file it would write never appears, and the loader
  raises an error that says the file is not a checkpoint it can read.
- A static guard over the package source: pickles are read only by `torch.load(weights_only=True)` and
  by the one reviewed restricted unpickler (`torchscript._WeightsUnpickler`), and `torch.jit.load`
  (which runs the archive's TorchScript) appears only in `read_state_dict`, behind `trust_code=True`.
- `load(name)` verifies the file's sha256 before opening it, and TorchScript never runs unless the caller
  passes `trust_code=True` (tests serve files from file:// URLs under a monkeypatched
  `KNOWN_CHECKPOINTS`; no network).

Owners' tests cover the rest: test_loading.py (`test_pickle_with_arbitrary_objects_is_refused`,
`test_tampered_download_is_rejected`, `test_tampered_cache_is_downloaded_again`), test_tokenizer.py (the
BPE vocabulary's sha256: `test_explicit_wrong_file_is_rejected_with_path_and_hash`,
`test_wrong_download_is_rejected_and_not_written`, `test_corrupt_cache_is_replaced_by_download`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import clipmini
import clipmini.model as clip_model
from clipmini.checkpoint import MANIFEST, MODEL_FILE, CheckpointError, load_checkpoint, load_weights, save_checkpoint
from clipmini.model import KNOWN_CHECKPOINTS, create_model, read_state_dict, save
from clipmini.tokenizer import Tokenizer

torch.set_num_threads(1)

PACKAGE = Path(clipmini.__file__).resolve().parent


# ------------------------------------------------------------------------------------------------
# malicious pickles


class ShellPayload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class PythonPayload:
    """Unpickling this runs Python code that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _plain_pickle(path: Path, payload) -> None:
    path.write_bytes(pickle.dumps({"state_dict": {"visual.proj": payload}}, protocol=2))


def _torch_save_zip(path: Path, payload) -> None:
    torch.save({"state_dict": {"text_projection": torch.zeros(2, 2)}, "hook": payload}, path)


def _fake_torchscript(path: Path, payload) -> None:
    """A torch.save zip dressed up as a TorchScript archive (a code/ folder), so it takes that branch."""
    _torch_save_zip(path.with_suffix(".src"), payload)
    with zipfile.ZipFile(path.with_suffix(".src")) as source, zipfile.ZipFile(path, "w") as out:
        prefix = source.namelist()[0].split("/")[0]
        for name in source.namelist():
            out.writestr(name, source.read(name))
        out.writestr(f"{prefix}/code/__torch__.py", "")
        out.writestr(f"{prefix}/constants.pkl", pickle.dumps(payload, protocol=2))


FORMATS = {"plain pickle": _plain_pickle, "torch.save zip": _torch_save_zip, "fake TorchScript": _fake_torchscript}
PAYLOADS = {"os.system": ShellPayload, "exec": PythonPayload}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payloads_are_live(tmp_path, payload):
    """The check below means something: unpickled the unsafe way, each payload does write its marker."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(PAYLOADS[payload](marker), protocol=2))
    assert marker.exists()


def _load_model(path: Path, marker_dir: Path):
    return clipmini.load(path)


def _read_state_dict(path: Path, marker_dir: Path):
    return read_state_dict(path)


def _load_weights(path: Path, marker_dir: Path):
    weights = path.with_name("model.safetensors")
    weights.write_bytes(path.read_bytes())
    return load_weights(weights, torch.nn.Linear(2, 2))


def _load_checkpoint(path: Path, marker_dir: Path):
    """An attacker who controls the folder: the weights replaced AND the manifest rewritten to match."""
    folder = save_checkpoint(marker_dir / "run", 1, model=torch.nn.Linear(2, 2))
    (folder / MODEL_FILE).write_bytes(path.read_bytes())
    manifest = json.loads((folder / MANIFEST).read_text())
    data = (folder / MODEL_FILE).read_bytes()
    manifest["files"][MODEL_FILE] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return load_checkpoint(folder, model=torch.nn.Linear(2, 2))


def _load_tokenizer(path: Path, marker_dir: Path):
    return Tokenizer.load(path)


def _load_cifar(path: Path, marker_dir: Path):
    """torchvision unpickles CIFAR's batch files; it must check their md5 first."""
    from clipmini.data import cifar10

    folder = marker_dir / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"]:
        (folder / name).write_bytes(path.read_bytes())
    return cifar10(marker_dir / "data")


LOADERS = {
    "clipmini.load": (_load_model, ValueError,
                      r"could not read checkpoint .*(weights_only=True|truncated, corrupt or not a checkpoint|"
                      r"neither a tensor nor a plain container)"),
    "read_state_dict": (_read_state_dict, ValueError, r"could not read checkpoint"),
    "checkpoint.load_weights": (_load_weights, CheckpointError, r"model\.safetensors is truncated or corrupt"),
    "checkpoint.load_checkpoint": (_load_checkpoint, CheckpointError, r"model\.safetensors is truncated or corrupt"),
    "Tokenizer.load": (_load_tokenizer, ValueError, r"not UTF-8 text|invalid JSON"),
    "data.cifar10": (_load_cifar, RuntimeError, r"not found or corrupted"),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_malicious_pickle_never_runs(tmp_path, loader, fmt, payload):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    FORMATS[fmt](path, PAYLOADS[payload](marker))
    call, error, message = LOADERS[loader]
    with pytest.raises(error, match=message):
        call(path, tmp_path)
    assert not marker.exists(), f"{loader} ran the code in a {fmt} file"


# ------------------------------------------------------------------------------------------------
# a static guard: the only ways the package reads pickles or runs TorchScript


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "<expr>")  # model.to(d).eval -> "<expr>.eval"
    return ".".join(reversed(parts))


def _package_calls():
    """(file, enclosing function, dotted callee, call node) for every call in clipmini's source."""
    for file in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(file.read_text(), filename=str(file))
        stack: list[tuple[ast.AST, str]] = [(tree, "<module>")]
        while stack:
            node, where = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
                if isinstance(child, ast.Call):
                    yield file.relative_to(PACKAGE).as_posix(), where, _dotted(child.func), child
                stack.append((child, name))


def _imports():
    for file in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                yield file.name, node.module or "", [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                yield file.name, "", [a.name for a in node.names]


def _unpickler_classes():
    """(file, class name) of every subclass of an Unpickler in clipmini's source."""
    for file in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ClassDef) and any(_dotted(b).endswith("Unpickler") for b in node.bases):
                yield file.relative_to(PACKAGE).as_posix(), node.name


def _jit_load_conditions():
    """For each torch.jit.load call in model.read_state_dict, the names in the tests of the ifs around it."""
    tree = ast.parse((PACKAGE / "model.py").read_text())
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "read_state_dict")
    found = []

    def visit(node, names):
        if isinstance(node, ast.Call) and _dotted(node.func) == "torch.jit.load":
            found.append(names)
        for field, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            inner = names | {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)} \
                if isinstance(node, ast.If) and field == "body" else names
            for child in children:
                if isinstance(child, ast.AST):
                    visit(child, inner)

    visit(function, frozenset())
    return found


def test_the_guard_sees_the_calls_it_guards():
    calls = {(f, w, c) for f, w, c, _ in _package_calls()}
    assert ("model.py", "read_state_dict", "torch.jit.load") in calls
    assert ("model.py", "read_state_dict", "torch.load") in calls
    assert ("torchscript.py", "_WeightsUnpickler") in set(_unpickler_classes())
    assert len(_jit_load_conditions()) == 1


# The restricted unpicklers, reviewed: each overrides find_class and builds only inert records.
UNPICKLERS_ALLOWED = {("torchscript.py", "_WeightsUnpickler")}


def test_the_only_unpickler_is_the_reviewed_one_and_torchscript_runs_only_on_trust_code():
    assert set(_unpickler_classes()) <= UNPICKLERS_ALLOWED
    assert all("trust_code" in names for names in _jit_load_conditions())


# Reviewed exceptions: (file, function) -> why a full unpickle is safe there.
FULL_UNPICKLE_ALLOWED = {
    ("distributed.py", "launch"): "reads back results its own spawned ranks wrote into its private (0700) temp folder",
}


def test_pickles_are_read_only_with_weights_only_and_torchscript_only_where_asked():
    unsafe = {"pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.loads", "shelve.open", "dill.load",
              "joblib.load", "yaml.unsafe_load", "yaml.full_load", "torch.hub.load", "os.system", "eval", "exec"}
    problems = []
    for file, where, callee, node in _package_calls():
        keywords = {k.arg: k.value for k in node.keywords}
        if callee in unsafe:
            problems.append(f"{file}:{node.lineno} {where}() calls {callee}")
        if callee.endswith("jit.load") and (file, where) != ("model.py", "read_state_dict"):
            problems.append(f"{file}:{node.lineno} {where}() calls {callee}; only model.read_state_dict may")
        if callee == "torch.load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True) and (file, where) not in FULL_UNPICKLE_ALLOWED:
                problems.append(f"{file}:{node.lineno} {where}() calls torch.load without weights_only=True")
        if callee.endswith("np.load") or callee.endswith("numpy.load"):
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{file}:{node.lineno} {where}() calls {callee} with allow_pickle")
        if callee == "yaml.load":
            loader = _dotted(keywords["Loader"]) if "Loader" in keywords else ""
            if loader in ("", "yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"):
                problems.append(f"{file}:{node.lineno} {where}() calls yaml.load with Loader={loader or 'default'}")
        if callee.startswith("subprocess.") and isinstance(keywords.get("shell"), ast.Constant) and keywords["shell"].value:
            problems.append(f"{file}:{node.lineno} {where}() runs a shell")
    for file, module, names in _imports():  # no aliasing around the checks above
        if module in ("pickle", "marshal", "dill", "torch.jit") or (module == "torch" and {"load", "jit"} & set(names)):
            problems.append(f"{file} imports {names} from {module}")
    assert not problems, "\n".join(problems)


def test_yaml_loader_of_train_is_a_safe_loader():
    import yaml

    from clipmini.train import _YamlLoader

    assert issubclass(_YamlLoader, yaml.SafeLoader)
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("!!python/object/apply:os.system ['true']", Loader=_YamlLoader)


# ------------------------------------------------------------------------------------------------
# load(name): sha256 first; TorchScript only with trust_code=True


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A real TorchScript archive of a tiny-vit CLIP (what OpenAI ships, in miniature) and its model."""
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    images = torch.randn(1, 3, 32, 32)
    tokens = torch.zeros(1, 32, dtype=torch.long)
    tokens[0, :4] = torch.tensor([1022, 5, 6, 1023])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (images, tokens), check_trace=False)
    path = tmp_path_factory.mktemp("server") / "tiny-vit.pt"
    traced.save(str(path))
    return path, model


@pytest.fixture
def jit_loads(monkeypatch):
    """Every torch.jit.load call, with the sha256 of the file at the moment it was opened."""
    real = torch.jit.load
    seen = []

    def spy(f, *args, **kwargs):
        seen.append((Path(f), hashlib.sha256(Path(f).read_bytes()).hexdigest()))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", spy)
    return seen


def _serve(monkeypatch, path: Path, sha: str) -> None:
    monkeypatch.setitem(KNOWN_CHECKPOINTS, "tiny-vit", (path.as_uri(), sha))


def _tampered_copy(path: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out = folder / path.name
    out.write_bytes(bytes(data))
    return out


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_load_by_name_opens_only_a_verified_archive(tmp_path, monkeypatch, archive, jit_loads):
    source, model = archive
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    cache = tmp_path / "cache"

    # a download whose bytes differ from the known sha256: refused before anything reads it
    _serve(monkeypatch, _tampered_copy(source, tmp_path / "evil-server"), sha)
    with pytest.raises(ValueError, match="sha256 mismatch .*tampered"):
        clipmini.load("tiny-vit", cache_dir=cache)
    assert jit_loads == [] and not any(cache.iterdir())

    # the genuine file: verified, cached, then read (its tensors only: torch.jit.load never runs)
    _serve(monkeypatch, source, sha)
    loaded = clipmini.load("tiny-vit", cache_dir=cache)
    assert jit_loads == [] and (cache / "tiny-vit.pt").read_bytes() == source.read_bytes()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))

    # a cached copy changed on disk (and a server now serving a bad file): never opened
    (cache / "tiny-vit.pt").write_bytes(_tampered_copy(source, tmp_path / "x").read_bytes())
    _serve(monkeypatch, _tampered_copy(source, tmp_path / "evil-server"), sha)
    with pytest.warns(UserWarning, match="does not match its sha256"), pytest.raises(ValueError, match="sha256 mismatch"):
        clipmini.load("tiny-vit", cache_dir=cache)
    assert jit_loads == []


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_runs_only_with_trust_code(tmp_path, archive, jit_loads):
    source, model = archive
    # the same weights as safetensors, as a weights-only pickle and as TorchScript: no code runs
    save(model, tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt", source):
        clipmini.load(path, config=model.config)
    assert jit_loads == []
    trusted = clipmini.load(source, config=model.config, trust_code=True)  # the caller's explicit choice
    assert [p for p, _ in jit_loads] == [source]
    read, _ = read_state_dict(source)
    assert all(torch.equal(read[k], v) for k, v in trusted.state_dict().items())
