"""Reading checkpoints: TorchScript archives, pickles, safetensors, bad files, and sha256 checks."""

import hashlib
import struct
import warnings
import zipfile

import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP
from safetensors.torch import save_file

import clipmini.model as clip_model
from clipmini.config import CLIPConfig, TextConfig, VisionConfig, get_config
from clipmini.model import (
    KNOWN_CHECKPOINTS,
    build_model,
    create_model,
    download_checkpoint,
    infer_config,
    load,
    read_state_dict,
    save,
    sha256_file,
)

torch.set_num_threads(1)

# A tiny open_clip model with one 64-channel head per layer. Its shapes are no released model's,
# so its files load with the config given (the shapes alone do not fix heads or activation).
VISION = dict(image_size=32, layers=2, width=64, patch_size=8, head_width=64)
TEXT = dict(context_length=16, vocab_size=512, width=64, heads=1, layers=2)
CONFIG = CLIPConfig(
    embed_dim=32,
    vision=VisionConfig(**VISION),
    text=TextConfig(context_length=16, vocab_size=512, width=64, layers=2, head_width=64),
    quick_gelu=True,
)


@pytest.fixture(scope="module")
def oracle() -> OpenClipCLIP:
    torch.manual_seed(0)
    return OpenClipCLIP(32, VISION, TEXT, quick_gelu=True).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 510, (2, 16), generator=g)
    tokens[0, 5], tokens[1, 9] = 511, 511  # EOT
    tokens[0, 6:], tokens[1, 10:] = 0, 0
    return images, tokens


def assert_same_features(model, reference, inputs):
    images, tokens = inputs
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens), rtol=1e-5, atol=1e-6)


# ----- the three formats -----


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript is deprecated; OpenAI ships it
def test_torchscript_archive_loads(tmp_path, oracle, inputs):
    # A real TorchScript archive like OpenAI's: the traced model plus the three scalar buffers.
    torch.manual_seed(0)
    traced_source = OpenClipCLIP(32, VISION, TEXT, quick_gelu=True).eval()
    traced_source.load_state_dict(oracle.state_dict())
    del traced_source.context_length, traced_source.vocab_size  # plain ints in open_clip
    traced_source.register_buffer("input_resolution", torch.tensor(32))
    traced_source.register_buffer("context_length", torch.tensor(16))
    traced_source.register_buffer("vocab_size", torch.tensor(512))
    with pytest.warns(torch.jit.TracerWarning):
        archive = torch.jit.trace(traced_source, inputs, check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    archive.save(str(path))
    assert any("/code/" in n for n in zipfile.ZipFile(path).namelist())
    assert "input_resolution" in archive.state_dict()

    # read without running the archive's code, to exactly the tensors torch.jit.load gives
    read, _ = read_state_dict(path)
    assert set(read) == set(archive.state_dict())
    assert all(torch.equal(read[k], v) and read[k].dtype == v.dtype for k, v in archive.state_dict().items())
    model = load(path, config=CONFIG)
    assert not model.training
    assert model.config.vision.image_size == 32 and model.context_length == 16
    assert set(model.state_dict()) == set(oracle.state_dict())
    assert_same_features(model, oracle, inputs)


def test_wrapped_pickle_with_module_prefix_loads(tmp_path, oracle, inputs):
    state_dict = {"module." + k: v for k, v in oracle.state_dict().items()}
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": state_dict}, path)
    assert_same_features(load(path, config=CONFIG), oracle, inputs)


def test_plain_pickle_in_fp16_loads_as_fp32(tmp_path, oracle, inputs):
    state_dict = {
        k: v.half() if v.is_floating_point() and v.dim() >= 2 else v for k, v in oracle.state_dict().items()
    }
    path = tmp_path / "half.pt"
    torch.save(state_dict, path)
    model = load(path, config=CONFIG)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(model.text_projection, state_dict["text_projection"].float())


def test_safetensors_loads(tmp_path, oracle, inputs):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in oracle.state_dict().items()}, str(path))
    assert_same_features(load(path, config=CONFIG), oracle, inputs)


def test_save_keeps_the_config(tmp_path, inputs):
    """tiny-vit's 32-channel heads cannot be read from shapes; `save` stores the config."""
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    path = save(model, tmp_path / "sub" / "tiny.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["tiny.safetensors"]  # no temp file left
    loaded = load(path)
    assert loaded.config == model.config and loaded.config.vision.heads == 2
    state_dict, config = read_state_dict(path)
    assert config == model.config and set(state_dict) == set(model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.randint(1, 1023, (2, 32))
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))


