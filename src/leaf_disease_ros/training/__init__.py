"""Training: datasets, augmentation, calibration, training and ONNX export (torch only here)."""
