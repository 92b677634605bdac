"""Compression of trained families: 16-bit casts, int8 quantisation (dynamic, static, QAT), magnitude and
channel pruning, knowledge distillation, ONNX export. `compress.compress` is the stage driver; every
method is a function `method(ctx, **params) -> Compressed` configured in conf/compress/<method>.yaml."""
