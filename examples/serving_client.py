"""Clients of an AlignSeg SavedModel served by TF Serving, over REST and gRPC.

`docs/serving.md` shows this file as it is, and `tests/test_serving.py` runs
it against loopback servers that answer as TF Serving does. The REST client
needs only the standard library and NumPy; the gRPC client needs
`pip install tensorflow-serving-api` (and TensorFlow for its tensor protos).

Example:
```python
with open("scene.png", "rb") as file:
    labels = predict_rest(file.read())["labels"]  # int32 (H, W)
```
"""

import base64
import json
import urllib.request

import numpy as np

REST_URL = "http://localhost:8501/v1/models/alignseg:predict"
GRPC_TARGET = "localhost:8500"


def rest_body(encoded_image, signature_name="encoded_labels"):
    """The JSON body for one PNG or JPEG file: base64, as TF Serving's REST API wants bytes."""
    return {
        "signature_name": signature_name,
        "instances": [{"b64": base64.b64encode(encoded_image).decode("ascii")}],
    }


def rest_pixels_body(image, signature_name="labels"):
    """The JSON body for one uint8 RGB image `(H, W, 3)`, as nested lists of integers."""
    return {"signature_name": signature_name, "instances": [np.asarray(image, "uint8").tolist()]}


def post_rest(body, url=REST_URL, timeout=60.0):
    """POSTs a body to TF Serving's predict URL; returns the first prediction as arrays.

    Returns a dict with `labels` (int32 `(H, W)`) and, for the signatures that
    have them, `probabilities` (float32 `(H, W, num_classes)`).
    """
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        prediction = json.load(reply)["predictions"][0]
    if not isinstance(prediction, dict):  # a signature with one output: TF Serving omits its name
        prediction = {"labels": prediction}
    dtypes = {"labels": np.int32, "probabilities": np.float32}
    return {name: np.asarray(value, dtypes[name]) for name, value in prediction.items()}


def predict_rest(encoded_image, url=REST_URL, signature_name="encoded_labels", timeout=60.0):
    """Labels (and probabilities, with `signature_name="encoded"`) of one PNG or JPEG file."""
    return post_rest(rest_body(encoded_image, signature_name), url, timeout)


def predict_grpc(encoded_images, target=GRPC_TARGET, model_name="alignseg",
                 signature_name="encoded_labels", timeout=60.0):
    """Labels `(batch, H, W)` of PNG or JPEG files of one size, over gRPC (labels only)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["encoded_images"].CopyFrom(tf.make_tensor_proto(list(encoded_images)))
    request.output_filter.append("labels")
    with grpc.insecure_channel(target) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=timeout
        )
    return tf.make_ndarray(reply.outputs["labels"])
