"""Reading the weights of a TorchScript archive without running any of its code.

OpenAI released CLIP as TorchScript archives. `torch.jit.load` compiles the archive's `code/` and
runs any `__setstate__` it defines, so a file can do whatever TorchScript can (overwrite a file,
for one) before a loader has looked at a single weight. The weights need none of that: the archive's
`data.pkl` pickles the module tree, each module a `__torch__.` class holding a dict of attributes,
and each tensor points at a raw record `data/N` beside it. `read_torchscript_weights` unpickles
`data.pkl` with an unpickler that builds only tensors, plain containers and inert stand-ins for the
`__torch__.` objects, and refuses everything else, then walks the stand-ins to the `state_dict`.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

__all__ = ["is_torchscript_archive", "read_torchscript_weights", "ScriptObject"]

# The storage classes a tensor record may name, and the dtype of its bytes.
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

_TRUST_HINT = (
    "clipmini reads TorchScript archives without running code from them; if you trust this file, "
    "trust_code=True opens it with torch.jit.load, which runs the archive's code"
)


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a zip with TorchScript's `code/` folder or `constants.pkl` (a `torch.save` zip has neither)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


class ScriptObject:
    """A stand-in for one `__torch__.` object of the archive: its class name and the state the
    archive stored for it. Nothing of the class's code exists or runs here."""

    qualified_name = "__torch__"

    def __setstate__(self, state) -> None:  # pickle's BUILD hands over the state; we only keep it
        self.state = state

    def __repr__(self) -> str:
        return f"ScriptObject({self.qualified_name})"


class _Inert:
    """Base of the records unpickling makes: pickle may not set their state (no BUILD)."""

    __slots__ = ()

    def __setstate__(self, state) -> None:
        what = type(self).__name__[1:]
        raise pickle.UnpicklingError(f"data.pkl sets the state of a {what}, which no archive does")


class _StorageType(_Inert):
    """What `torch.FloatStorage` and friends unpickle to: only the dtype they name."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Storage(_Inert):
    """A tensor record `data/<key>`: `numel` values of `dtype`, read only after unpickling."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor(_Inert):
    """A strided view of a `_Storage`, as `torch._utils._rebuild_tensor_v2` describes it."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
        if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
            raise pickle.UnpicklingError("a tensor in data.pkl does not point at a storage and an offset")
        self.storage, self.offset = storage, offset
        self.size, self.stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
        if len(self.size) != len(self.stride):
            raise pickle.UnpicklingError(f"a tensor's size {self.size} and stride {self.stride} differ in length")
        if all(self.size):  # a non-empty tensor must stay inside its storage
            last = offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= storage.numel:
                raise pickle.UnpicklingError(
                    f"a tensor of size {list(self.size)} at offset {offset} reaches past its storage "
                    f"of {storage.numel} values"
                )


def _int_tuple(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise pickle.UnpicklingError(f"a tensor's {what} must be a tuple of non-negative ints; got {value!r}")
    return value


def _same(value, *_):
    """`torch.jit._pickle`'s typed-list builders and type tags: the value itself."""
    return value


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _Tensor,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch.jit._pickle", f"build_{kind}list"): _same for kind in ("int", "double", "bool", "tensor")},
    ("torch.jit._pickle", "restore_type_tag"): _same,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _WeightsUnpickler(pickle.Unpickler):
    """Builds plain containers and inert records (`ScriptObject`, `_Tensor`, `_Storage`); any other
    global is refused, and no tensor exists until unpickling is over."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self._storages: dict[str, _Storage] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:  # an empty subclass that only carries the name
                self._classes[qualified] = type(name, (ScriptObject,), {"qualified_name": qualified})
            return self._classes[qualified]
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        raise pickle.UnpicklingError(
            f"data.pkl refers to {module}.{name}, which is neither a tensor nor a plain container"
        )

    def persistent_load(self, pid) -> _Storage:
        """A storage: `('storage', storage type, record key, device, number of values)`."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id in data.pkl: {pid!r}")
        _, kind, key, _device, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage reference in data.pkl: {pid!r}")
        storage = self._storages.setdefault(key, _Storage(key, kind.dtype, numel))
        if (storage.dtype, storage.numel) != (kind.dtype, numel):
            raise pickle.UnpicklingError(f"storage {key} is referenced with two different types or sizes")
        return storage


