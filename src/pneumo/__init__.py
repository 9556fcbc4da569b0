"""pneumo: chest X-ray NORMAL/PNEUMONIA classification with ResNet18, Lightning and Hydra.

See ``DISCLAIMER``: a research tool, not a medical device.
"""

__version__ = "0.1.0"

# Said once here; logged by every run and printed by every command that makes predictions.
DISCLAIMER = (
    "pneumo is a research tool, not a medical device: its outputs must never be used to "
    "diagnose, treat or triage a patient."
)
