"""One call from an export directory to a ready Engine, ONNX or torch, for any family.

Both engines load the same export directory: the ONNX engine its graphs, the torch engine
the policy weights stored next to them, and both the family's processor, so ``model_hash``
(and every calibration keyed on it) is the same whichever engine serves. torch is imported
only for ``engine="torch"``: this module is on the ONNX serving path, which must run without
torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflex_ros.engine.bundle import Bundle, load_bundle
from reflex_ros.engine.types import Engine, ExportError, ProviderUnavailableError, ReflexError
from reflex_ros.vocab import DECOMPOSED, ENGINES, ONNX, TORCH_DEVICES


def load_engine(
    export_dir: Path | str,
    engine: str = ONNX,
    provider: str | None = None,
    dtype: str = "fp32",
    cuda_graph: bool = False,
    layout: str | None = None,
    **kwargs: Any,
) -> Engine:
    """Open ``export_dir`` with the chosen runtime.

    onnx: ``provider`` None walks TensorRT -> CUDA -> CPU, a named one is strict;
    ``layout`` picks decomposed/monolithic (default: the export's ``export_kind``).
    torch: ``provider`` is the device ("cuda"/"cpu"; None = cuda if available); ``dtype``
    fp32/bf16/fp16; ``cuda_graph`` captures prefix + NFE loop (refused on CPU).
    Extra keyword arguments go to the engine's constructor.
    """
    if engine not in ENGINES:
        raise ReflexError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    bundle = load_bundle(export_dir)
    if engine == ONNX:
        from reflex_ros.engine.onnx_runtime import OnnxEngine

        return OnnxEngine(
            bundle.export_dir, provider=provider, layout=layout, dtype=dtype, cuda_graph=cuda_graph,
            bundle=bundle, **kwargs,
        )
    if layout not in (None, DECOMPOSED):
        raise ReflexError(f"layout {layout!r} applies to the ONNX engine only; the torch engine runs the policy weights")
    return _load_torch(bundle, provider, dtype, cuda_graph, **kwargs)


def load_bundle_model(bundle: Bundle, device: Any = "cpu", dtype: Any = "fp32") -> Any:
    """The family's torch model stored in an export, or an ExportError (with the fix).

    Shared by the torch engine and `reflex-ros validate`, which both rebuild the model the
    ONNX graphs were exported from."""
    family = bundle.family()
    try:
        return family.load_model(bundle.export_dir, bundle.policy_config(), device=device, dtype=dtype)
    except ReflexError:
        raise
    except Exception as exc:
        raise bundle.error(
            f"could not load the policy weights in {bundle.export_dir} ({type(exc).__name__}: {exc})"
        ) from None


def _load_torch(bundle: Bundle, provider: str | None, dtype: str, cuda_graph: bool, **kwargs: Any) -> Engine:
    import torch

    from reflex_ros.engine.precision import resolve_dtype
    from reflex_ros.engine.torch_runtime import TorchEngine, resolve_device

    if provider is not None and provider not in TORCH_DEVICES:
        raise ProviderUnavailableError(f"torch engine: device {provider!r} is not one of {list(TORCH_DEVICES)}")
    try:
        device = resolve_device(provider or ("cuda" if torch.cuda.is_available() else "cpu"), cuda_graph)
        resolve_dtype("bf16" if dtype == "fp8" else dtype)  # fp8: bf16 weights + e4m3 GEMMs (TorchEngine)
    except (RuntimeError, ValueError) as exc:  # unknown dtype name
        raise ProviderUnavailableError(f"torch engine: {exc}") from None
    processor = bundle.processor()
    model = load_bundle_model(bundle, device=device, dtype="bf16" if dtype == "fp8" else dtype)  # straight to the device
    c = bundle.config
    # The torch engine runs the same loop as the decomposed graphs: any NFE the export serves.
    layout = DECOMPOSED if DECOMPOSED in c.layouts else c.default_layout
    family = bundle.family()
    return TorchEngine(
        model, processor, device=device, dtype=dtype, cuda_graph=cuda_graph, model_hash=bundle.model_hash,
        supported_nfe=c.supported_nfe_for(layout), default_nfe=c.default_nfe_for(layout),
        fast_path=family.fast_path, model_type=c.model_type,
        extra={"preset": str(c.preset), "source": c.source, "export_dir": str(bundle.export_dir)}, **kwargs,
    )


__all__ = ["ExportError", "load_bundle_model", "load_engine"]
