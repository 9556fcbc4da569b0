"""The network, the LightningModule and what reads their outputs: metrics, the threshold,
calibration, loading a checkpoint, inference, ensembles, export."""
