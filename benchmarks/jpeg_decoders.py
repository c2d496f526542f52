"""Which library decodes a camera's JPEG (and PNG) fastest on this CPU, to RGB uint8 (H, W, 3).

The candidates for sensor_msgs/CompressedImage decoding: simplejpeg (libjpeg-turbo, bundled),
PyTurboJPEG (ctypes over a system libturbojpeg), opencv-python-headless (cv2.imdecode), Pillow.
Each decodes the same camera-like 640x480 frame (quality 90, 4:2:0, the usual image_transport
settings) from bytes to a contiguous RGB array, single-threaded; the median and p99 of
``--iters`` timed calls after a warm-up, the libraries taking turns call by call (a loaded
machine's stalls then fall on all of them alike). Libraries that are not installed are listed as such.

    .venv/bin/python benchmarks/jpeg_decoders.py [--iters 300] [--size 640x480]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np


def camera_frame(width: int, height: int) -> np.ndarray:
    """Smooth gradients + sensor noise: compresses like a real scene, not like white noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x % 256, y % 256, ((x + y) // 2) % 256], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def encoders():
    from PIL import Image

    def jpeg(img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90, subsampling=2)
        return buf.getvalue()

    def png(img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=3)
        return buf.getvalue()
    return jpeg, png


def decoders() -> dict[str, dict[str, object]]:
    """name -> {"jpeg": fn, "png": fn or None, "version": str} for the installed candidates."""
    out: dict[str, dict[str, object]] = {}
    try:
        import simplejpeg

        out["simplejpeg"] = {"jpeg": lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB"), "png": None,
                             "version": simplejpeg.__version__}
    except ImportError:
        out["simplejpeg"] = {}
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        tj = TurboJPEG()
        import turbojpeg

        out["PyTurboJPEG"] = {"jpeg": lambda b: tj.decode(b, pixel_format=TJPF_RGB), "png": None,
                              "version": getattr(turbojpeg, "__version__", "?")}
    except Exception as exc:  # ImportError, or the shared library missing (RuntimeError/OSError)
        out["PyTurboJPEG"] = {"error": f"{type(exc).__name__}: {str(exc)[:60]}"}
    try:
        import cv2

        cv2.setNumThreads(1)

        def cv(b: bytes) -> np.ndarray:
            bgr = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        out["opencv-python-headless"] = {"jpeg": cv, "png": cv, "version": cv2.__version__}
    except ImportError:
        out["opencv-python-headless"] = {}
    try:
        import PIL
        from PIL import Image

        def pil(b: bytes) -> np.ndarray:
            with Image.open(io.BytesIO(b)) as im:
                return np.asarray(im.convert("RGB"))
        out["Pillow"] = {"jpeg": pil, "png": pil, "version": PIL.__version__}
    except ImportError:
        out["Pillow"] = {}
    return out


def time_interleaved(fns: dict[str, object], payload: bytes, iters: int) -> dict[str, tuple[float, float]]:
    """Median and p99 ms per library, the libraries taking turns call by call, so a busy
    moment of the machine (other processes) falls on all of them alike."""
    for fn in fns.values():
        for _ in range(max(5, iters // 10)):
            fn(payload)
    samples = {name: np.empty(iters) for name in fns}
    for i in range(iters):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(payload)
            samples[name][i] = time.perf_counter() - t
    return {name: (float(np.median(s) * 1e3), float(np.percentile(s, 99) * 1e3)) for name, s in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--size", default="640x480")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    img = camera_frame(width, height)
    jpeg_enc, png_enc = encoders()
    payloads = {"jpeg": jpeg_enc(img), "png": png_enc(img)}
    print(f"{args.size} camera frame: JPEG q90 {len(payloads['jpeg']) / 1e3:.0f} kB, PNG {len(payloads['png']) / 1e3:.0f} kB; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {args.iters} timed decodes each")
    print("| library | version | JPEG median ms | JPEG p99 ms | PNG median ms | PNG p99 ms |")
    print("|---|---|---|---|---|---|")
    available = decoders()
    timings: dict[str, dict[str, tuple[float, float]]] = {}
    for kind in ("jpeg", "png"):
        fns = {name: e[kind] for name, e in available.items() if e and "error" not in e and e[kind] is not None}
        for name, fn in fns.items():
            decoded = fn(payloads[kind])
            assert decoded.shape == img.shape and decoded.dtype == np.uint8, (name, kind, decoded.shape)
            if kind == "png":
                assert np.array_equal(decoded, img), f"{name}: PNG is lossless"
            else:
                assert np.abs(decoded.astype(int) - img).mean() < 8, f"{name}: JPEG decodes to another picture"
        timings[kind] = time_interleaved(fns, payloads[kind], args.iters)
    for name, entry in available.items():
        if not entry or "error" in entry:
            print(f"| {name} | {entry.get('error', 'not installed').splitlines()[0] if entry else 'not installed'} | | | | |")
            continue
        cells = []
        for kind in ("jpeg", "png"):
            p50, p99 = timings[kind].get(name, (None, None))
            cells += ["n/a", "n/a"] if p50 is None else [f"{p50:.2f}", f"{p99:.2f}"]
        print(f"| {name} | {entry['version']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
