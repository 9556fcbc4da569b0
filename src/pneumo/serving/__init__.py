"""A checkpoint applied: loading it alone, inference on files (batches, TTA), ensembles,
export to ONNX / TorchScript, Grad-CAM."""
