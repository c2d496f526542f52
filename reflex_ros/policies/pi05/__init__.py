"""LeRobot pi0.5: pi0's backbone, the state as discretized prompt text, AdaRMS time conditioning."""
