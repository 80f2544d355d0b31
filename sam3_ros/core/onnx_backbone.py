"""ONNX Runtime vision backbone: an exported SAM3 ViT + FPN neck run by ONNX Runtime.

The artifact comes from `python -m sam3_ros.tools.export_backbone` and is a pair of files in
an artifact folder: `<stem>.onnx` (+ `<stem>.onnx.data`, its external weights) and
`<stem>.json`, the sidecar that keys it. The key is the checkpoint's content hash (weights
files + config.json), the model input size, the precision (fp32, int8-dynamic, int8-static),
the form its attention was exported in (which depends on the provider, see
`PROVIDER_ATTENTION`) and the onnxruntime version that exported and checked it. The backend
loads only an artifact whose key equals the loaded checkpoint's; a stale or foreign artifact
is refused with the reason (configure fails), never loaded.

The graph outputs `last_hidden_state` and the FPN levels `fpn_0..fpn_{L-1}`. The FPN position
encodings depend only on each level's shape, dtype and device: they are computed in torch by
the checkpoint's own `Sam3SinePositionEmbedding` (the very call transformers makes), so they
are bit-identical to the torch backend's.

Providers (`onnx_provider`): cpu (CPUExecutionProvider: numpy views of the torch tensors in
and out, no extra copies), cuda (CUDAExecutionProvider) and tensorrt
(TensorrtExecutionProvider, engine cache folder and fp16/int8 flags), both with I/O binding
on torch CUDA tensors. A provider that this onnxruntime lacks, or that the session did not
really get, makes configure fail with the reason: there is no fallback to the CPU or torch.
The CUDA and TensorRT code paths have not been run on this project's machines (no GPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sam3_ros.core.errors import ModelLoadError
from sam3_ros.core.position_encoding import batch_one_positions

PRECISIONS = ("fp32", "int8-dynamic", "int8-static")
"""Artifact precisions (`onnx_precision`)."""

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
"""`onnx_provider` value -> ONNX Runtime execution provider."""

PROVIDER_ATTENTION = {"cpu": "mha", "cuda": "mha", "tensorrt": "explicit"}
"""The attention form (`sam3_ros.tools.onnx_attention`) each provider loads: MultiHeadAttention
(flash kernels, no score matrix in memory) on the CPU and CUDA, explicit MatMul/Softmax for
TensorRT (fused attention in FP16 TensorRT broke SAM3's features in DART's measurements)."""

ARTIFACT_FORMAT = 3
"""Version of the artifact layout (sidecar fields, graph inputs/outputs). 2: attention form in
the key (format-1 artifacts held the ONNX Attention op, which ORT's CPU kernel runs with the
full score matrix in memory: export again). 3: the sidecar holds each file's sha256 (format 2
held sizes only, and another checkpoint's export of the same architecture has the same
sizes)."""

SIDECAR_KIND = "sam3_ros.vision_backbone"

INPUT_NAME = "pixel_values"

OPTIONS = {
    "artifact_dir": "",
    "precision": "fp32",
    "provider": "cpu",
    "threads": 0,
    "trt_cache_dir": "",
    "trt_fp16": False,
    "trt_int8": False,
}
"""Backend options and their defaults (ROS parameters `onnx_<name>`)."""

_HASH_CHUNK = 16 << 20
_hash_cache: dict[tuple[str, int, int], str] = {}


def export_command(source: str, out_dir: str, precision: str, image_size: int,
                   attention: str = "mha") -> str:
    """The command that writes the artifact the backend looks for."""
    return (f"python -m sam3_ros.tools.export_backbone --model {source} --out {out_dir} "
            f"--precision {precision} --image-size {image_size} --attention {attention}")


def checkpoint_folder(source: str) -> Path:
    """The folder holding `source`'s files (a local folder, or the hub cache's snapshot).

    Raises:
        ModelLoadError: a hub id that is not in the local cache.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception as err:  # any hub error means: not available locally
        raise ModelLoadError(f"cannot hash checkpoint '{source}': not a folder and not in the "
                             f"local Hugging Face cache ({err})") from None


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _hash_cache.get(cache_key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    _hash_cache[cache_key] = digest.hexdigest()
    return _hash_cache[cache_key]


def checkpoint_hash(source: str) -> str:
    """SHA-256 over the checkpoint's config.json and weights files (names and contents).

    Files hashed: config.json, *.safetensors, *.bin, *.pt and *.pth in the checkpoint folder
    (sorted by name). Hashes are cached per process by (path, size, mtime).

    Raises:
        ModelLoadError: no folder, or no weights file in it.
    """
    from sam3_ros.core.text_cache import is_cache_file

    folder = checkpoint_folder(source)
    weights = sorted(p for p in folder.iterdir() if p.is_file()
                     and p.suffix in (".safetensors", ".bin", ".pt", ".pth")
                     and not is_cache_file(p))
    if not weights:
        raise ModelLoadError(f"cannot hash checkpoint '{source}': no weights file in {folder}")
    digest = hashlib.sha256()
    for path in [folder / "config.json", *weights]:
        digest.update(path.name.encode() + b"\0" + _file_sha256(path).encode() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtifactKey:
    """What an artifact was exported from and for; the backend loads only an exact match."""

    checkpoint_sha256: str
    image_size: int
    precision: str
    onnxruntime_version: str
    attention: str = "mha"
    format: int = ARTIFACT_FORMAT

    def mismatches(self, wanted: ArtifactKey) -> list[str]:
        """Why this artifact is not `wanted` (empty when it is)."""
        reasons = []
        if self.format != wanted.format:
            reasons.append(f"artifact format {self.format}, this package reads {wanted.format}")
        if self.checkpoint_sha256 != wanted.checkpoint_sha256:
            reasons.append(f"exported from another checkpoint "
                           f"(sha256 {self.checkpoint_sha256[:12]}..., the loaded one is "
                           f"{wanted.checkpoint_sha256[:12]}...)")
        if self.image_size != wanted.image_size:
            reasons.append(f"image size {self.image_size}, the model runs at {wanted.image_size}")
        if self.precision != wanted.precision:
            reasons.append(f"precision {self.precision}, {wanted.precision} asked for")
        if self.attention != wanted.attention:
            reasons.append(f"attention exported as '{self.attention}', the provider runs "
                           f"'{wanted.attention}'")
        if self.onnxruntime_version != wanted.onnxruntime_version:
            reasons.append(f"checked with onnxruntime {self.onnxruntime_version}, this is "
                           f"{wanted.onnxruntime_version}")
        return reasons


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def current_key(source: str, image_size: int, precision: str,
                attention: str = "mha") -> ArtifactKey:
    """The key an artifact for this checkpoint, size, precision and attention form must carry."""
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown onnx precision '{precision}' "
                             f"(supported: {', '.join(PRECISIONS)})")
    return ArtifactKey(checkpoint_hash(source), int(image_size), precision,
                       onnxruntime_version(), attention)


def loaded_key(loaded: Any, image_size: int, precision: str, attention: str = "mha") -> ArtifactKey:
    """`current_key` of a loaded checkpoint, refused if its files changed since loading.

    The hash reads the files after the weights were loaded: files replaced meanwhile (a
    deploy script) would key the old weights' graph under the new files' hash.

    Raises:
        ModelLoadError: as `current_key`, or the files changed after loading.
    """
    key = current_key(loaded.source, image_size, precision, attention)
    try:
        changed = loaded.files_changed()
    except OSError:
        changed = True
    if changed:
        raise ModelLoadError(f"the files of checkpoint '{loaded.source}' changed after it was "
                             f"loaded: load it again")
    return key


@dataclass
class Artifact:
    """An exported backbone: graph file, sidecar and what the sidecar says."""

    onnx_path: Path
    sidecar_path: Path
    key: ArtifactKey
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    """Per output, its shape for a batch of one."""
    meta: dict[str, Any]


def artifact_stem(precision: str, image_size: int, attention: str = "mha") -> str:
    return f"sam3_backbone_{image_size}px_{precision}_{attention}"


def write_sidecar(onnx_path: Path, key: ArtifactKey, output_names: list[str],
                  output_shapes: list[list[int]], meta: Mapping[str, Any]) -> Path:
    """Write `<stem>.json` next to `onnx_path` (atomically: a temp file renamed)."""
    data_path = onnx_path.with_name(onnx_path.name + ".data")
    written = [p for p in (onnx_path, data_path) if p.is_file()]
    files = {p.name: p.stat().st_size for p in written}
    digests = {p.name: _file_sha256(p) for p in written}
    sidecar = {
        "kind": SIDECAR_KIND,
        "key": asdict(key),
        "onnx_file": onnx_path.name,
        "files": files,
        "sha256": digests,
        "input": INPUT_NAME,
        "outputs": list(output_names),
        "output_shapes_batch1": [list(s) for s in output_shapes],
        **dict(meta),
    }
    from sam3_ros.core.text_cache import plain_file_mode

    path = onnx_path.with_suffix(".json")
    # A name of its own: two exports of one stem into a folder both wrote `<stem>.json.tmp`
    # and the second rename failed (or one sidecar held the other's text).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, plain_file_mode())  # as a plain open: nodes of other users read it
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(sidecar, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


MAX_SIDECAR_BYTES = 1 << 20


def read_artifact(sidecar_path: Path) -> Artifact:
    """Parse one sidecar.

    Raises:
        ModelLoadError: unreadable, not ours, or its files are missing or changed size.
    """
    try:
        # Any other JSON file in the folder (notes, a FIFO, a huge dump) is no sidecar: it
        # must not stop the search for the one that is.
        if not sidecar_path.is_file() or sidecar_path.stat().st_size > MAX_SIDECAR_BYTES:
            raise ValueError("not a regular file of at most 1 MiB")
        data = json.loads(sidecar_path.read_text())
        if not isinstance(data, dict) or data.get("kind") != SIDECAR_KIND:
            raise ValueError(f"kind is {data.get('kind') if isinstance(data, dict) else None!r}")
        key = ArtifactKey(**data["key"])
        onnx_path = sidecar_path.with_name(data["onnx_file"])
        names = tuple(str(n) for n in data["outputs"])
        shapes = tuple(tuple(int(v) for v in s) for s in data["output_shapes_batch1"])
        files = {str(k): int(v) for k, v in dict(data["files"]).items()}
        paths = {name: sidecar_path.with_name(name) for name in files}  # no paths: ValueError
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelLoadError(f"{sidecar_path}: not a sam3_ros backbone sidecar ({err})") from None
    # Every file the graph reads is listed (and so size- and sha256-checked): an edited
    # sidecar with `files` emptied loaded whatever graph lay there.
    data_name = onnx_path.name + ".data"
    needed = {onnx_path.name} | ({data_name} if onnx_path.with_name(data_name).exists() else set())
    if not needed <= set(files):
        raise ModelLoadError(f"{sidecar_path}: its files {sorted(needed - set(files))} are not "
                             f"listed (an edited sidecar): export again")
    for name, size in files.items():
        path = paths[name]
        if not path.is_file():
            raise ModelLoadError(f"{sidecar_path}: its file {name} is missing")
        if path.stat().st_size != size:
            raise ModelLoadError(f"{sidecar_path}: {name} is {path.stat().st_size} bytes, the "
                                 f"export wrote {size} (changed after export: export again)")
    return Artifact(onnx_path, sidecar_path, key, names, shapes, data)


def verify_contents(artifact: Artifact) -> None:
    """The artifact's files are the ones its export wrote (sha256, as the sidecar says).

    Sizes are checked on reading; contents only for the artifact about to load (hashed once
    per process and file version): another checkpoint's export copied over this one has the
    same sizes, and same-sized corruption passes a size check.

    Raises:
        ModelLoadError: a digest is missing or differs.
    """
    files = dict(artifact.meta.get("files") or {})
    try:
        digests = {str(k): str(v) for k, v in dict(artifact.meta.get("sha256") or {}).items()}
    except (TypeError, ValueError):
        digests = {}
    for name in files:
        if name not in digests:
            raise ModelLoadError(f"{artifact.sidecar_path}: no sha256 for {name} (an edited "
                                 f"sidecar): export again")
        if _file_sha256(artifact.sidecar_path.with_name(name)) != digests[name]:
            raise ModelLoadError(f"{artifact.sidecar_path}: {name} is not the file the export "
                                 f"wrote (its sha256 differs: replaced or corrupted); export "
                                 f"again")


def find_artifact(artifact_dir: str, wanted: ArtifactKey, source: str) -> Artifact:
    """The artifact in `artifact_dir` whose key is `wanted`.

    Raises:
        ModelLoadError: none matches; the message lists every artifact there and why it does
            not match, and the export command that writes the right one.
    """
    command = export_command(source, artifact_dir or "DIR", wanted.precision, wanted.image_size,
                             wanted.attention)
    if not artifact_dir:
        raise ModelLoadError(f"backend 'onnxruntime' needs onnx_artifact_dir (a folder of "
                             f"exported backbones); write one with: {command}")
    folder = Path(artifact_dir).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"onnx_artifact_dir '{artifact_dir}' is not a folder; write an "
                             f"artifact with: {command}")
    rejected = []
    for sidecar in sorted(p for p in folder.glob("*.json") if not p.name.endswith(".report.json")):
        try:
            artifact = read_artifact(sidecar)
        except ModelLoadError as err:
            rejected.append(str(err))
            continue
        reasons = artifact.key.mismatches(wanted)
        if not reasons:
            verify_contents(artifact)
            return artifact
        rejected.append(f"{sidecar.name}: " + "; ".join(reasons))
    found = (" Found: " + " | ".join(rejected) + ".") if rejected else " It holds no artifact."
    raise ModelLoadError(f"no ONNX backbone in '{artifact_dir}' matches the loaded checkpoint "
                         f"({wanted.precision}, {wanted.image_size} px, attention "
                         f"'{wanted.attention}', onnxruntime "
                         f"{wanted.onnxruntime_version}).{found} Export it with: {command}")


def provider_config(provider: str, options: Mapping[str, Any],
                    device_index: int = 0) -> tuple[str, dict[str, Any]]:
    """(ONNX Runtime provider name, its provider options) for an `onnx_provider` value.

    Raises:
        ModelLoadError: unknown provider, or one this onnxruntime build does not have.
    """
    import onnxruntime

    if provider not in PROVIDERS:
        raise ModelLoadError(f"unknown onnx_provider '{provider}' "
                             f"(supported: {', '.join(PROVIDERS)})")
    name = PROVIDERS[provider]
    available = onnxruntime.get_available_providers()
    if name not in available:
        raise ModelLoadError(
            f"onnx_provider '{provider}' needs {name}, which this onnxruntime "
            f"({onnxruntime.__version__}) does not have (available: {', '.join(available)}); "
            f"install the onnxruntime build that provides it (onnxruntime-gpu for CUDA and "
            f"TensorRT) -- there is no fallback to another provider")
    if provider == "cpu":
        return name, {}
    if provider == "cuda":
        return name, {"device_id": device_index}
    cache_dir = str(options.get("trt_cache_dir") or "")
    trt: dict[str, Any] = {
        "device_id": device_index,
        "trt_fp16_enable": bool(options.get("trt_fp16")),
        "trt_int8_enable": bool(options.get("trt_int8")),
    }
    if cache_dir:
        Path(cache_dir).expanduser().mkdir(parents=True, exist_ok=True)
        trt.update(trt_engine_cache_enable=True,
                   trt_engine_cache_path=str(Path(cache_dir).expanduser()))
    return name, trt


def trt_engine_dir(cache_dir: str, key: ArtifactKey, options: Mapping[str, Any],
                   gpu_name: str) -> str:
    """The folder under `cache_dir` for the TensorRT engines of one artifact ("" for none).

    ONNX Runtime names a cached engine after the graph's file name, its node and tensor
    names and the library versions, not its weights: every checkpoint exports to the same
    names, so a shared cache folder handed one checkpoint's engine (its weights built in) to
    another. One folder per artifact key, precision flags and GPU keeps them apart.
    """
    if not cache_dir:
        return ""
    identity = {**asdict(key), "trt_fp16": bool(options.get("trt_fp16")),
                "trt_int8": bool(options.get("trt_int8")), "gpu": gpu_name}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    stem = artifact_stem(key.precision, key.image_size, key.attention)
    return str(Path(cache_dir).expanduser() / f"{stem}_{digest}")


def make_session(onnx_path: Path, provider: str = "cpu", options: Mapping[str, Any] | None = None,
                 device_index: int = 0) -> Any:
    """An `InferenceSession` on exactly the provider asked for.

    Raises:
        ModelLoadError: the provider is unavailable, the session cannot be created, or
            ONNX Runtime gave the session another provider (it does so silently when a
            provider fails to initialise, e.g. missing CUDA libraries).
    """
    import onnxruntime

    options = dict(options or {})
    name, provider_options = provider_config(provider, options, device_index)
    session_options = onnxruntime.SessionOptions()
    session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = int(options.get("threads") or 0)
    if threads > 0:
        session_options.intra_op_num_threads = threads
    # Torch runs the heads on the same cores right after the backbone: ONNX Runtime's
    # workers spinning on after a run took cores from them (full-size heads 43 % slower
    # with spinning, 2 cores; README, ONNX Runtime).
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = [(name, provider_options)]
    if provider == "tensorrt" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        # Nodes TensorRT does not take run on CUDA rather than on the CPU.
        providers.append(("CUDAExecutionProvider", {"device_id": device_index}))
    try:
        session = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=session_options, providers=providers)
    except Exception as err:  # onnxruntime's own types
        raise ModelLoadError(f"ONNX Runtime cannot load {onnx_path} on {name}: {err}") from None
    got = session.get_providers()
    if not got or got[0] != name:
        raise ModelLoadError(f"ONNX Runtime gave the session {got} instead of {name} (the "
                             f"provider failed to initialise; see its log) -- refusing to run "
                             f"on another provider")
    return session


