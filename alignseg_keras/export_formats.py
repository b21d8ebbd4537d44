"""The export formats of `alignseg_keras.export`, importable without TensorFlow.

The command line builds its parser from them before it knows whether an export
(which needs TensorFlow) will run.
"""

EXPORT_FORMATS = ("saved_model", "onnx", "litert")
