"""Predicting latencies on a device the planner cannot run on: kernel features as onnxruntime
runs them (features), the calibration suite (suite), and a DeviceProfile's predictions (device)."""
