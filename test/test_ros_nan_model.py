"""Issue 13 item 7 over real DDS: a model that produces only NaN (a real ONNX export whose
weights are NaN, conftest's ``nan_export``). Its chunks are refused, nothing is published,
and /diagnostics says so at ERROR, naming the refusal (it used to say "waiting for
synchronized observations", and OK "publishing chunks" once some chunks had gone out)."""

from __future__ import annotations

from _ros_harness import SO100_JOINTS, wait_for

POLICY = {"export": "nan_export", "node": {"parameters": {"execute_steps": 3}}}


def test_an_all_nan_model_is_an_error_naming_the_refusal(node, robot) -> None:
    mark = len(node.lines)
    robot.feed(True, rate_hz=30.0, state=lambda: (SO100_JOINTS, [0.0] * 6))
    diag = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and
                    int(d["refused_chunks"]) >= 3 and d, 90, "refused chunks")
    assert diag["_level"] == 2, diag
    assert diag["_message"].startswith("chunks refused: chunk row 0 joint 'shoulder_pan' is nan"), diag["_message"]
    assert diag["chunks_published"] == "0" and robot.chunk_count() == 0 and not robot.trajectories
    line = node.wait_for_log("chunk not published: chunk row 0 joint 'shoulder_pan' is nan", timeout_s=30, start=mark)
    assert line is not None
