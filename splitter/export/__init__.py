"""Writing what runs: the bundle of one cut (bundle), the tail's batch axis (batch_axis), the int8
head and .ort files (optimize), and the multi-cut bundle with its decision table (adaptive)."""
