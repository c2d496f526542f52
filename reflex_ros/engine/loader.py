"""One call from an export directory to a ready Engine, ONNX or torch.

Both engines load the same export directory: the ONNX engine its graphs, the torch engine
the policy weights stored next to them, so ``model_hash`` (and every calibration keyed on
it) is the same whichever engine serves. torch is imported only for ``engine="torch"``: this
module is on the ONNX serving path, which must run without torch.
"""

from __future__ import annotations

from pathlib import Path

from reflex_ros.engine.bundle import load_bundle, remediation
from reflex_ros.engine.types import Engine, ExportError, ProviderUnavailableError, ReflexError

ENGINES: tuple[str, ...] = ("onnx", "torch")


def load_engine(
    export_dir: Path | str,
    engine: str = "onnx",
    provider: str | None = None,
    dtype: str = "fp32",
    cuda_graph: bool = False,
    variant: str | None = None,
    **kwargs,
) -> Engine:
    """Open ``export_dir`` with the chosen runtime.

    onnx: ``provider`` None walks TensorRT -> CUDA -> CPU, a named one is strict;
    ``variant`` picks decomposed/monolithic (default: the export's ``export_kind``).
    torch: ``provider`` is the device ("cuda"/"cpu"; None = cuda if available); ``dtype``
    fp32/bf16/fp16; ``cuda_graph`` captures prefix + NFE loop (refused on CPU).
    Extra keyword arguments go to the engine's constructor.
    """
    if engine not in ENGINES:
        raise ReflexError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    bundle = load_bundle(export_dir)
    if engine == "onnx":
        from reflex_ros.engine.onnx_runtime import OnnxEngine

        return OnnxEngine(
            bundle.export_dir, provider=provider, variant=variant, dtype=dtype, cuda_graph=cuda_graph,
            bundle=bundle, **kwargs,
        )
    if variant not in (None, "decomposed"):
        raise ReflexError(f"variant {variant!r} applies to the ONNX engine only; the torch engine runs the policy weights")
    return _load_torch(bundle, provider, dtype, cuda_graph, **kwargs)


def load_bundle_policy(bundle, device: str = "cpu", dtype: str = "fp32"):
    """The torch policy stored in an export, as an ExportError (with the fix) if it won't load.

    Shared by the torch engine and `reflex-ros validate`, which both rebuild the policy the
    ONNX graphs were exported from."""
    from reflex_ros.engine.weights import load_policy

    try:
        return load_policy(bundle.export_dir, device=device, dtype=dtype)
    except ReflexError:
        raise
    except Exception as exc:
        raise ExportError(
            f"could not load the policy weights in {bundle.export_dir} ({type(exc).__name__}: {exc}); "
            f"{remediation(bundle.export_dir, bundle.preset)}"
        ) from None


def _load_torch(bundle, provider: str | None, dtype: str, cuda_graph: bool, **kwargs) -> Engine:
    import torch

    from reflex_ros.engine.torch_runtime import TorchEngine, resolve_device
    from reflex_ros.engine.weights import resolve_dtype

    try:
        device = resolve_device(provider or ("cuda" if torch.cuda.is_available() else "cpu"), cuda_graph)
        resolve_dtype(dtype)
    except (RuntimeError, ValueError) as exc:  # torch.device("bogus") / unknown dtype name
        raise ProviderUnavailableError(f"torch engine: {exc}") from None
    model = load_bundle_policy(bundle, device=device, dtype=dtype)  # straight to the device
    # The torch engine runs the same loop as the decomposed graphs: any NFE the export serves.
    variant = "decomposed" if "decomposed" in bundle.variants else bundle.default_variant
    return TorchEngine(
        model, device=device, dtype=dtype, cuda_graph=cuda_graph, model_hash=bundle.model_hash,
        supported_nfe=bundle.supported_nfe(variant), default_nfe=bundle.default_nfe(variant), **kwargs,
    )
