"""pneumo: chest X-ray NORMAL/PNEUMONIA classification with ResNet18, Lightning and Hydra.

A research tool, not a medical device: its outputs must never guide the care of a patient.
"""

__version__ = "0.1.0"
