"""The network and the LightningModule that trains it: loss and mixup, per-epoch metrics, the
threshold rules and calibration."""
