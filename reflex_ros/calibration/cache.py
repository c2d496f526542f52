"""The calibration cache: one JSON file (schema v1), shared by every node on the host.

Layout (the seed's schema v1, ``schema_version`` first, plus a few keys of ours per entry)::

    {"schema_version": 1, "reflex_version": "0.1.0", "calibration_date": "...Z",
     "hardware_fingerprint": {...},
     "entries": {"so100::3f2a...": {"chunk_size": 50, "nfe": 10, "latency_compensation_ms": 60.0,
                 "provider": "CPUExecutionProvider", "variant": "fp32",
                 "measurement_quality": {"warmup_iters": 10, "measurement_iters": 100,
                     "median_ms": 3.1, "p99_ms": 4.0, "n_outliers_dropped": 2, "quality_score": 0.76},
                 "expert_step_ms": 0.2, "prefix_ms": 0.9, "preprocess_ms": 0.1, "source": "measured",
                 "latency_source": "learned", "obs_to_publish_p95_ms": 130.7, "actuation_lag_ms": 65.0,
                 "measured_at": "...Z", "updated_at": "...Z"}}}

Why the extra keys: ``expert_step_ms``/``prefix_ms``/``preprocess_ms`` let a live ``control_frequency_hz``
change re-run the resolver without re-measuring; ``source`` says whether a bag or this host
produced it; ``latency_source`` whether ``latency_compensation_ms`` is the embodiment's cold
start or was learned, and for a learned one its two parts: ``obs_to_publish_p95_ms`` (p95
observation-to-publish of the loop, or of a bag's recorded chunks) and ``actuation_lag_ms``
(commanded vs measured joints), so ``latency_compensation_ms = obs_to_publish_p95_ms +
actuation_lag_ms``; ``measured_at`` dates the measurement itself (a learned latency update
touches ``updated_at`` only, so it does not make an old measurement look fresh).

Two nodes may start at once on one host, so every write is read-modify-write under an
exclusive ``fcntl.flock`` on a sidecar ``<name>.lock`` file, and lands atomically (temp file
in the same directory, fsync, rename, fsync the directory): a reader sees the old file or the
new one, never half of one, and a writer killed mid-write leaves the old file intact. A file
we cannot parse is moved aside to ``<name>.corrupt`` (``.corrupt.1``, ... so an earlier one
is never overwritten) with a warning, and calibration starts fresh: a broken cache costs a
re-measurement, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reflex_ros.calibration.fingerprint import matches
from reflex_ros.engine.types import ReflexError
from reflex_ros.vocab import DEFAULT_CALIBRATION_CACHE

SCHEMA_VERSION = 1
MAX_AGE_DAYS = 30.0
DEFAULT_CACHE_PATH = DEFAULT_CALIBRATION_CACHE

ENTRY_REQUIRED_KEYS: tuple[str, ...] = (
    "chunk_size",
    "nfe",
    "latency_compensation_ms",
    "provider",
    "variant",
    "measurement_quality",
)
QUALITY_KEYS: tuple[str, ...] = (
    "warmup_iters",
    "measurement_iters",
    "median_ms",
    "p99_ms",
    "n_outliers_dropped",
    "quality_score",
)
# Entry key order when written: the seed's keys first, then ours.
ENTRY_KEY_ORDER: tuple[str, ...] = (
    *ENTRY_REQUIRED_KEYS,
    "expert_step_ms",
    "prefix_ms",
    "preprocess_ms",
    "source",
    "latency_source",
    "obs_to_publish_p95_ms",
    "actuation_lag_ms",
    "measured_at",
    "updated_at",
)
# A learned latency_compensation_ms is the sum of these two parts, kept on record so a user can
# see why the compensation is what it is (absent or null: not learned, or the lag unknown).
LATENCY_PARTS: tuple[str, ...] = ("obs_to_publish_p95_ms", "actuation_lag_ms")


class CacheFormatError(ReflexError):
    """The cache file exists but is not a schema v1 calibration cache."""


class CacheWriteError(ReflexError):
    """The cache could not be written (read-only location, disk full...)."""


def default_cache_path() -> Path:
    """``~/.reflex/calibration.json`` (override with ``--calibration-cache`` / the parameter)."""
    return Path(DEFAULT_CACHE_PATH).expanduser()


def resolve_cache_path(path: str | os.PathLike[str] | None) -> Path:
    """The cache path to use: ``path`` with ``~`` expanded, or the default when empty."""
    if path is None or str(path).strip() == "":
        return default_cache_path()
    return Path(path).expanduser()


def entry_key(embodiment: str, model_hash: str) -> str:
    """``{embodiment}::{model_hash}``: several robots and models share one file."""
    return f"{embodiment}::{model_hash}"


def split_entry_key(key: str) -> tuple[str, str]:
    """``"so100::abc"`` -> ``("so100", "abc")``; a key without ``::`` -> ``(key, "")``."""
    embodiment, _, model = key.partition("::")
    return embodiment, model


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(when: datetime) -> str:
    """The seed's timestamp form: ``2026-04-25T16:30:00.000000Z``."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: Any) -> datetime | None:
    """Inverse of :func:`format_time`; also accepts ``+00:00`` offsets. None if unparsable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def new_document(fingerprint: Mapping[str, Any], version: str, now: datetime | None = None) -> dict[str, Any]:
    """An empty schema v1 document for this host (``schema_version`` first)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "reflex_version": version,
        "calibration_date": format_time(now or utc_now()),
        "hardware_fingerprint": dict(fingerprint),
        "entries": {},
    }


