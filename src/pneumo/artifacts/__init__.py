"""Files a run leaves behind: the checkpoint schema and its safe reading, atomic output, run
directories. Imports nothing of pneumo but ``errors``."""
