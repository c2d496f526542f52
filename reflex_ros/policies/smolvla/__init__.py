"""LeRobot SmolVLA: truncated SmolVLM prefix, interleaved cross-/self-attention action expert."""