def parse_document(text: str) -> dict[str, Any]:
    """Parse and check the top level of a cache file; raises :class:`CacheFormatError`.

    Entries are checked one by one later (:func:`entry_problem`), so one malformed entry
    costs one re-measurement instead of the whole file.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CacheFormatError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CacheFormatError(f"top level is a JSON {type(data).__name__}, expected an object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CacheFormatError(f"schema_version is {version!r}, expected {SCHEMA_VERSION}")
    if not isinstance(data.get("entries"), dict):
        raise CacheFormatError("'entries' is missing or not an object")
    if not isinstance(data.get("hardware_fingerprint"), dict):
        raise CacheFormatError("'hardware_fingerprint' is missing or not an object")
    return data


# How far in the future a date may lie before it is impossible (clock adjustments between
# hosts sharing a home directory); a later one would never expire.
FUTURE_SKEW_S = 300.0
LATENCY_SOURCES = ("cold_start", "learned", "explicit")
MAX_LATENCY_MS = 60_000.0


def _number_problem(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False,
                    maximum: float = math.inf, integer: bool = False) -> str | None:
    """Why ``value`` is not a usable number for ``name`` (JSON null, strings, booleans, NaN,
    inf, out of range), or None."""
    kind = int if integer else int | float
    if not isinstance(value, kind) or isinstance(value, bool):
        want = "an integer" if integer else "a number"
        return f"{name}={value!r} is not {want}"
    if not math.isfinite(value):
        return f"{name}={value!r} is not finite"
    if value < minimum or (strict and value == minimum) or value > maximum:
        low = f"> {minimum:g}" if strict else f">= {minimum:g}"
        high = f" and <= {maximum:g}" if math.isfinite(maximum) else ""
        return f"{name}={value!r} is out of range (must be {low}{high})"
    return None


def _date_problem(name: str, value: Any, now: datetime) -> str | None:
    when = parse_time(value)
    if when is None:
        return f"{name}={value!r} is not a date"
    ahead_s = (when - now).total_seconds()
    if ahead_s > FUTURE_SKEW_S:
        return f"{name} {format_time(when)} is in the future (this host's clock says {format_time(now)})"
    return None


def entry_problem(entry: Any, now: datetime | None = None) -> str | None:
    """Why an entry cannot be used (None when it can): every field is checked for its type,
    finiteness and range, and dates must not lie in the future. An entry with a problem is
    stale: the session logs the reason, measures again and overwrites it."""
    if not isinstance(entry, dict):
        return f"entry is a JSON {'array' if isinstance(entry, list) else type(entry).__name__}, expected an object"
    missing = [k for k in ENTRY_REQUIRED_KEYS if k not in entry]
    if missing:
        return f"entry lacks {', '.join(missing)}"
    for key in ("chunk_size", "nfe"):
        if not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 1:
            return f"{key}={entry[key]!r} is not a positive integer"
    checks = [_number_problem("latency_compensation_ms", entry["latency_compensation_ms"], maximum=MAX_LATENCY_MS)]
    if "expert_step_ms" in entry and entry["expert_step_ms"] is not None:
        checks.append(_number_problem("expert_step_ms", entry["expert_step_ms"], strict=True))
    for key in ("prefix_ms", "preprocess_ms"):
        if key in entry:
            checks.append(_number_problem(key, entry[key]))
    for key in LATENCY_PARTS:
        if entry.get(key) is not None:
            checks.append(_number_problem(key, entry[key], maximum=MAX_LATENCY_MS))
    for problem in checks:
        if problem:
            return problem
    for key in ("provider", "variant"):
        if not isinstance(entry[key], str) or not entry[key]:
            return f"{key}={entry[key]!r} is not a name"
    if "source" in entry and not isinstance(entry["source"], str):
        return f"source={entry['source']!r} is not a string"
    if "latency_source" in entry and entry["latency_source"] not in LATENCY_SOURCES:
        return f"latency_source={entry['latency_source']!r} is not one of {list(LATENCY_SOURCES)}"
    quality = entry["measurement_quality"]
    if not isinstance(quality, dict):
        return "measurement_quality is not an object"
    for key in QUALITY_KEYS:
        if key in quality:
            problem = _number_problem(f"measurement_quality.{key}", quality[key],
                                      integer=key in ("warmup_iters", "measurement_iters", "n_outliers_dropped"),
                                      maximum=1.0 if key == "quality_score" else math.inf)
            if problem:
                return problem
    when = now or utc_now()
    for key in ("measured_at", "updated_at"):
        if key in entry and (problem := _date_problem(key, entry[key], when)):
            return problem
    return None


def order_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry with keys in :data:`ENTRY_KEY_ORDER` (unknown keys kept, at the end)."""
    ordered = {k: entry[k] for k in ENTRY_KEY_ORDER if k in entry}
    ordered.update({k: v for k, v in entry.items() if k not in ordered})
    return ordered