def _read_storage(archive: zipfile.ZipFile, prefix: str, storage: _Storage) -> torch.Tensor:
    """The values of one tensor record, `[numel]`."""
    name = f"{prefix}data/{storage.key}"
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"data.pkl names a tensor record {name} that the archive lacks") from None
    expected = storage.numel * torch.empty((), dtype=storage.dtype).element_size()
    if info.compress_type != zipfile.ZIP_STORED or info.file_size != expected:
        raise ValueError(
            f"tensor record {name} holds {info.file_size:,} bytes (zip compression {info.compress_type}); "
            f"data.pkl says {storage.numel:,} values of {storage.dtype}, {expected:,} bytes, stored uncompressed"
        )
    if storage.numel == 0:
        return torch.empty(0, dtype=storage.dtype)
    raw = bytearray(archive.read(name))  # writable, so the tensor may own it
    return torch.frombuffer(raw, dtype=torch.uint8).view(storage.dtype)  # [numel]


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    """The folder that holds `data.pkl` (`archive/` or the model's name)."""
    roots = sorted(n[: -len("data.pkl")] for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1)
    if len(roots) != 1:
        raise ValueError(f"a TorchScript archive holds one <folder>/data.pkl; found {len(roots)}")
    return roots[0]


def _collect_tensors(root: ScriptObject) -> dict[str, _Tensor]:
    """Every tensor attribute below `root`, keyed by its dotted path (the keys of `state_dict()`)."""
    found: dict[str, _Tensor] = {}
    stack, seen = [("", root)], set()
    while stack:
        prefix, obj = stack.pop()
        if id(obj) in seen:  # a module shared twice is listed under its first path, as state_dict does
            continue
        seen.add(id(obj))
        state = getattr(obj, "state", None)
        if not isinstance(state, dict):
            raise ValueError(
                f"{obj.qualified_name} stores its state as a {type(state).__name__} that only its own "
                f"__setstate__ code can restore; a traced model's weights never need that. {_TRUST_HINT}"
            )
        for name, value in reversed(state.items()):
            if not isinstance(name, str):
                raise ValueError(f"{obj.qualified_name} has an attribute named {name!r}, not a str")
            if isinstance(value, _Tensor):
                found[prefix + name] = value
            elif isinstance(value, ScriptObject):
                stack.append((f"{prefix}{name}.", value))
    return found


def read_torchscript_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The CPU tensors of a TorchScript archive by `state_dict` key, read without running its code.

    Raises ValueError if the archive holds anything but tensors, plain values and modules' attribute
    dicts (a class of its own, a custom `__setstate__`, tensor records that do not match).
    """
    with zipfile.ZipFile(Path(path)) as archive:
        prefix = _archive_prefix(archive)
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order != sys.byteorder:
                raise ValueError(f"the archive's tensors are {order}-endian; this machine is {sys.byteorder}-endian")
        try:
            root = _WeightsUnpickler(archive.read(f"{prefix}data.pkl")).load()
        except pickle.UnpicklingError as err:
            raise ValueError(f"{err}. {_TRUST_HINT}") from err
        if not isinstance(root, ScriptObject):
            raise ValueError(f"the archive's data.pkl holds a {type(root).__name__}, not a TorchScript module")
        records = _collect_tensors(root)
        values: dict[str, torch.Tensor] = {}  # storage key -> its values; tensors may share one
        for t in records.values():
            if t.storage.key not in values:
                values[t.storage.key] = _read_storage(archive, prefix, t.storage)
    return {name: values[t.storage.key].as_strided(t.size, t.stride, t.offset) for name, t in records.items()}
