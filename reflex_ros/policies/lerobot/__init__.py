"""Shared pieces for LeRobot's pi0, pi0.5 and SmolVLA policies.

Checkpoint reading, the family spec, normalization, image resize-with-pad and the tokenizer
wrapper are numpy-only (the ONNX serving path never imports torch); the torch building
blocks (vision towers, decoder layers, RoPE, attention) live in their own modules and are
imported only by the family models.
"""