def staleness_reasons(
    document: Mapping[str, Any],
    entry: Any,
    current_fingerprint: Mapping[str, Any],
    current_version: str,
    *,
    now: datetime | None = None,
    force: bool = False,
    max_age_days: float = MAX_AGE_DAYS,
) -> list[str]:
    """Every reason a cached entry no longer describes this host; empty when fresh.

    The rules: ``calibrate_force``; a hardware fingerprint mismatch (GPU swap, driver
    major/minor bump, CUDA, CPU count, RAM); a reflex_ros version change; an age over
    ``max_age_days`` (measured from the entry's ``measured_at``, else the file's
    ``calibration_date``); and an entry that is malformed (:func:`entry_problem`: any
    field of the wrong type, non-finite, out of range, dated in the future; the entry may not
    even be an object) or lacks ``expert_step_ms`` (a seed-format entry from another tool
    cannot be re-resolved without re-measuring).
    """
    reasons: list[str] = []
    when = now or utc_now()
    if force:
        reasons.append("calibrate_force is set")
    ok, why = matches(document.get("hardware_fingerprint"), current_fingerprint)
    if not ok:
        reasons.append(f"fingerprint mismatch ({why})")
    cached_version = document.get("reflex_version")
    if str(cached_version) != str(current_version):
        reasons.append(f"reflex_ros version changed ({cached_version} -> {current_version})")
    problem = entry_problem(entry, when)
    if problem:  # nothing else in it can be trusted (nor read: it may not even be an object)
        reasons.append(f"malformed entry ({problem})")
        return reasons
    measured = parse_time(entry.get("measured_at"))
    if measured is None and (measured := parse_time(document.get("calibration_date"))) is not None \
            and (date_problem := _date_problem("calibration_date", document.get("calibration_date"), when)):
        reasons.append(f"malformed entry (no measured_at, and the file's {date_problem})")
        return reasons
    if measured is None:
        reasons.append("no measurement date")
    else:
        age_days = (when - measured).total_seconds() / 86400.0
        if age_days > max_age_days:
            reasons.append(f"older than {max_age_days:g} days ({age_days:.1f} days, measured {format_time(measured)})")
    if not isinstance(entry.get("expert_step_ms"), int | float):
        reasons.append("entry lacks expert_step_ms (written by another tool); re-measuring")
    return reasons


