"""Reading chest X-ray folders: preprocessing, datasets, patient-level splits, the DataModule."""
