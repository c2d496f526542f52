"""LeRobot pi0: PaliGemma (SigLIP + Gemma) prefix, Gemma action expert with a state token."""