# --------------------------------------------------------------------------- file access


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (the rename itself lives in the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write_text(path: Path, text: str, *, after_temp_written: Callable[[Path], None] | None = None) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix.

    Temp file in the same directory (a rename across filesystems is not atomic), fsync the
    data, ``os.replace``, fsync the directory. ``after_temp_written`` runs between the fsync
    and the rename; the crash test uses it to kill the writer at the worst moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if after_temp_written is not None:
            after_temp_written(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def dump_document(document: Mapping[str, Any]) -> str:
    """Serialize with ``schema_version`` first and entries in a stable key order."""
    ordered: dict[str, Any] = {"schema_version": document.get("schema_version", SCHEMA_VERSION)}
    for key in ("reflex_version", "calibration_date", "hardware_fingerprint"):
        if key in document:
            ordered[key] = document[key]
    ordered["entries"] = {k: order_entry(v) if isinstance(v, dict) else v
                          for k, v in sorted(document.get("entries", {}).items())}
    for key, value in document.items():
        if key not in ordered:
            ordered[key] = value
    return json.dumps(ordered, indent=2) + "\n"


def corrupt_destination(path: Path) -> Path:
    """``<name>.corrupt``, or ``<name>.corrupt.N`` with the first free N (never overwrite)."""
    candidate = path.with_name(path.name + ".corrupt")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.corrupt.{n}")
        n += 1
    return candidate


@dataclass
class ReadResult:
    """What reading a cache file found (the doctor shows all of it)."""

    path: Path
    status: str  # "ok" | "absent" | "corrupt"
    document: dict[str, Any] | None = None
    error: str | None = None
    moved_to: Path | None = None


def read_cache_file(path: Path) -> ReadResult:
    """Read and parse without locking or moving anything (the doctor's view).

    Safe without the lock because writers replace the file atomically.
    """
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return ReadResult(path, "absent")
    except OSError as exc:  # a directory, no permission...
        return ReadResult(path, "corrupt", error=f"unreadable ({exc.strerror or exc})")
    try:
        document = parse_document(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return ReadResult(path, "corrupt", error=f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    except CacheFormatError as exc:
        return ReadResult(path, "corrupt", error=str(exc))
    return ReadResult(path, "ok", document=document)


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class CalibrationCache:
    """Locked, atomic access to one cache file.

    Every public method takes the inter-process lock for its whole read-modify-write, so
    two nodes writing different entries at the same moment both survive. ``warn`` receives
    one line per problem (corrupt file moved aside, read-only location...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        warn: Callable[[str], None] | None = None,
        after_temp_written: Callable[[Path], None] | None = None,
    ) -> None:
        self.path = resolve_cache_path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._warn = warn or _warn_stderr
        self._after_temp_written = after_temp_written

    # -- locking

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        """Hold the exclusive lock; yields False when the location is read-only (no lock)."""
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)  # closing releases the flock

    # -- reading

    def _load_locked(self, may_move: bool) -> ReadResult:
        result = read_cache_file(self.path)
        if result.status == "corrupt":
            if self.path.is_dir():  # a mistyped --calibration-cache: never move a directory
                self._warn(f"[auto-calibrate] calibration cache path {self.path} is a directory, expected a "
                           "JSON file; ignoring it (set calibration_cache / --calibration-cache to a file)")
            elif may_move:
                destination = corrupt_destination(self.path)
                try:
                    os.replace(self.path, destination)
                    result.moved_to = destination
                    self._warn(
                        f"[auto-calibrate] calibration cache {self.path} is corrupt ({result.error}); "
                        f"moved it to {destination} and starting fresh"
                    )
                except OSError as exc:
                    self._warn(
                        f"[auto-calibrate] calibration cache {self.path} is corrupt ({result.error}) and "
                        f"could not be moved aside ({exc.strerror or exc}); ignoring it"
                    )
            else:
                self._warn(f"[auto-calibrate] calibration cache {self.path} is corrupt ({result.error}); ignoring it")
        return result

    def _sweep_temp_files(self) -> None:
        """Remove temp files left by a writer that died before its rename (we hold the lock,
        so no live writer owns one)."""
        try:
            for leftover in self.path.parent.glob(temp_prefix(self.path) + "*.tmp"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        except OSError:
            pass

    def load(self) -> ReadResult:
        """Read the cache under the lock; a corrupt file is moved aside (status "corrupt")."""
        with self.locked() as have_lock:
            return self._load_locked(may_move=have_lock)

    # -- writing

    def _write_locked(self, document: Mapping[str, Any]) -> None:
        self._sweep_temp_files()
        try:
            atomic_write_text(self.path, dump_document(document), after_temp_written=self._after_temp_written)
        except OSError as exc:
            raise CacheWriteError(
                f"cannot write calibration cache {self.path} ({exc.strerror or exc}); "
                "set calibration_cache / --calibration-cache to a writable path"
            ) from None

    def update(self, mutate: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> dict[str, Any] | None:
        """Read-modify-write under the lock. ``mutate`` gets the current document (None when
        absent or corrupt) and returns the document to write (None: write nothing)."""
        with self.locked() as have_lock:
            if not have_lock:
                raise CacheWriteError(
                    f"cannot lock calibration cache {self.lock_path} (read-only location?); "
                    "set calibration_cache / --calibration-cache to a writable path"
                )
            current = self._load_locked(may_move=True)
            updated = mutate(current.document if current.status == "ok" else None)
            if updated is not None:
                self._write_locked(updated)
            return updated

    def put_entry(
        self,
        key: str,
        entry: Mapping[str, Any],
        fingerprint: Mapping[str, Any],
        version: str,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Store a freshly measured entry for this host.

        The file's fingerprint and version become this host's. Entries measured under a
        different fingerprint or version are dropped with a warning: schema v1 has one
        fingerprint per file, and keeping them would make foreign measurements look fresh.
        """
        stamp = format_time(now or utc_now())

        def mutate(document: dict[str, Any] | None) -> dict[str, Any]:
            if document is None:
                document = new_document(fingerprint, version, now)
            else:
                same_host, why = matches(document.get("hardware_fingerprint"), fingerprint)
                same_version = str(document.get("reflex_version")) == str(version)
                others = [k for k in document["entries"] if k != key]
                if others and not (same_host and same_version):
                    reason = why if not same_host else f"reflex_ros {document.get('reflex_version')} -> {version}"
                    self._warn(
                        f"[auto-calibrate] dropping {len(others)} cached entr{'y' if len(others) == 1 else 'ies'} "
                        f"measured on another host/version ({reason}): {', '.join(sorted(others))}"
                    )
                    document["entries"] = {}
                document["hardware_fingerprint"] = dict(fingerprint)
                document["reflex_version"] = version
            new_entry = dict(entry)
            new_entry.setdefault("measured_at", stamp)
            new_entry["updated_at"] = stamp
            document["calibration_date"] = stamp
            document["entries"][key] = order_entry(new_entry)
            return document

        result = self.update(mutate)
        assert result is not None
        return result

    def patch_entry(self, key: str, fields: Mapping[str, Any], now: datetime | None = None) -> bool:
        """Update some fields of an existing entry (the learned latency). False when the
        entry is gone (someone deleted or re-measured the file meanwhile: nothing to patch)."""
        patched = False

        def mutate(document: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal patched
            if document is None or not isinstance(document["entries"].get(key), dict):
                return None
            document["entries"][key].update(fields)
            document["entries"][key]["updated_at"] = format_time(now or utc_now())
            patched = True
            return document

        self.update(mutate)
        return patched
