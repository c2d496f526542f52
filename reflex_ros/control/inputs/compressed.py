"""``sensor_msgs/msg/CompressedImage`` (JPEG, PNG) -> RGB uint8 ``(H, W, 3)`` at the camera's size.

The codec comes from the ``format`` field as image_transport's compressed plugin writes it
(``"rgb8; jpeg compressed bgr8"``, ``"bgr8; png compressed bgr8"``) or as simpler drivers do
(``"jpeg"``, ``"png"``); an empty or unrecognised format is sniffed from the payload's magic
bytes. The plugin's "compressed bgr8" is the OpenCV matrix it encoded: the file itself stores
true colours, so decoding to RGB is right for both.

* :meth:`CompressedImageDecoder.check` (the subscription callback, every frame) is O(1): the
  codec is known, the payload starts with that codec's signature and, for JPEG, its header
  parses; for PNG the header says 8 bits per channel (16-bit depth PNGs are not camera
  images a policy takes; ``compressedDepth`` is refused for the same reason).
* :meth:`CompressedImageDecoder.decode` (once per inference, for the frames the synced
  observation uses) decompresses: JPEG with simplejpeg (libjpeg-turbo; the fastest of the
  candidates measured on a 640x480 frame, ``benchmarks/jpeg_decoders.py``), PNG with Pillow.
  A corrupt or truncated payload raises :class:`~reflex_ros.engine.types.ObservationError`
  naming the topic; the observation assembler drops that frame and reports it.

:func:`encode_image` is the inverse (tests, benchmarks, a simulated camera).
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np

from reflex_ros.engine.types import ObservationError

MSG_TYPE = "sensor_msgs/msg/CompressedImage"
TOPIC_SUFFIX = "/compressed"  # image_transport's name for the compressed stream of a camera
JPEG, PNG = "jpeg", "png"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _as_bytes(data: Any) -> bytes | memoryview:
    """The payload as a buffer (rclpy gives array.array('B'), rosbags a numpy array)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return data
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data, dtype=np.uint8)).cast("B")
    if isinstance(data, list | tuple):
        return bytes(data)
    return memoryview(data).cast("B")


def codec_of(fmt: str, payload: bytes | memoryview) -> str | None:
    """``jpeg`` / ``png`` from the format field, else from the payload's signature (None: neither)."""
    text = fmt.lower()
    if "compresseddepth" in text:
        return None
    if "jpeg" in text or "jpg" in text:
        return JPEG
    if "png" in text:
        return PNG
    head = bytes(payload[:8])
    if head.startswith(_JPEG_MAGIC):
        return JPEG
    if head.startswith(_PNG_MAGIC):
        return PNG
    return None


class CompressedImageDecoder:
    """JPEG and PNG; colour, grey (replicated to RGB) or with alpha (dropped)."""

    msg_type = MSG_TYPE

    def _codec(self, msg: Any, topic: str) -> tuple[str, bytes | memoryview]:
        fmt = str(msg.format)
        payload = _as_bytes(msg.data)
        if len(payload) == 0:
            raise ObservationError(f"{topic}: empty CompressedImage payload (format {fmt!r})")
        codec = codec_of(fmt, payload)
        if codec is None:
            raise ObservationError(
                f"{topic}: unsupported CompressedImage format {fmt!r}; supported: jpeg and png (image_transport's "
                f"'compressed' plugin, 8 bits per channel)")
        head = bytes(payload[:33])
        if codec == JPEG and not head.startswith(_JPEG_MAGIC):
            raise ObservationError(f"{topic}: corrupt JPEG payload ({len(payload)} bytes, format {fmt!r}): it does not "
                                   f"start with the JPEG signature (starts {head[:4].hex()})")
        if codec == PNG:
            if not head.startswith(_PNG_MAGIC) or len(head) < 26 or head[12:16] != b"IHDR":
                raise ObservationError(f"{topic}: corrupt PNG payload ({len(payload)} bytes, format {fmt!r}): no PNG "
                                       f"signature and header (starts {head[:8].hex()})")
            bit_depth = head[24]
            if bit_depth > 8:
                width, height = struct.unpack(">II", head[16:24])
                raise ObservationError(f"{topic}: {bit_depth}-bit PNG ({width}x{height}) is not an 8-bit camera image; "
                                       "a depth stream cannot feed a policy camera")
        return codec, payload

    def check(self, msg: Any, topic: str) -> None:
        codec, payload = self._codec(msg, topic)
        if codec == JPEG:
            import simplejpeg

            try:
                height, width, _, _ = simplejpeg.decode_jpeg_header(payload)
            except ValueError as exc:
                raise ObservationError(f"{topic}: corrupt JPEG payload ({len(payload)} bytes): {exc}") from None
            if height <= 0 or width <= 0:
                raise ObservationError(f"{topic}: empty JPEG image ({width}x{height})")

    def decode(self, msg: Any, topic: str) -> np.ndarray:
        codec, payload = self._codec(msg, topic)
        if codec == JPEG:
            import simplejpeg

            try:
                return simplejpeg.decode_jpeg(payload, colorspace="RGB")
            except ValueError as exc:  # truncated / corrupt entropy data (strict: warnings are errors)
                raise ObservationError(f"{topic}: corrupt JPEG payload ({len(payload)} bytes): {exc}") from None
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(payload)) as im:
                im.load()
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                return np.asarray(rgb)
        except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as exc:
            raise ObservationError(f"{topic}: corrupt PNG payload ({len(payload)} bytes): {exc}") from None


def image_transport_format(codec: str, source_encoding: str = "rgb8") -> str:
    """The ``format`` image_transport's compressed plugin writes for an 8-bit colour image."""
    if codec not in (JPEG, PNG):
        raise ValueError(f"codec must be {JPEG!r} or {PNG!r}, got {codec!r}")
    return f"{source_encoding}; {codec} compressed bgr8"


def encode_image(rgb: np.ndarray, codec: str, quality: int = 90) -> bytes:
    """RGB uint8 ``(H, W, 3)`` -> JPEG (simplejpeg, 4:2:0) or PNG (Pillow) bytes."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if codec == JPEG:
        import simplejpeg

        return simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB", colorsubsampling="420")
    if codec == PNG:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=3)
        return buf.getvalue()
    raise ValueError(f"codec must be {JPEG!r} or {PNG!r}, got {codec!r}")
