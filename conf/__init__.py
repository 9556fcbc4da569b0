"""Hydra configuration tree of pneumo (packaged as ``pneumo.conf``)."""