@pytest.mark.parametrize("name, vision_width", [("tiny-vit", "transformer width 64"),
                                                 ("tiny-rn", "attention-pool width 512")])
def test_an_unconfigured_file_is_refused_not_misread(tmp_path, name, vision_width):
    """The book's tiny models have 32-channel text heads: from shapes alone one 64-channel head would
    be built, with wrong features. A file without a config is refused; with it, it loads exactly."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))  # no config stored
    message = (
        rf"cannot load checkpoint .*model\.safetensors: the weights' shapes do not tell how many attention heads "
        rf"split the text width 64 and the vision {vision_width} or whether the activation is QuickGELU or GELU.*"
        r"Pass the architecture: config= a CLIPConfig or a model name"
    )
    with pytest.raises(ValueError, match=message):
        load(path)
    state_dict, _ = read_state_dict(path)
    with pytest.raises(ValueError, match="attention heads .* or whether the activation"):
        build_model(state_dict)
    with pytest.raises(ValueError, match=r"do not tell whether the activation is QuickGELU or GELU, and"):
        infer_config(state_dict, head_width=32)  # the heads given, the activation still unknown

    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 1023, (2, 32))
    with torch.no_grad():
        expected = model.encode_image(images), model.encode_text(tokens)
        for config in (name, model.config, model.config.to_dict()):
            loaded = load(path, config=config)
            assert loaded.config == model.config
            assert torch.equal(loaded.encode_image(images), expected[0])
            assert torch.equal(loaded.encode_text(tokens), expected[1])
        # what a guess of 64-channel heads gives: other text features
        guessed = build_model(state_dict, infer_config(state_dict, head_width=64, quick_gelu=True))
        assert guessed.config.text.heads == 1 and model.config.text.heads == 2
        assert not torch.allclose(guessed.encode_text(tokens), expected[1], atol=1e-4)


def test_shapes_fix_the_architecture_only_for_openais_releases():
    """Exactly the shapes of a released model: OpenAI's 64-channel heads and QuickGELU. Any other: refused."""
    def shapes_of(config):
        with torch.device("meta"):
            return clip_model.CLIP(config).state_dict()

    almost = get_config("ViT-B/32")
    almost.text.layers = 11  # one text layer short of ViT-B/32: no release has these shapes
    with pytest.raises(ValueError, match="not the shapes of one of OpenAI's released models"):
        infer_config(shapes_of(almost))
    assert infer_config(shapes_of(almost), head_width=64, quick_gelu=True) == almost
    for name in KNOWN_CHECKPOINTS:
        assert infer_config(shapes_of(get_config(name))) == get_config(name), name
    laion = infer_config(shapes_of(get_config("ViT-B/32")), quick_gelu=False)  # open_clip's GELU ViT-B-32
    assert not laion.quick_gelu and laion.vision.heads == 12 and laion.text.heads == 8


