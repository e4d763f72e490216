"""The model as plain data: the Graph read once from ONNX, its cuts, the freezing of
shapes and the device memory a head needs. Built once per run and passed on."""
