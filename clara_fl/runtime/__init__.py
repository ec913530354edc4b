"""The runtime core shared by standalone and FL: device, AMP, TF32, cuDNN, determinism, checkpoints."""
