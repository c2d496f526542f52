"""The ROS-free control layer: everything between sensor messages and a stamped trajectory.

Nothing here imports rclpy (the node, bag replay and the tests share it): input decoders
(``inputs/``), approximate-time sync, the observation assembler, chunk planning and safety,
chunk strategies (``strategies/``), the joint_trajectory_controller model, the embodiment
contract, the parameter table and the control loop with its subscribers.
"""
