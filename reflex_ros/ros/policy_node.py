"""The lifecycle policy node: synced cameras + joint states in, stamped action chunks out.

Threads, and why:
- the executor thread runs subscriptions (decode + validate + buffer), services, parameter
  callbacks and the 1 Hz diagnostics/housekeeping timer. It never runs inference, so
  messages keep flowing while the engine works;
- the control-loop thread (started on activate) wakes every ``execute_steps`` control
  periods, takes the newest synchronized observation, runs the engine, plans the chunk
  (latency compensation + safety, chunking.py) and publishes it. A cycle that runs long makes
  the loop skip the missed ticks (counted as overruns); nothing is ever queued.

Lifecycle: configure loads and warms the engine and creates the ROS interfaces (any failure
-> FAILURE, one log line, retry works); activate starts the loop; deactivate stops it and
publishes a hold-position trajectory; cleanup releases the engine. An engine exception in
the loop drives deactivate -> error processing -> unconfigured: the node stays alive and can
be configured again. One bad message never kills the process: every callback rejects it
with a throttled log line naming the topic and counts it.

Run: ``python -m reflex_ros.ros.policy_node --ros-args -p export_dir:=DIR -p embodiment:=so100``.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from reflex_ros.calibration.embodiment import EmbodimentError, available_embodiments, load_embodiment
from reflex_ros.engine.types import Engine, Observation, ObservationError, ReflexError
from reflex_ros.msg import ActionChunk
from reflex_ros.ros import params as P
from reflex_ros.ros.chunking import ChunkError, SafetyLimits, control_period_ns, plan_chunk
from reflex_ros.ros.conversions import image_to_rgb, joint_state_to_vector, stamp_to_ns
from reflex_ros.ros.diagnostics import NodeStats, build_diagnostic_array, stats_values
from reflex_ros.ros.messages import TrajectoryBuilder, action_chunk_msg, hold_trajectory_msg, time_msg
from reflex_ros.ros.motion_history import MotionHistory
from reflex_ros.ros.sync import ApproximateTimeSync

DEFAULT_NODE_NAME = "reflex_policy"
JOINT_STREAM = "joint_states"
WARMUP_ITERATIONS = 3
LOG_THROTTLE_S = 2.0
LAG_ESTIMATE_PERIOD_S = 1.0
FLAG_POLL_S = 0.05
SMALL_HOST_CPUS = 4  # intra_op_threads 0 -> 1 thread at or below this many cores


class ConfigureError(ReflexError):
    """configure cannot succeed; the message is the one log line the user sees."""


@dataclass(frozen=True)
class _Frame:
    """One decoded input: payload plus when it became available to the loop (ROS time)."""

    data: np.ndarray
    ready_ns: int


class PolicyNode(LifecycleNode):
    """See the module docstring. Construct inside an initialised rclpy context."""

    def __init__(self, node_name: str = DEFAULT_NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.stats = NodeStats()
        self._configured = False
        self._active = False
        self._internal_set = 0  # >0 while the node sets parameters itself (not "explicit")
        self._param_lock = threading.RLock()
        self._throttle: dict[tuple[str, str], float] = {}
        self._engine: Engine | None = None
        self._sync: ApproximateTimeSync | None = None
        self._subs: list[Any] = []
        self._traj_pub = None
        self._chunk_pub = None
        self._loop_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._engine_failure: str | None = None
        self._last_state: np.ndarray | None = None
        self._joint_names: list[str] = []  # fixed from configure to cleanup (hot path reads)
        self._joint_topic = ""
        self._zero_stamp_warned: set[str] = set()
        self._limits_cache: tuple[Any, SafetyLimits] | None = None
        self._last_publish_ns: int | None = None
        self._traj_builder = TrajectoryBuilder()  # control-loop thread only
        self._history: MotionHistory | None = None
        self._session: Any = None
        self._calibration_state = "off"
        self._pending_latency_ms: float | None = None
        self._pending_re_resolve = False
        self._finalized = threading.Event()

        self._explicit = self._declare_parameters()
        self._settings = P.LiveSettings.from_values(self._values())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)

        # diagnostics run in every state, so "unconfigured because ..." is visible too
        self._diag_pub = self.create_publisher(_diagnostic_array_type(), "/diagnostics", 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
        # The control loop raises flags; this timer acts on them in the executor thread
        # (lifecycle transitions and parameter sets belong there). A timer rather than a
        # guard condition: rclpy's EventsExecutor does not support guard conditions.
        self._next_lag_estimate = 0.0
        self._flag_timer = self.create_timer(FLAG_POLL_S, self._on_flags)

    # ------------------------------------------------------------------ parameters

    def _declare_parameters(self) -> set[str]:
        """Declare every parameter; embodiment values are defaults, explicit ones win.

        Returns the explicitly given names (command line / params file), which the
        auto-calibrator's override ladder needs.
        """
        overrides = self._parameter_overrides  # rclpy: -p and --params-file values for this node
        for name, spec in P.SPECS.items():
            if name in overrides:
                value = P.coerce_override(spec, overrides[name].value)
                if value is not overrides[name].value:
                    overrides[name] = Parameter(name, value=value)
        explicit = {name for name in overrides if name in P.SPECS}
        emb_name = self.declare_parameter(
            "embodiment", P.SPECS["embodiment"].default, P.SPECS["embodiment"].descriptor()).value
        emb_defaults: dict[str, Any] = {}
        if emb_name:
            try:
                emb_defaults = P.embodiment_defaults(load_embodiment(emb_name))
            except EmbodimentError as exc:  # reported again (and fatal) at configure
                self.get_logger().error(str(exc))
        for spec in P.PARAMS:
            if spec.name == "embodiment":
                continue
            default = emb_defaults.get(spec.name, spec.default)
            if default is None:
                kind = Parameter.Type.STRING_ARRAY if spec.kind == "str[]" else Parameter.Type.DOUBLE_ARRAY
                self.declare_parameter(spec.name, kind, spec.descriptor())
            else:
                self.declare_parameter(spec.name, default, spec.descriptor())
        return explicit

    def _value(self, name: str) -> Any:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:
            return None
        return list(value) if isinstance(value, list | tuple) else value

    def _values(self) -> dict[str, Any]:
        return {name: self._value(name) for name in P.SPECS}

    @property
    def explicit_parameters(self) -> dict[str, Any]:
        """Parameters set explicitly (overrides at start-up, or by a user since), with their
        current values. Embodiment defaults and calibrated values are not explicit."""
        return {name: self._value(name) for name in sorted(self._explicit)}

    def _set_internal(self, values: dict[str, Any]) -> str | None:
        """Set parameters as the node (embodiment, calibration): not marked explicit.
        Returns the refusal reason, or None."""
        with self._param_lock:
            self._internal_set += 1
            try:
                results = self.set_parameters([Parameter(k, value=v) for k, v in values.items()])
            finally:
                self._internal_set -= 1
        reasons = [r.reason for r in results if not r.successful]
        return "; ".join(reasons) if reasons else None

    def _engine_limits(self) -> tuple[int | None, int | None, tuple[int, ...] | None]:
        engine = self._engine
        if engine is None:
            return None, None, None
        n_joints = len(self._value("joint_names") or [])
        return n_joints, engine.info.chunk_size, tuple(engine.info.supported_nfe)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate a change; the reason reaches rqt / `ros2 param set` verbatim."""
        proposed = self._values()
        for p in params:
            if p.name not in P.SPECS:
                continue
            if p.name in P.RECONFIGURE_ONLY and self._configured and not self._internal_set:
                return SetParametersResult(
                    successful=False,
                    reason=f"{p.name} takes effect at configure: deactivate and cleanup the node, "
                           f"change it, then configure again")
            value = list(p.value) if isinstance(p.value, list | tuple) else p.value
            if (reason := P.check_value(p.name, value)) is not None:
                return SetParametersResult(successful=False, reason=reason)
            proposed[p.name] = value
        if any(p.name in P.SPECS for p in params):
            n_joints, rows, nfes = self._engine_limits()
            reason = P.check_consistency(proposed, n_joints=n_joints, engine_rows=rows, supported_nfe=nfes)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, params: list[Parameter]) -> None:
        """Accepted: mark explicit (unless the node set it) and swap the loop's snapshot;
        the next cycle uses it."""
        names = {p.name for p in params}
        if not self._internal_set:
            self._explicit.update(n for n in names if n in P.SPECS)
        self._settings = P.LiveSettings.from_values(self._values())
        if self._session is not None and names & {"control_frequency_hz", "execute_steps"}:
            self._pending_re_resolve = True

    def _lock_reconfigure_only(self, locked: bool) -> None:
        """Show reconfigure-only parameters as read_only in their descriptors while
        configured (rqt greys them out). The on-set callback enforces it regardless."""
        descriptors = getattr(self, "_descriptors", None)
        if not isinstance(descriptors, dict):
            return
        for name in P.RECONFIGURE_ONLY:
            if name in descriptors:
                descriptors[name].read_only = locked

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        started = time.perf_counter()
        try:
            summary = self._configure()
        except Exception as exc:  # one clear line, node stays unconfigured
            reason = str(exc) if isinstance(exc, ReflexError) else f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: {reason}")
            self.stats.last_error = f"configure failed: {reason}"
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._configured = True
        self._lock_reconfigure_only(True)
        self.get_logger().info(f"configured in {time.perf_counter() - started:.2f} s: {summary}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            ret = super().on_activate(state)  # activates the lifecycle publishers
            if ret != TransitionCallbackReturn.SUCCESS:
                return ret
            self._engine_failure = None
            self.stats.watchdog_stale = False
            self._last_publish_ns = None
            self._stop.clear()
            self._active = True
            self._loop_thread = threading.Thread(target=self._control_loop, name="reflex_control_loop",
                                                 daemon=True)
            self._loop_thread.start()
        except Exception as exc:
            self.get_logger().error(f"activate failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f"active: {self._settings.control_frequency_hz:g} Hz, a chunk every "
            f"{self._settings.execute_steps} steps")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        held = self._publish_hold()
        super().on_deactivate(state)
        if self._engine_failure is not None:
            return TransitionCallbackReturn.ERROR  # -> on_error: release, back to unconfigured
        self.get_logger().info("inactive" + (": published a hold-position trajectory" if held else ""))
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: engine released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._stop_loop()
            self._publish_hold()
        self._release()
        self._finalized.set()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        reason = self._engine_failure or self.stats.last_error or "a transition raised"
        self._stop_loop()
        self._release()
        self._engine_failure = None
        self.get_logger().error(
            f"error processing: {reason}; engine released, node is unconfigured "
            f"(fix the cause and configure again)")
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the control loop before the handles it uses go away."""
        self._stop_loop()
        if self._engine is not None:
            self._release()
        super().destroy_node()

    @property
    def finalized(self) -> threading.Event:
        return self._finalized

    # ------------------------------------------------------------------ configure

    def _configure(self) -> str:
        self.stats.last_error = ""
        values = self._values()
        emb_name = values["embodiment"]
        if emb_name:
            emb = load_embodiment(emb_name)
            defaults = {k: v for k, v in P.embodiment_defaults(emb).items() if k not in self._explicit}
            if defaults and (reason := self._set_internal(defaults)) is not None:
                raise ConfigureError(f"embodiment {emb.name!r} values refused: {reason}")
            values = self._values()
        joints = values["joint_names"]
        if not values["export_dir"]:
            raise ConfigureError("export_dir is empty: pass -p export_dir:=DIR (a `reflex-ros export` directory)")
        if not joints:
            raise ConfigureError(
                f"joint_names is not set: pass -p joint_names:=[...] or an embodiment "
                f"(available: {', '.join(available_embodiments())})")
        for name in ("position_lower", "position_upper", "max_delta_per_step"):
            if values[name] is None:
                raise ConfigureError(f"{name} is not set: give one value per joint or an embodiment")
        reason = P.check_consistency(values, n_joints=len(joints), engine_rows=None, supported_nfe=None)
        if reason is not None:
            raise ConfigureError(reason)

        from reflex_ros.engine.loader import load_engine

        session = None
        if values["auto_calibrate"]:
            session = self._new_calibration_session(emb_name)
            values = self._select_runtime(session, values)
        extra = {}
        if values["engine"] == "onnx":
            threads = values["intra_op_threads"] or (1 if (os.cpu_count() or 1) <= SMALL_HOST_CPUS else 0)
            if threads:
                extra["intra_op_threads"] = threads
        self._engine = load_engine(
            values["export_dir"], engine=values["engine"], provider=values["provider"] or None,
            dtype=values["dtype"], cuda_graph=bool(values["cuda_graph"]), **extra)
        info = self._engine.info
        if len(joints) > info.action_dim:
            raise ConfigureError(
                f"{len(joints)} joint_names {joints} but the export's action_dim is {info.action_dim}")
        if len(joints) > info.max_state_dim:
            raise ConfigureError(
                f"{len(joints)} joint_names {joints} but the export's max_state_dim is {info.max_state_dim}")
        cameras = values["camera_topics"]
        if len(cameras) != info.num_cameras:
            raise ConfigureError(
                f"the export expects {info.num_cameras} camera(s) but camera_topics lists {len(cameras)}: {cameras}")
        if values["chunk_size"] > info.chunk_size and "chunk_size" not in self._explicit:
            self.get_logger().warning(
                f"embodiment chunk_size {values['chunk_size']} exceeds the export's {info.chunk_size} rows; "
                f"using {info.chunk_size}")
            self._set_internal({"chunk_size": info.chunk_size})

        if session is not None:
            self._resolve_calibration(session)
        else:
            self._calibration_state = "off"
        values = self._values()
        reason = P.check_consistency(values, n_joints=len(joints), engine_rows=info.chunk_size,
                                     supported_nfe=tuple(info.supported_nfe))
        if reason is not None:
            raise ConfigureError(reason)
        self._settings = P.LiveSettings.from_values(values)

        warm_ms = self._warm_up()
        self._create_interfaces(values)
        s = self._settings
        return (f"engine={info.engine} provider={info.provider} dtype={info.dtype} "
                f"nfe={s.nfe or info.extra.get('default_nfe', 'default')} chunk={s.chunk_size or info.chunk_size} "
                f"joints={len(joints)} cameras={len(cameras)} model={info.model_hash} warm-up={warm_ms:.0f} ms "
                f"calibration={self._calibration_state}")

    def _warm_up(self) -> float:
        """First calls allocate, JIT and (torch) capture graphs; none of that may land on
        the first real chunk."""
        info = self._engine.info
        s = self._settings
        n_joints = len(self._value("joint_names"))
        obs = Observation(
            images=[np.zeros((info.image_size, info.image_size, 3), np.uint8) for _ in range(info.num_cameras)],
            state=np.zeros(n_joints, np.float32), instruction=s.instruction or "warm up", stamp_ns=0)
        started = time.perf_counter()
        for _ in range(WARMUP_ITERATIONS):
            self._engine.infer(obs, nfe=s.nfe or None, cfg_beta=s.cfg_beta or None)
        return (time.perf_counter() - started) * 1e3

    def _create_interfaces(self, values: dict[str, Any]) -> None:
        cameras = list(values["camera_topics"])
        joints_topic = values["joint_states_topic"]
        self._joint_names = list(values["joint_names"])
        self._joint_topic = joints_topic
        capacity = {JOINT_STREAM: 256, **{topic: 16 for topic in cameras}}
        self._sync = ApproximateTimeSync([*cameras, JOINT_STREAM], capacity=capacity)
        self._traj_pub = self.create_lifecycle_publisher(JointTrajectory, "~/joint_trajectory", 10)
        self._chunk_pub = self.create_lifecycle_publisher(ActionChunk, "~/action_chunk", 10)
        for topic in cameras:
            self._subs.append(self.create_subscription(
                Image, topic, self._camera_callback(topic), qos_profile_sensor_data))
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._subs.append(self.create_subscription(JointState, joints_topic, self._on_joint_state, reliable))
        self._subs.append(self.create_subscription(String, "~/instruction", self._on_instruction, 10))

    def _release(self) -> None:
        """Undo configure (safe to call in any state, any number of times)."""
        self._stop_loop()
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        for pub in (self._traj_pub, self._chunk_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._traj_pub = self._chunk_pub = None
        if self._engine is not None:
            try:
                self._engine.close()
            except Exception as exc:  # releasing must not fail the transition
                self.get_logger().warning(f"engine close: {type(exc).__name__}: {exc}")
            self._engine = None
        self._sync = None
        if self._session is not None:
            try:
                self._session.flush()
            except Exception as exc:
                self.get_logger().warning(f"[auto-calibrate] flush: {type(exc).__name__}: {exc}")
        self._session = None
        self._history = None
        self._calibration_state = "off"
        self._configured = False
        self._lock_reconfigure_only(False)

    # ------------------------------------------------------------------ auto-calibration

    def _calibration_explicit(self) -> dict[str, Any]:
        """Explicit parameters for the override ladder, minus "automatic" sentinels (an
        explicit provider "" or nfe 0 asks for automatic, it does not pin anything)."""
        sentinels = {"provider": "", "nfe": 0, "chunk_size": 0, "cfg_beta": 0.0}
        return {k: v for k, v in self.explicit_parameters.items()
                if not (k in sentinels and v == sentinels[k])}

    def _new_calibration_session(self, emb_name: str) -> Any:
        from reflex_ros.calibration.session import CalibrationSession

        if not emb_name:
            raise ConfigureError("auto_calibrate needs an embodiment (the calibration cache is keyed by it)")
        logger = self.get_logger()
        values = self._values()
        return CalibrationSession(
            values["calibration_cache"], load_embodiment(emb_name), None, self._calibration_explicit(),
            bool(values["calibrate_force"]), lambda line: logger.info(line))

    def _select_runtime(self, session: Any, values: dict[str, Any]) -> dict[str, Any]:
        """Calibration steps 1-2 (variant, provider) before the engine is loaded; explicit
        dtype/provider win. Set as parameters so rqt shows what is served."""
        variant, provider = session.select_runtime(values["export_dir"])
        if values["engine"] == "torch":  # the resolver speaks ONNX provider names
            provider = "cpu" if provider == "CPUExecutionProvider" else "cuda"
        update = {}
        if "dtype" not in self._explicit and values["dtype"] != variant:
            update["dtype"] = variant
        if "provider" not in self._explicit and values["provider"] != provider:
            update["provider"] = provider
        if update and (reason := self._set_internal(update)) is not None:
            raise ConfigureError(f"[auto-calibrate] selected runtime refused: {reason}")
        return self._values()

    def _resolve_calibration(self, session: Any) -> None:
        """Steps 3-5 (nfe, chunk_size, latency): cache hit = instant, miss = measure + write."""
        values = self._values()
        res = session.resolve(self._engine, control_frequency_hz=values["control_frequency_hz"],
                              execute_steps=values["execute_steps"])
        self._session = session
        self._apply_resolution(res)
        self._history = MotionHistory()
        self._calibration_state = str(session.state)
        self.get_logger().info(
            f"[auto-calibrate] {'cache hit' if res.cache_hit else f'measured in {res.measure_s:.1f} s'}; "
            f"resolved in {res.resolve_s:.2f} s: nfe={res.nfe} chunk_size={res.chunk_size} "
            f"latency_compensation_ms={res.latency_compensation_ms:.1f} cache={res.cache_path}")

    def _apply_resolution(self, res: Any) -> None:
        chunk = int(res.chunk_size)
        if self._engine is not None:
            chunk = min(chunk, self._engine.info.chunk_size)
        resolved = {"nfe": int(res.nfe), "chunk_size": chunk,
                    "latency_compensation_ms": float(res.latency_compensation_ms)}
        update = {k: v for k, v in resolved.items() if k not in self._explicit and self._value(k) != v}
        if update and (reason := self._set_internal(update)) is not None:
            self.get_logger().warning(f"[auto-calibrate] resolved values refused: {reason}")

    def _on_flags(self) -> None:
        """Executor thread, every FLAG_POLL_S: an engine failure starts error processing;
        calibration work (learned latency, re-resolve, the 1 Hz lag estimate) runs here,
        never on the control path."""
        if self._engine_failure is not None and self._active:
            self.trigger_deactivate()
            return
        if self._session is not None:
            self._housekeeping()

    def _housekeeping(self) -> None:
        session = self._session
        if session is None:
            return
        try:
            if self._pending_re_resolve:
                self._pending_re_resolve = False
                s = self._settings
                self._apply_resolution(session.re_resolve(
                    control_frequency_hz=s.control_frequency_hz, execute_steps=s.execute_steps))
            pending, self._pending_latency_ms = self._pending_latency_ms, None
            if pending is not None and "latency_compensation_ms" in self._explicit:
                self._log_throttled("calibration", "info", "[auto-calibrate] latency_compensation_ms was set "
                                    f"explicitly; not applying the learned {pending:.1f} ms")
            elif pending is not None:
                if (reason := self._set_internal({"latency_compensation_ms": round(pending, 3)})) is not None:
                    self.get_logger().warning(f"[auto-calibrate] learned latency refused: {reason}")
            history = self._history
            now = time.monotonic()
            if history is not None and self._active and now >= self._next_lag_estimate:
                self._next_lag_estimate = now + LAG_ESTIMATE_PERIOD_S
                lag = history.estimate_lag_ms(self.get_clock().now().nanoseconds)
                if lag is not None:
                    session.record_actuation_lag(lag)
            self._calibration_state = str(getattr(session, "state", self._calibration_state))
        except Exception as exc:  # calibration must never stop the node
            self._log_throttled("calibration", "error", f"[auto-calibrate] {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ inputs

    def _log_throttled(self, topic: str, level: str, text: str) -> None:
        key = (topic, text.split(":", 1)[0] if level != "error" else text[:60])
        now = time.monotonic()
        if now - self._throttle.get(key, -math.inf) >= LOG_THROTTLE_S:
            self._throttle[key] = now
            getattr(self.get_logger(), "warning" if level == "warn" else level)(text)

    def _stamp_or_now(self, header: Any, topic: str) -> int:
        stamp = stamp_to_ns(header.stamp)
        if stamp == 0:
            if topic not in self._zero_stamp_warned:
                self._zero_stamp_warned.add(topic)
                self.get_logger().warning(f"{topic}: header.stamp is 0; using the arrival time instead")
            return self.get_clock().now().nanoseconds
        return stamp

    def _reject(self, topic: str, exc: Exception) -> None:
        self.stats.dropped_messages += 1
        text = str(exc) if isinstance(exc, ReflexError) else f"{topic}: {type(exc).__name__}: {exc}"
        self.stats.last_error = text
        self._log_throttled(topic, "error", f"dropped message: {text}")

    def _camera_callback(self, topic: str) -> Callable[[Image], None]:
        def callback(msg: Image) -> None:
            sync, engine = self._sync, self._engine
            if sync is None or engine is None:
                return
            try:
                rgb = image_to_rgb(msg, engine.info.image_size, topic)
                stamp = self._stamp_or_now(msg.header, topic)
                sync.add(topic, stamp, _Frame(rgb, self.get_clock().now().nanoseconds))
            except Exception as exc:  # one bad message never kills the node
                self._reject(topic, exc)
        return callback

    def _on_joint_state(self, msg: JointState) -> None:
        sync = self._sync
        if sync is None:
            return
        topic = self._joint_topic
        try:
            state = joint_state_to_vector(msg, self._joint_names, topic)
            stamp = self._stamp_or_now(msg.header, topic)
            sync.add(JOINT_STREAM, stamp, _Frame(state, self.get_clock().now().nanoseconds))
            self._last_state = state
            if self._history is not None:
                self._history.add_measurement(stamp, state)
        except Exception as exc:
            self._reject(topic, exc)

    def _on_instruction(self, msg: String) -> None:
        reason = self._set_internal({"instruction": str(msg.data)})
        if reason is not None:
            self._log_throttled("~/instruction", "warn", f"instruction refused: {reason}")

    # ------------------------------------------------------------------ control loop

    def _stop_loop(self) -> None:
        self._active = False
        self._stop.set()
        thread = self._loop_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60.0)  # an in-flight inference finishes first
            if thread.is_alive():
                self.get_logger().error("control loop did not stop within 60 s")
        self._loop_thread = None

    def _wait_until(self, deadline_ns: int) -> None:
        """Sleep on the node's clock (sim time aware), interruptible by deactivate."""
        clock = self.get_clock()
        while not self._stop.is_set():
            remaining_s = (deadline_ns - clock.now().nanoseconds) * 1e-9
            if remaining_s <= 0:
                return
            self._stop.wait(min(remaining_s, 0.05))

    def _control_loop(self) -> None:
        clock = self.get_clock()
        next_tick = clock.now().nanoseconds
        while not self._stop.is_set():
            settings = self._settings
            period_ns = settings.execute_steps * control_period_ns(settings.control_frequency_hz)
            self._wait_until(next_tick)
            if self._stop.is_set():
                break
            try:
                self._cycle(settings)
            except Exception as exc:  # a bug in a cycle must not kill the loop silently
                self.stats.last_error = f"control cycle: {type(exc).__name__}: {exc}"
                self._log_throttled("loop", "error", self.stats.last_error)
            now = clock.now().nanoseconds
            next_tick += period_ns
            if now < next_tick - 4 * period_ns:  # clock jumped back (sim time reset)
                next_tick = now + period_ns
            elif now > next_tick:  # overran: skip the missed ticks, never queue them
                missed = (now - next_tick) // period_ns + 1
                self.stats.overruns += int(missed)
                next_tick += int(missed) * period_ns

    def _limits(self, s: P.LiveSettings) -> SafetyLimits:
        cached = self._limits_cache
        key = (s.position_lower, s.position_upper, s.max_delta_per_step)
        if cached is None or cached[0] != key:
            cached = (key, SafetyLimits.from_lists(*key))
            self._limits_cache = cached
        return cached[1]

    def _cycle(self, s: P.LiveSettings) -> None:
        engine, sync = self._engine, self._sync
        if engine is None or sync is None:
            return
        clock = self.get_clock()
        t_start = clock.now().nanoseconds
        synced = sync.latest_synced(int(s.sync_slop_ms * 1e6))
        if synced is None:
            self.stats.no_observation += 1
            return
        age_ms = (t_start - synced.stamp_ns) * 1e-6
        if age_ms > s.max_observation_age_ms:
            self.stats.stale_observations += 1
            if not self.stats.watchdog_stale:
                self.stats.watchdog_stale = True
                self.get_logger().warning(
                    f"watchdog: newest synchronized observation is {age_ms:.0f} ms old "
                    f"(max_observation_age_ms {s.max_observation_age_ms:g}); pausing inference")
            return
        if self.stats.watchdog_stale:
            self.stats.watchdog_stale = False
            self.get_logger().info("watchdog: fresh observations again; resuming inference")

        cameras = [t for t in sync.streams if t != JOINT_STREAM]
        frames = synced.payloads
        state = frames[JOINT_STREAM].data
        obs = Observation(images=[frames[t].data for t in cameras], state=state,
                          instruction=s.instruction, stamp_ns=synced.stamp_ns)
        t_infer = time.perf_counter()
        try:
            result = engine.infer(obs, nfe=s.nfe or None, cfg_beta=s.cfg_beta or None)
        except ObservationError as exc:
            self._reject("observation", exc)
            return
        except Exception as exc:  # engine failure: error processing
            self.stats.engine_errors += 1
            reason = str(exc) if isinstance(exc, ReflexError) else f"{type(exc).__name__}: {exc}"
            self._engine_failure = f"engine failed: {reason}"
            self.stats.last_error = self._engine_failure
            self.get_logger().error(self._engine_failure)
            self._stop.set()  # the flag timer drives error processing
            return
        infer_ms = (time.perf_counter() - t_infer) * 1e3

        joint_names = self._joint_names
        try:
            plan = plan_chunk(
                result.actions, state=state, obs_stamp_ns=synced.stamp_ns,
                control_frequency_hz=s.control_frequency_hz,
                latency_compensation_ms=s.latency_compensation_ms, limits=self._limits(s),
                action_mode=s.action_mode, chunk_size=s.chunk_size or None, joint_names=joint_names)
        except ChunkError as exc:
            self.stats.refused_chunks += 1
            self.stats.last_error = str(exc)
            self._log_throttled("chunk", "error", f"chunk not published: {exc}")
            return
        traj = self._traj_builder.serialized(plan, joint_names)  # CDR bytes: no per-point objects
        chunk = action_chunk_msg(
            plan, joint_names, latency_compensation_ms=s.latency_compensation_ms,
            inference_ms=float(result.timings_ms.get("total", infer_ms)), nfe=result.nfe,
            model_hash=engine.info.model_hash)
        traj_pub, chunk_pub = self._traj_pub, self._chunk_pub
        if traj_pub is None or chunk_pub is None or self._stop.is_set():
            return
        traj_pub.publish(traj)
        chunk_pub.publish(chunk)
        t_pub = clock.now().nanoseconds

        stats = self.stats
        stats.chunks_published += 1
        stats.last_skipped_steps = plan.skipped_steps
        obs_to_pub_ms = (t_pub - synced.stamp_ns) * 1e-6
        newest_name = max(frames, key=lambda name: frames[name].ready_ns)
        newest_ready = frames[newest_name].ready_ns
        input_ms = (newest_ready - synced.stamps_ns[newest_name]) * 1e-6
        cycle_ms = (t_pub - t_start) * 1e-6 - infer_ms
        stats.inference_ms.add(infer_ms)
        stats.obs_to_publish_ms.add(obs_to_pub_ms)
        tick_wait_ms = max(0, t_start - newest_ready) * 1e-6
        stats.non_engine_ms.add(obs_to_pub_ms - infer_ms)
        stats.tick_wait_ms.add(tick_wait_ms)
        stats.node_overhead_ms.add(obs_to_pub_ms - infer_ms - tick_wait_ms)
        stats.input_latency_ms.add(input_ms)
        stats.cycle_overhead_ms.add(cycle_ms)
        if self._last_publish_ns is not None:
            stats.publish_period_ms.add((t_pub - self._last_publish_ns) * 1e-6)
        self._last_publish_ns = t_pub
        if self._history is not None:
            self._history.add_command(plan.stamp_ns, plan.dt_ns, plan.positions, published_ns=t_pub)
        session = self._session
        if session is not None:
            try:
                new_latency = session.record_loop_latency(obs_to_pub_ms)
            except Exception as exc:
                new_latency = None
                self._log_throttled("calibration", "error", f"[auto-calibrate] {type(exc).__name__}: {exc}")
            if new_latency is not None:
                self._pending_latency_ms = float(new_latency)

    def _publish_hold(self) -> bool:
        """Hold the last measured positions so a controller stops executing a stale chunk.

        The hold is a command like any other, so it is clamped to the position limits: an arm
        that drifted past a soft limit is brought back inside it (by less than one step's
        change limit in practice) rather than held outside it."""
        pub, state = self._traj_pub, self._last_state
        if pub is None:
            return False
        if state is None:
            self.get_logger().warning("no joint state received yet: no hold-position trajectory sent")
            return False
        try:
            limits = self._limits(self._settings)
            held = np.clip(np.asarray(state, dtype=np.float64), limits.position_lower, limits.position_upper)
            pub.publish(hold_trajectory_msg(held, self._joint_names,
                                            control_period_ns(self._settings.control_frequency_hz)))
        except Exception as exc:
            self.get_logger().error(f"hold trajectory: {type(exc).__name__}: {exc}")
            return False
        return True

    # ------------------------------------------------------------------ diagnostics

    def _lifecycle_label(self) -> str:
        try:
            return str(self._state_machine.current_state[1])
        except Exception:
            return "unknown"

    def _publish_diagnostics(self) -> None:
        try:
            label = self._lifecycle_label()
            engine, s, stats = self._engine, self._settings, self.stats
            values = {"lifecycle_state": label}
            if engine is not None:
                info = engine.info
                values.update(engine=info.engine, provider=info.provider, dtype=info.dtype,
                              nfe=str(s.nfe or info.extra.get("default_nfe", "default")),
                              model_hash=info.model_hash)
            values.update(
                cfg_beta="off" if not s.cfg_beta else f"{s.cfg_beta:g}",
                control_frequency_hz=f"{s.control_frequency_hz:g}", execute_steps=str(s.execute_steps),
                latency_compensation_ms=f"{s.latency_compensation_ms:g}",
                calibration_state=self._calibration_state)
            values.update(stats_values(stats))
            level, message = "OK", label
            if label == "active":
                message = "publishing chunks"
                if stats.watchdog_stale:
                    level, message = "WARN", "stale observations: inference paused"
                elif stats.chunks_published == 0:
                    level, message = "WARN", "waiting for synchronized observations"
            elif label == "unconfigured" and stats.last_error:
                level, message = "ERROR", stats.last_error
            hardware_id = engine.info.model_hash if engine is not None else "none"
            self._diag_pub.publish(build_diagnostic_array(
                stamp=time_msg(self.get_clock().now().nanoseconds), node_name=self.get_name(),
                hardware_id=hardware_id, level=level, message=message, values=values))
        except Exception as exc:
            self._log_throttled("diagnostics", "error", f"diagnostics: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ shutdown from a signal

    def finish(self) -> None:
        """Clean stop from the process itself (SIGINT/SIGTERM): hold, release, finalize."""
        label = self._lifecycle_label()
        if label == "active":
            self.trigger_deactivate()
            label = self._lifecycle_label()
        if label == "inactive":
            self.trigger_cleanup()
            label = self._lifecycle_label()
        if label in ("unconfigured", "inactive", "active"):
            self.trigger_shutdown()


def _diagnostic_array_type():
    from diagnostic_msgs.msg import DiagnosticArray

    return DiagnosticArray


def _make_executor() -> Any:
    """rclpy's EventsExecutor where available (Jazzy+): its C++ event queue dispatches a
    message in a fraction of the single-threaded executor's Python wait-set rebuild, which is
    most of what a 100 Hz joint state + camera stream costs the node. REFLEX_EXECUTOR=single
    selects the classic executor."""
    from rclpy.executors import SingleThreadedExecutor

    if os.environ.get("REFLEX_EXECUTOR", "events") == "events":
        try:
            from rclpy.experimental import EventsExecutor

            return EventsExecutor()
        except ImportError:
            pass
    return SingleThreadedExecutor()


def main(argv: list[str] | None = None) -> int:
    """Process entry point: spin until SIGINT/SIGTERM or the shutdown transition."""
    from rclpy.signals import SignalHandlerOptions

    args = sys.argv if argv is None else argv
    # The control loop and the executor thread share the GIL; with the default 5 ms switch
    # interval a loop thread coming back from onnxruntime (which releases the GIL) can wait
    # up to 5 ms for the executor thread to yield. Latency matters more here than throughput.
    sys.setswitchinterval(float(os.environ.get("REFLEX_GIL_SWITCH_S", "0.0005")))
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = PolicyNode()
    executor = _make_executor()
    executor.add_node(node)
    node.get_logger().info(
        f"ready (unconfigured); explicit parameters: {sorted(node.explicit_parameters)}")
    try:
        while not stop.is_set() and not node.finalized.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        if not node.finalized.is_set():
            node.finish()
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DEFAULT_NODE_NAME", "ConfigureError", "PolicyNode", "main"]
