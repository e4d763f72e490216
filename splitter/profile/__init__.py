"""Measuring a model: the Profile file (schema), how runs are timed (timing), the per-cut
measurement (measure), the per-op profile (ops), and prediction from a device's calibration
(predict/)."""