def test_config_may_be_a_name_or_a_dict_and_anything_else_is_a_type_error(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    path = save(model, tmp_path / "tiny.safetensors")
    assert load(path, config="tiny-vit").config == load(path, config=model.config.to_dict()).config == model.config
    with pytest.raises(TypeError, match="load's config expects a model name, a CLIPConfig or a dict; got int"):
        load(path, config=3)
    with pytest.raises(TypeError, match="config expects a model name, a CLIPConfig or a dict; got list"):
        build_model(model.state_dict(), config=[1])
    with pytest.raises(ValueError, match="unknown model name 'tiny-vt'"):
        load(path, config="tiny-vt")


# ----- bad files and foreign weights -----


class Hostile(torch.nn.Module):
    """A TorchScript module whose __setstate__ overwrites the file at `path` when the archive is opened."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.text_projection = torch.nn.Parameter(torch.zeros(2, 2))

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self):
        return (self.path, self.text_projection, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]):
        self.path, self.text_projection, self.training = state
        victim = torch.from_file(self.path, shared=True, size=8, dtype=torch.uint8)  # maps the file
        victim.fill_(88)  # writes "XXXXXXXX" over its first 8 bytes
        self.text_projection.data.add_(float(victim.sum()) * 0.0)  # keeps the write alive in the graph


def test_a_hostile_torchscript_archive_never_runs(tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("precious user data\n")
    path = tmp_path / "ViT-B-32.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Hostile(str(victim))).save(str(path))
        torch.jit.load(str(path))  # the teeth: opened the TorchScript way, it does overwrite the file
    assert victim.read_text() == "XXXXXXXX user data\n"
    victim.write_text("precious user data\n")

    message = r"ViT-B-32\.pt: __torch__\..*Hostile stores its state as a tuple that only its own __setstate__" \
              r".*trust_code=True"
    with pytest.raises(ValueError, match=message):
        load(path)
    with pytest.raises(ValueError, match=message):
        read_state_dict(path)
    assert victim.read_text() == "precious user data\n"


def _str(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()  # BINUNICODE


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def _tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _tensor(numel=4, offset=0, size=(2, 2), stride=(2, 1)) -> bytes:
    """Pickle opcodes of one float32 tensor in record data/0, as torch.jit.save writes them."""
    storage = b"(" + _str("storage") + b"ctorch\nFloatStorage\n" + _str("0") + _str("cpu") + _int(numel) + b"tQ"
    hooks = b"ccollections\nOrderedDict\n)R"
    arguments = storage + _int(offset) + _tuple(size) + _tuple(stride) + b"\x89" + hooks  # \x89: False
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + arguments + b"tR"


def _module(attributes: bytes) -> bytes:
    """A data.pkl whose root is a `__torch__.M` holding `attributes` (name, value opcode pairs)."""
    return b"\x80\x02c__torch__\nM\n)\x81}(" + attributes + b"ub."


WEIGHT = _str("w") + _tensor()
HANDMADE = {  # data.pkl, records (None: the right 16 bytes), the error the archive must raise
    "a view past its storage": (_module(_str("w") + _tensor(offset=1)), None, r"reaches past its storage of 4 values"),
    "a record shorter than data.pkl says": (_module(WEIGHT), {"0": bytes(12)},
                                            r"data/0 holds 12 bytes .* 16 bytes, stored uncompressed"),
    "a compressed record": (_module(WEIGHT), {"0": ("deflate", bytes(16))}, r"stored uncompressed"),
    "a missing record": (_module(WEIGHT), {}, r"names a tensor record archive/data/0 that the archive lacks"),
    "a global that is not a tensor": (_module(_str("w") + b"cbuiltins\neval\n" + _str("1") + b"\x85R"), None,
                                      r"refers to builtins\.eval, which is neither a tensor nor a plain container"),
    "a tensor given state by BUILD": (_module(WEIGHT + b"}b"), None, r"sets the state of a Tensor"),
    "a root that is not a module": (b"\x80\x02}(" + WEIGHT + b"u.", None, r"holds a dict, not a TorchScript module"),
}


def _handmade_archive(path, data_pkl: bytes, records) -> None:
    records = {"0": bytes(struct.pack("<4f", 0.0, 1.0, 2.0, 3.0))} if records is None else records
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/code/__torch__.py", "")  # what marks a TorchScript archive
        for key, value in records.items():
            compression = zipfile.ZIP_DEFLATED if isinstance(value, tuple) else zipfile.ZIP_STORED
            archive.writestr(f"archive/data/{key}", value[1] if isinstance(value, tuple) else value, compression)


def test_a_handmade_archive_is_read_by_its_pickle_alone(tmp_path):
    path = tmp_path / "handmade.pt"
    view = _str("v") + _tensor(numel=4, offset=1, size=(2,), stride=(2,))  # a strided view of the same record
    _handmade_archive(path, _module(WEIGHT + view), None)
    state_dict, config = read_state_dict(path)
    assert config is None and sorted(state_dict) == ["v", "w"]
    assert torch.equal(state_dict["w"], torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(state_dict["v"], torch.tensor([1.0, 3.0]))


@pytest.mark.parametrize("case", HANDMADE)
def test_a_malformed_archive_is_refused_with_its_problem(tmp_path, case):
    data_pkl, records, message = HANDMADE[case]
    path = tmp_path / "handmade.pt"
    _handmade_archive(path, data_pkl, records)
    with pytest.raises(ValueError, match=rf"could not read checkpoint .*handmade\.pt: .*{message}"):
        load(path)



@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("fmt", ["pickle", "safetensors", "torchscript"])
def test_truncated_file_raises(tmp_path, oracle, inputs, fmt):
    path = tmp_path / f"model.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "pickle":
        torch.save(oracle.state_dict(), path)
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in oracle.state_dict().items()}, str(path))
    else:
        with pytest.warns(torch.jit.TracerWarning):
            torch.jit.trace(oracle, inputs, check_trace=False).save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"could not read checkpoint .*model\..*truncated, corrupt"):
        load(path)


def test_garbage_file_raises(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    with pytest.raises(ValueError, match="notes.pt.*truncated, corrupt or not a checkpoint"):
        load(path)


class Payload:  # an arbitrary object: weights_only=True must refuse to unpickle it
    pass


def test_pickle_with_arbitrary_objects_is_refused(tmp_path, oracle):
    path = tmp_path / "risky.pt"
    torch.save({"state_dict": oracle.state_dict(), "extra": Payload()}, path)
    with pytest.raises(ValueError, match="risky.pt.*weights_only=True"):
        load(path)


def test_foreign_state_dict_raises(tmp_path):
    foreign = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 2))
    path = tmp_path / "resnet.pt"
    torch.save(foreign.state_dict(), path)
    with pytest.raises(ValueError, match="resnet.pt.*not an OpenAI-format CLIP state_dict.*text_projection"):
        load(path)


def test_non_tensor_values_raise(tmp_path, oracle):
    path = tmp_path / "checkpoint.pt"
    torch.save({**oracle.state_dict(), "epoch": 3}, path)
    with pytest.raises(ValueError, match="must be tensors.*epoch"):
        load(path)


def test_missing_unexpected_and_misshaped_keys_are_named(oracle):
    base = oracle.state_dict()

    missing = dict(base)
    del missing["ln_final.bias"], missing["visual.ln_post.weight"]
    with pytest.raises(ValueError, match="missing keys: ") as error:
        build_model(missing, CONFIG)
    assert "visual.ln_post.weight" in str(error.value) and "ln_final.bias" in str(error.value)
    assert "unexpected" not in str(error.value) and "mis-shaped" not in str(error.value)

    unexpected = {**base, "visual.head.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"unexpected keys: visual\.head\.weight"):
        build_model(unexpected, CONFIG)

    misshaped = {**base, "ln_final.bias": torch.zeros(63)}
    with pytest.raises(ValueError, match=r"mis-shaped keys: ln_final\.bias \[63\] \(expected \[64\]\)"):
        build_model(misshaped, CONFIG)

    # Many problems at once: the message shows the first few and the count.
    many = {k: v for k, v in base.items() if not k.startswith("visual.transformer.resblocks.1.")}
    with pytest.raises(ValueError, match=r"missing keys: .*\.\.\. \(12 in all\)"):
        build_model(many, config=CONFIG)


def test_missing_file_and_unknown_name():
    with pytest.raises(FileNotFoundError, match="not a known checkpoint name.*ViT-B/32"):
        load("no/such/file.pt")
    with pytest.raises(ValueError, match="unknown checkpoint 'ViT-H/14'"):
        download_checkpoint("ViT-H/14")


# ----- known checkpoints, cache and sha256 -----


def test_known_checkpoints_embed_their_sha256():
    assert set(KNOWN_CHECKPOINTS) == {
        "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"
    }
    for url, sha in KNOWN_CHECKPOINTS.values():
        assert url.startswith("https://openaipublic.azureedge.net/clip/models/")
        assert url.split("/")[-2] == sha and len(sha) == 64


def test_sha256_file(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert sha256_file(path, chunk=4096) == hashlib.sha256(data).hexdigest()


@pytest.fixture
def served_checkpoint(tmp_path, monkeypatch):
    """A tiny model's checkpoint 'served' from a file:// URL under a known name."""
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    source = save(model, tmp_path / "server" / "tiny-vit.safetensors")
    entry = (source.as_uri(), sha256_file(source))
    monkeypatch.setitem(KNOWN_CHECKPOINTS, "tiny-vit", entry)
    return model, source, tmp_path / "cache"


def test_download_verifies_and_caches(served_checkpoint, inputs):
    model, source, cache = served_checkpoint
    path = download_checkpoint("tiny-vit", cache)
    assert path == cache / "tiny-vit.safetensors" and path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["tiny-vit.safetensors"]
    source.unlink()  # the cached copy is used from now on, with no download
    loaded = load("tiny-vit", cache_dir=cache)
    assert loaded.config == model.config
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))


def test_tampered_download_is_rejected(served_checkpoint):
    _, source, cache = served_checkpoint
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF
    source.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch .*tampered"):
        download_checkpoint("tiny-vit", cache)
    assert list(cache.iterdir()) == []  # nothing half-written or unverified is kept


def test_tampered_cache_is_downloaded_again(served_checkpoint):
    _, source, cache = served_checkpoint
    cache.mkdir()
    cached = cache / "tiny-vit.safetensors"
    cached.write_bytes(b"tampered")
    with pytest.warns(UserWarning, match="does not match its sha256"):
        path = download_checkpoint("tiny-vit", cache)
    assert path.read_bytes() == source.read_bytes()


def test_cache_dir_defaults_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPMINI_CACHE", str(tmp_path / "c"))
    assert clip_model.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CLIPMINI_CACHE")
    assert clip_model.default_cache_dir().parts[-2:] == (".cache", "clipmini")
