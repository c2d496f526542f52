"""The lifecycle policy node: a thin adapter between ROS 2 and the ROS-free control loop.

What happens to an observation lives in :mod:`reflex_ros.control`; this maps it onto ROS:

- lifecycle, as ros2/demos' lifecycle talker: configure (``control/configure.py``) loads and
  warms the engine and creates every interface; cleanup destroys them; activate starts the
  loop, deactivate stops it and publishes a hold-position trajectory. An engine failure drives
  deactivate -> error processing -> unconfigured; the node can be configured again. A failed
  configure is one log line, and a retry works.
- threads: the executor thread runs subscriptions (O(1) checks and buffering), services,
  parameter callbacks and the 1 Hz timer; the loop infers on its own thread.
- safety: every JointTrajectory the node sends (chunks and holds) passes one gate right
  before publishing (:meth:`PolicyNode._gate`: finite, inside the position limits).
  ``~/hold`` (std_srvs/SetBool; true = hold, false = release) publishes a hold trajectory at
  the commanded position at once and stops chunks until released; the latch survives
  deactivate/activate and reconfigure, and /diagnostics shows it.
- parameters (declared from ``control/params.py``): the user's way in (validated with a
  reason rqt shows, then handed to the loop, which owns the live settings) and a view of
  what the loop uses (calibrated and learned values, ~/instruction), refreshed at 1 Hz.
  Reconfigure-only parameters are described read-only while configured.

Run: ``python -m reflex_ros.ros.policy_node --ros-args -p export_dir:=DIR -p embodiment:=so100``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from reflex_ros import vocab
from reflex_ros.control import configure
from reflex_ros.control import params as P
from reflex_ros.control.chunking import finite_differences, gate_positions
from reflex_ros.control.configure import ConfigureError
from reflex_ros.control.embodiment import EmbodimentError, load_embodiment
from reflex_ros.control.input_rates import input_report
from reflex_ros.control.loop import INPUT, USER, ControlLoop
from reflex_ros.control.stats import LoopStats, diagnostic_status
from reflex_ros.engine.types import ReflexError
from reflex_ros.msg import ActionChunk
from reflex_ros.ros import messages as M
from reflex_ros.ros.action_output import GoalOutcomes, TrajectoryActionOutput
from reflex_ros.ros.params import NODE_OPTIONS, declare_parameters, given_value, parameter_values
from reflex_ros.ros.process import make_executor, parent_lifeline, ros_context, spin_until

WARMUP_ITERATIONS = 3
FAILURE_POLL_S = 0.05


class PolicyNode(LifecycleNode):
    """See the module docstring. Construct inside an initialised rclpy context."""

    def __init__(self, node_name: str = vocab.NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **{**kwargs, **NODE_OPTIONS})
        self.stats = LoopStats()  # one for the node's life: counters add up across configures
        self._loop: ControlLoop | None = None
        self._calibration: Any = None  # LiveCalibration while configured with auto_calibrate
        self._traj_pub: Any = None
        self._chunk_pub: Any = None
        self._subs: list[Any] = []
        self._failure_timer: Any = None
        self._view_depth = 0  # >0 while the node writes the parameter view itself
        self._traj_builder = M.TrajectoryBuilder()  # control-loop thread only
        self._finalized = threading.Event()
        self._held = False  # the ~/hold latch (the loop's copy stops the chunks)
        self._action_out: Any = None  # TrajectoryActionOutput with output_interface:=action
        self._goal_outcomes = GoalOutcomes()  # for the node's life, like stats
        embodiment, defaults = given_value(self, "embodiment"), {}
        if embodiment:
            try:
                defaults = P.embodiment_defaults(load_embodiment(embodiment))
            except EmbodimentError as exc:  # reported again (and fatal) at configure
                self.get_logger().error(str(exc))
        self._explicit = declare_parameters(self, P.PARAMS, defaults)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        # diagnostics run in every state, so "unconfigured because ..." is visible too
        self._diag_pub = self.create_publisher(DiagnosticArray, vocab.DIAGNOSTICS_TOPIC, 10)
        self._diag_timer = self.create_timer(1.0, self._on_tick)
        # the hold / e-stop interface answers in every state (a latch set before activate holds)
        self._hold_srv = self.create_service(SetBool, "~/hold", self._on_hold)

    # ------------------------------------------------------------------ parameters

    def parameter_values(self) -> dict[str, Any]:
        return parameter_values(self, P.SPECS)

    @property
    def explicit_parameters(self) -> dict[str, Any]:
        """Parameters given at start-up or set by a user since, with their values (embodiment
        defaults, calibrated and learned values are not explicit)."""
        values = self.parameter_values()
        return {name: values[name] for name in sorted(self._explicit)}

    @contextmanager
    def _writing_view(self):
        self._view_depth += 1
        try:
            yield
        finally:
            self._view_depth -= 1

    def _set_view(self, values: Mapping[str, Any]) -> None:
        """Show ``values`` in the parameters (not explicit, not validated again)."""
        current = self.parameter_values()
        changed = [Parameter(k, value=v) for k, v in values.items() if k in P.SPECS and current[k] != v and v is not None]
        if changed:
            with self._writing_view():
                for result in self.set_parameters(changed):
                    if not result.successful:
                        self.get_logger().warning(f"parameter view not updated: {result.reason}")

    def describe_parameter(self, name: str) -> ParameterDescriptor:
        """Reconfigure-only parameters read as read-only while configured (rqt greys them out;
        the set callback refuses them regardless)."""
        desc = super().describe_parameter(name)
        if self._loop is not None and name in P.RECONFIGURE_ONLY and not desc.read_only:
            desc = copy.copy(desc)
            desc.read_only = True
        return desc

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate a change; the reason reaches rqt / `ros2 param set` verbatim."""
        ours = [p for p in params if p.name in P.SPECS]
        if self._view_depth or not ours:
            return SetParametersResult(successful=True)
        loop = self._loop
        proposed = loop.settings.as_dict() if loop is not None else self.parameter_values()
        for p in ours:
            if p.name in P.RECONFIGURE_ONLY and loop is not None:
                return SetParametersResult(successful=False, reason=(
                    f"{p.name} is read-only while configured (it takes effect at configure): deactivate and "
                    f"cleanup the node, change it, then configure again"))
            value = list(p.value) if isinstance(p.value, list | tuple) else p.value
            if (reason := P.check_value(p.name, value)) is not None:
                return SetParametersResult(successful=False, reason=reason)
            proposed[p.name] = value
        reason = P.check_with_engine(proposed, loop.engine.info if loop is not None else None)
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _on_parameters_set(self, params: list[Parameter]) -> None:
        """Accepted: a user's value is explicit, and the loop uses it from the next cycle."""
        if self._view_depth:
            return
        changes = {p.name: list(p.value) if isinstance(p.value, list | tuple) else p.value
                   for p in params if p.name in P.SPECS}
        self._explicit.update(changes)
        if self._loop is not None and changes:
            update = self._loop.update_settings(changes, source=USER)
            if update.refused:
                self.get_logger().warning(f"parameters accepted but not applied: {update.refused}")

    # ------------------------------------------------------------------ lifecycle

    @property
    def lifecycle_state(self) -> str:
        """unconfigured / inactive / active, read from what configure created."""
        if self._traj_pub is None:
            return "unconfigured"
        return "active" if self._traj_pub.is_activated else "inactive"

    @property
    def finalized(self) -> threading.Event:
        return self._finalized

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
        self.get_logger().info(f"configured in {time.perf_counter() - started:.2f} s: {summary}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)  # activates the lifecycle publishers
        if ret != TransitionCallbackReturn.SUCCESS:
            return ret
        self._loop.start()
        s = self._loop.settings
        self.get_logger().info(f"active: {s.control_frequency_hz:g} Hz, a chunk every {s.execute_steps} steps"
                               + ("; HELD by ~/hold: no chunks until released" if self._held else ""))
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self._loop.stop():
            self.get_logger().error("control loop did not stop within 60 s")
        held = self._publish_hold()
        super().on_deactivate(state)
        if self._loop.failure is not None:
            return TransitionCallbackReturn.ERROR  # -> on_error: release, back to unconfigured
        self.get_logger().info("inactive" + (": published a hold-position trajectory" if held else ""))
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: engine released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.lifecycle_state == "active":
            self._loop.stop()
            self._publish_hold()
        self._release()
        self._finalized.set()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        reason = (self._loop.failure if self._loop is not None else None) or self.stats.last_error or "a transition raised"
        self._release()
        self.get_logger().error(f"error processing: {reason}; engine released, node is unconfigured "
                                f"(fix the cause and configure again)")
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the control loop before the handles it uses go away."""
        self._release()
        super().destroy_node()

    def finish(self) -> None:
        """Clean stop from the process itself (SIGINT/SIGTERM): hold, release, finalize."""
        if self.lifecycle_state == "active":
            self.trigger_deactivate()
        if self.lifecycle_state == "inactive":
            self.trigger_cleanup()
        self.trigger_shutdown()

    # ------------------------------------------------------------------ configure / cleanup

    def _configure(self) -> str:
        from reflex_ros.engine.loader import load_engine

        self.stats.last_error = ""
        values = configure.with_embodiment(self.parameter_values(), self._explicit)
        configure.check_required(values)
        calibration = None
        if values["auto_calibrate"]:
            from reflex_ros.calibration.live import LiveCalibration

            calibration = LiveCalibration(values, self.explicit_parameters, self.get_logger())
            values.update(calibration.select_runtime(values))
        engine = load_engine(values["export_dir"], **configure.engine_options(values))
        try:
            values = configure.fit_engine(values, engine.info, self._explicit, self.get_logger().warning)
            if calibration is not None:
                values.update(calibration.resolve(engine, values))
            configure.check_ready(values, engine.info)
            self._loop = self._make_loop(engine, P.Settings(values), calibration)
            self._loop.held = self._held
        except BaseException:
            engine.close()
            raise
        self._calibration = calibration
        warm_ms = self._loop.warm_up(WARMUP_ITERATIONS)
        self._create_interfaces(values)
        self._set_view(values)
        info, s = engine.info, self._loop.settings
        return (f"engine={info.engine} provider={info.provider} dtype={info.dtype} "
                f"nfe={s.nfe or info.extra.get('default_nfe', 'default')} chunk={s.chunk_size or info.chunk_size} "
                f"joints={len(s.joint_names)} cameras={len(s.camera_topics)} model={info.model_hash} "
                f"warm-up={warm_ms:.0f} ms calibration={calibration.state if calibration is not None else 'off'}")

    def _make_loop(self, engine: Any, settings: P.Settings, calibration: Any) -> ControlLoop:
        subscribers = [self.stats] + ([calibration] if calibration is not None else [])
        return ControlLoop.build(engine, settings, publish=self._publish_chunk, logger=self.get_logger(),
                                 now_ns=lambda: self.get_clock().now().nanoseconds, subscribers=subscribers,
                                 pinned=self._explicit)

    def _create_interfaces(self, values: Mapping[str, Any]) -> None:
        loop = self._loop
        self._traj_pub = self.create_lifecycle_publisher(JointTrajectory, vocab.TRAJECTORY_TOPIC, 10)
        self._chunk_pub = self.create_lifecycle_publisher(ActionChunk, vocab.ACTION_CHUNK_TOPIC, 10)
        if values["output_interface"] == vocab.OUTPUT_ACTION:  # goals instead of the trajectory topic
            self._action_out = TrajectoryActionOutput(self, values["controller_name"], self._goal_outcomes)
        for topic in values["camera_topics"]:  # Image, or CompressedImage for ".../compressed" (auto)
            camera_type = M.message_class(loop.assembler.camera_types[topic])
            self._subs.append(self.create_subscription(camera_type, topic, partial(loop.offer_camera, topic),
                                                       qos_profile_sensor_data))
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._subs.append(self.create_subscription(JointState, values["joint_states_topic"], loop.offer_joint_state,
                                                   reliable))
        self._subs.append(self.create_subscription(String, vocab.INSTRUCTION_TOPIC, self._on_instruction, 10))
        # The loop cannot run a lifecycle transition itself (they belong to the executor thread);
        # this timer notices an engine failure and starts error processing.
        self._failure_timer = self.create_timer(FAILURE_POLL_S, self._on_failure_poll)

    def _release(self) -> None:
        """Undo configure (safe in any state, any number of times)."""
        loop, self._loop = self._loop, None
        if loop is not None and not loop.stop():
            self.get_logger().error("control loop did not stop within 60 s")
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        for pub in (self._traj_pub, self._chunk_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._traj_pub = self._chunk_pub = None
        action_out, self._action_out = self._action_out, None
        if action_out is not None:
            action_out.destroy()
        if self._failure_timer is not None:
            self.destroy_timer(self._failure_timer)
            self._failure_timer = None
        if loop is not None:
            try:
                loop.engine.close()
            except Exception as exc:  # releasing must not fail the transition
                self.get_logger().warning(f"engine close: {type(exc).__name__}: {exc}")
        calibration, self._calibration = self._calibration, None
        if calibration is not None:
            calibration.close()

    # ------------------------------------------------------------------ callbacks

    def _on_instruction(self, msg: String) -> None:
        if self._loop is not None:
            self._loop.update_settings({"instruction": str(msg.data)}, source=INPUT)

    def _on_failure_poll(self) -> None:
        loop = self._loop
        if loop is not None and loop.failure is not None and self.lifecycle_state == "active":
            self.trigger_deactivate()

    def _gate(self, positions: Any) -> Any:
        """The one check every outgoing trajectory passes right before it is published (chunks
        and holds): finite (else ChunkError, nothing published) and inside the position limits
        (a value outside would be a bug upstream: clipped, and logged as an error)."""
        loop = self._loop
        safe, clipped = gate_positions(positions, loop.limits, loop.assembler.joint_names)
        if clipped:
            self.get_logger().error(f"safety gate: {clipped} trajectory value(s) outside the position limits were "
                                    "clipped right before publishing (a bug upstream; please report it)",
                                    throttle_duration_sec=2.0)
        return safe

    def _publish_chunk(self, plan: Any, result: Any, s: P.Settings, inference_ms: float) -> None:
        """The loop's sink (control thread): CDR bytes for the trajectory, the chunk message."""
        names = self._loop.assembler.joint_names
        safe = self._gate(plan.positions)
        if safe is not plan.positions and not (safe == plan.positions).all():
            plan = dataclasses.replace(plan, positions=safe, velocities=finite_differences(safe, plan.dt_s))
        if self._action_out is not None:  # a FollowJointTrajectory goal preempting the previous one
            self._action_out.send(M.trajectory_msg(plan, names))
        else:
            self._traj_pub.publish(self._traj_builder.serialized(plan, names))
        self._chunk_pub.publish(M.action_chunk_msg(
            plan, names, latency_compensation_ms=s.latency_compensation_ms,
            inference_ms=float(result.timings_ms.get("total", inference_ms)), nfe=result.nfe,
            model_hash=self._loop.engine.info.model_hash))

    def _send_hold(self, positions: Any, dt_ns: int) -> Any:
        """Publish a hold-position trajectory (through the gate); returns what was sent."""
        safe = self._gate(positions)
        hold = M.hold_trajectory_msg(safe, self._loop.assembler.joint_names, dt_ns)
        if self._action_out is not None:
            self._action_out.send(hold)
        else:
            self._traj_pub.publish(hold)
        return safe

    def _publish_hold(self) -> bool:
        """Hold the last measured positions so a controller stops executing a stale chunk."""
        hold = self._loop.hold_command()
        if hold is None:
            self.get_logger().warning("no joint state received yet: no hold-position trajectory sent")
            return False
        try:
            self._send_hold(*hold)
        except Exception as exc:
            self.get_logger().error(f"hold trajectory: {type(exc).__name__}: {exc}")
            return False
        return True

    def _on_hold(self, request: Any, response: Any) -> Any:
        """``~/hold`` (std_srvs/SetBool): true = hold now at the commanded position and publish
        no chunk until released; false = release. Idempotent; answers in every state."""
        on, loop, state = bool(request.data), self._loop, self.lifecycle_state
        was, self._held = self._held, on
        self.stats.held = on
        response.success = True
        if not on:
            if loop is not None:
                loop.set_hold(False)
            response.message = "released: chunks resume with the next observation" if was else "was not held"
            if was:
                self.get_logger().info("~/hold released: chunks resume with the next observation")
            return response
        if loop is None or state != "active":
            if loop is not None:
                loop.held = True
            response.message = f"held (node {state}): no chunks will be published until released"
            self.get_logger().warning(f"~/hold: held while {state}; no chunks until released")
            return response
        try:
            held_at = loop.set_hold(True, publish_hold=self._send_hold)
        except Exception as exc:  # the latch is set either way: no chunk goes out
            response.message = f"held, but the hold trajectory failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(f"~/hold: {response.message}")
            return response
        if held_at is None:
            response.message = "held; no joint state yet, so no hold trajectory was sent; no chunks until released"
        else:
            where = "[" + ", ".join(f"{v:.4f}" for v in self._gate(held_at)) + "]"
            response.message = f"held at {where} (the commanded position); no chunks until released"
        self.get_logger().warning(f"~/hold: {response.message}")
        return response

    def _on_tick(self) -> None:
        """1 Hz, executor thread: refresh the parameter view, the loop's housekeeping
        (calibration's lag estimate), /diagnostics."""
        try:
            loop, label = self._loop, self.lifecycle_state
            if loop is not None:
                self._set_view(loop.settings.as_dict())
                loop.housekeeping()
            settings = loop.settings if loop is not None else P.Settings(self.parameter_values())
            info = loop.engine.info if loop is not None else None
            calibration = self._calibration.state if self._calibration is not None else "off"
            self.stats.held = self._held
            level, message, values = diagnostic_status(
                label, self.stats, watchdog_stale=loop is not None and loop.watchdog_stale, engine_info=info,
                settings=settings, calibration_state=calibration)
            if loop is not None:  # per input: received rate, newest age; a starving one is WARN
                starving, input_values = input_report(loop.assembler.rates, self.get_clock().now().nanoseconds,
                                                      settings.max_observation_age_ms)
                values.update(input_values)
                if starving and label == "active" and level == "OK":
                    level, message = "WARN", "input starving: " + "; ".join(starving)
            if self._action_out is not None:  # goals: counts, and WARN after a rejection/abort/violation
                values.update(self._action_out.values())
                problem = self._goal_outcomes.recent_problem()
                if problem and label == "active" and level == "OK":
                    level, message = "WARN", f"trajectory action: {problem}"
            self._diag_pub.publish(M.build_diagnostic_array(
                stamp_ns=self.get_clock().now().nanoseconds, node_name=self.get_name(),
                hardware_id=info.model_hash if info is not None else "none", level=level, message=message,
                values=values))
        except Exception as exc:
            self.get_logger().error(f"diagnostics: {type(exc).__name__}: {exc}", throttle_duration_sec=2.0)


def main(argv: list[str] | None = None) -> int:
    """Process entry point: spin until SIGINT/SIGTERM or the shutdown transition."""
    # The control loop and the executor thread share the GIL; with the default 5 ms switch
    # interval a loop thread coming back from onnxruntime (which releases the GIL) can wait
    # up to 5 ms for the executor thread to yield. Latency matters more here than throughput.
    sys.setswitchinterval(float(os.environ.get("REFLEX_GIL_SWITCH_S", "0.0005")))
    with ros_context(sys.argv if argv is None else argv) as stop:
        lifeline = parent_lifeline(stop)  # started by `reflex-ros run`: shut down when it is gone
        node = PolicyNode()
        executor = make_executor()
        executor.add_node(node)
        node.get_logger().info(f"ready (unconfigured); explicit parameters: {sorted(node.explicit_parameters)}")
        try:
            spin_until(executor, lambda: stop.is_set() or node.finalized.is_set())
            if lifeline is not None and lifeline.is_set():
                node.get_logger().warning("the process that started this node is gone (reflex-ros run killed or "
                                          "hung up): holding position and shutting down")
            if not node.finalized.is_set():
                node.finish()
        finally:
            executor.shutdown()
            node.destroy_node()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ConfigureError", "PolicyNode", "main"]
