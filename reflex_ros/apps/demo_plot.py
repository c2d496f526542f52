"""``reflex-ros demo --plot FILE.png``: commanded vs measured position of every joint.

One panel per joint, time on the demo's clock from the first sample: the measured position
(``/joint_states``), the command a deferring joint_trajectory_controller executed (the same
model the tracking error uses, ``control.jtc.commanded_series``), a faint line at every
chunk's takeover, and each episode shaded green (success) or red (failure) with its seed.
The lag between the two curves is the actuation lag the calibrator learns; with
``--actuation-delay-ms`` it is visible by eye. matplotlib is imported here only, so the demo
needs it only when asked for a plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_run(rec: Any, episodes: list[Any], path: Path, title: str) -> Path:
    """Write the figure to ``path`` (PNG); returns it. ``rec`` is a LoopRecording."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    from reflex_ros.control.jtc import commanded_series

    if not rec.meas_t_ns:
        raise RuntimeError("--plot: no joint states were recorded")
    meas_t = np.asarray(rec.meas_t_ns, dtype=np.int64)
    meas = np.stack(rec.meas_pos)
    t0 = int(meas_t[0])

    def sec(ns: Any) -> np.ndarray:
        return (np.asarray(ns, dtype=np.int64) - t0) / 1e9

    cmd_t = cmd = None
    if rec.trajectories:
        cmd_t, cmd = commanded_series([(t.start_ns, t.offsets_ns, t.positions, t.recv_ns) for t in rec.trajectories])
    takeovers = [max(t.start_ns, t.recv_ns) for t in rec.trajectories]

    joints = rec.joint_names
    fig, axes = plt.subplots(len(joints), 1, sharex=True, figsize=(12, 1.6 * len(joints) + 1.0))
    axes = np.atleast_1d(axes)
    for j, (ax, name) in enumerate(zip(axes, joints, strict=True)):
        for episode in episodes:
            color = "tab:green" if episode.success else "tab:red"
            ax.axvspan(sec(episode.start_ns), sec(episode.end_ns), color=color, alpha=0.08, lw=0)
        for t in takeovers:
            ax.axvline(sec(t), color="0.85", lw=0.5, zorder=0)
        if cmd is not None:
            ax.plot(sec(cmd_t), cmd[:, j], color="tab:orange", lw=1.0, label="commanded (JTC)")
        ax.plot(sec(meas_t), meas[:, j], color="tab:blue", lw=1.0, label="measured")
        ax.set_ylabel(f"{name}\n[rad]", fontsize=8)
        ax.tick_params(labelsize=7)
    for episode in episodes:
        label = f"seed {episode.seed}: {'success' if episode.success else 'fail'}"
        axes[0].annotate(label, (sec(episode.start_ns), 1.02), xycoords=("data", "axes fraction"), fontsize=7,
                         color="tab:green" if episode.success else "tab:red")
    axes[0].legend(loc="upper right", fontsize=7, ncol=2)
    axes[-1].set_xlabel("time [s]  (faint lines: chunk takeovers; shading: episodes)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
