"""Writing what runs: the bundle of one cut (bundle), head∘tail verified against the unsplit model
(verify), the tail's batch axis (batch_axis), the int8 head and .ort files (optimize), and the
multi-cut bundle with its decision table (adaptive)."""