class OnnxRuntimeBackbone:
    """`VisionBackbone` running an exported artifact with ONNX Runtime.

    Args:
        session: The `InferenceSession` (`make_session`).
        artifact: The artifact it was made from.
        neck: The checkpoint's `Sam3VisionNeck` (for the position encodings only).
        device / dtype: Where and in which dtype the heads read the features.
        provider: The `onnx_provider` value.
    """

    name = "onnxruntime"

    def __init__(self, session: Any, artifact: Artifact, neck: Any, device: Any, dtype: Any,
                 provider: str = "cpu") -> None:
        self.session = session
        self.artifact = artifact
        self._neck = neck
        self._device = device
        self._dtype = dtype
        self.provider = provider
        self._n_fpn = len(artifact.output_names) - 1

    def __call__(self, pixel_values: Any) -> Any:
        import torch
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        if self.provider == "cpu":
            outputs = self._run_cpu(pixel_values)
        else:
            outputs = self._run_cuda(pixel_values)
        outputs = [t if t.device == self._device and t.dtype == self._dtype
                   else t.to(self._device, self._dtype) for t in outputs]
        fpn = tuple(outputs[1:])
        with torch.inference_mode():
            position = tuple(batch_one_positions(self._neck.position_encoding, t.shape,
                                                 t.device, t.dtype) for t in fpn)
        return Sam3VisionEncoderOutput(last_hidden_state=outputs[0], fpn_hidden_states=fpn,
                                       fpn_position_encoding=position)

    def _run_cpu(self, pixel_values: Any) -> list[Any]:
        import torch

        # A contiguous float32 CPU tensor is handed over as a numpy view (no copy); ORT's
        # outputs come back as numpy arrays that torch wraps without copying.
        px = pixel_values.detach()
        if px.device.type != "cpu" or px.dtype != torch.float32 or not px.is_contiguous():
            px = px.to("cpu", torch.float32).contiguous()
        outputs = self.session.run(list(self.artifact.output_names), {INPUT_NAME: px.numpy()})
        return [torch.from_numpy(o) for o in outputs]

    def _run_cuda(self, pixel_values: Any) -> list[Any]:
        # Not run on this project's machines (no GPU was lent): I/O binding on torch CUDA
        # tensors; torch's stream is synchronised before the run, ORT's after it.
        import numpy as np
        import torch

        px = pixel_values.detach()
        if px.dtype != torch.float32 or not px.is_contiguous():
            px = px.to(torch.float32).contiguous()
        batch = int(px.shape[0])
        binding = self.session.io_binding()
        index = px.device.index or 0
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(px.shape),
                           px.data_ptr())
        outputs = []
        for name, shape in zip(self.artifact.output_names, self.artifact.output_shapes,
                               strict=True):
            out = torch.empty((batch, *shape[1:]), dtype=torch.float32, device=px.device)
            binding.bind_output(name, "cuda", index, np.float32, tuple(out.shape),
                                out.data_ptr())
            outputs.append(out)
        torch.cuda.current_stream(px.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outputs

    def describe(self) -> str:
        key = self.artifact.key
        return (f"onnxruntime {key.onnxruntime_version} ({PROVIDERS[self.provider]}, "
                f"{key.precision}, {key.image_size} px, {self.artifact.onnx_path})")


def _onnxruntime_factory(loaded: Any, options: Mapping[str, Any]) -> OnnxRuntimeBackbone:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ModelLoadError(f"backend 'onnxruntime': unknown options {unknown} "
                             f"(known: {sorted(OPTIONS)})")
    opts = {**OPTIONS, **options}
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ModelLoadError(f"backend 'onnxruntime' needs the onnxruntime package: {err}") \
            from None
    provider = str(opts["provider"])
    # Provider first: an unavailable one is refused before any hashing or loading.
    provider_config(provider, opts)
    if provider == "cpu" and loaded.device.type != "cpu":
        raise ModelLoadError(f"onnx_provider 'cpu' with the model on {loaded.device}: use "
                             f"onnx_provider cuda or tensorrt, or device cpu")
    if provider != "cpu" and loaded.device.type != "cuda":
        raise ModelLoadError(f"onnx_provider '{provider}' needs the model on a CUDA device "
                             f"(device is {loaded.device})")
    image_size = int(loaded.processor.image_processor.size["height"])
    wanted = loaded_key(loaded, image_size, str(opts["precision"]), PROVIDER_ATTENTION[provider])
    artifact = find_artifact(str(opts["artifact_dir"]), wanted, loaded.source)
    device_index = loaded.device.index or 0
    if provider == "tensorrt":
        import torch

        opts["trt_cache_dir"] = trt_engine_dir(str(opts["trt_cache_dir"]), artifact.key, opts,
                                               torch.cuda.get_device_name(device_index))
    session = make_session(artifact.onnx_path, provider, opts, device_index)
    neck = loaded.detector.vision_encoder.neck
    check_graph(session, artifact, len(neck.fpn_layers))
    return OnnxRuntimeBackbone(session, artifact, neck, loaded.device, loaded.dtype, provider)


def check_graph(session: Any, artifact: Artifact, fpn_levels: int) -> None:
    """The graph, its sidecar and the checkpoint agree on inputs, outputs and their shapes.

    The checkpoint hash in the key says whose weights these are, not that the sidecar
    describes its graph: an edited sidecar (outputs dropped, swapped or renamed) loaded, and
    the heads then read the wrong FPN levels (masks silently wrong) or every frame failed.

    Raises:
        ModelLoadError: with what differs.
    """
    expected = ["last_hidden_state"] + [f"fpn_{i}" for i in range(fpn_levels)]
    graph = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    where = f"{artifact.onnx_path.name} ({artifact.sidecar_path.name})"
    if inputs != [INPUT_NAME]:
        raise ModelLoadError(f"{where}: graph inputs {inputs}, expected ['{INPUT_NAME}']")
    if graph != expected or list(artifact.output_names) != expected:
        raise ModelLoadError(f"{where}: outputs {graph} in the graph and "
                             f"{list(artifact.output_names)} in the sidecar, the checkpoint's "
                             f"backbone has {expected}: export again")
    if len(artifact.output_shapes) != len(expected):
        raise ModelLoadError(f"{where}: the sidecar has {len(artifact.output_shapes)} output "
                             f"shapes for {len(expected)} outputs: export again")
    for output, shape in zip(session.get_outputs(), artifact.output_shapes, strict=True):
        static = list(output.shape[1:])
        if len(shape) != len(output.shape) or any(
                isinstance(d, int) and d != s for d, s in zip(static, shape[1:], strict=True)):
            raise ModelLoadError(f"{where}: output {output.name} is {output.shape} in the "
                                 f"graph, {list(shape)} in the sidecar: export again")
