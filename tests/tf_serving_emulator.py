"""TF Serving's Predict API over an exported SavedModel, on loopback, for tests.

`tensorflow_model_server` cannot be installed here (it is neither on PyPI nor
in Debian), so these servers answer as it does, for the Predict method only:

- gRPC: `tensorflow-serving-api`'s own `PredictionService` and
  `PredictRequest` / `PredictResponse` protos. The signature is
  `model_spec.signature_name` (`serving_default` when empty); the request's
  inputs must be exactly the signature's; `output_filter` selects outputs
  (all when empty); a failed signature call is `INVALID_ARGUMENT` with
  TensorFlow's message.
- REST: `POST /v1/models/NAME[/versions/N]:predict` with TF Serving's JSON
  bodies. Row format (`"instances"`: one value per example; for a signature
  with one input, the value itself; `{"b64": ...}` is base64-encoded bytes)
  answers `{"predictions": [...]}`, one entry per example: the value itself
  for a signature with one output, else an object of named outputs.
  Columnar format (`"inputs"`) answers `{"outputs": ...}` alike. Errors are
  HTTP 400 with `{"error": message}`.

Both bind to 127.0.0.1 on a port the system picks, and stop when the
context ends.
"""

import base64
import contextlib
import http.server
import json
import re
import threading
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

DEFAULT_SIGNATURE = "serving_default"


class SavedModelSignatures:
    """The signatures of one SavedModel, called as TF Serving calls them."""

    def __init__(self, export_dir):
        self.signatures = tf.saved_model.load(str(export_dir)).signatures

    def input_specs(self, name):
        return self.signature(name).structured_input_signature[1]

    def signature(self, name):
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise KeyError(f"Serving signature name: \"{name}\" not found in signature def")
        return self.signatures[name]

    def run(self, name, inputs):
        """Runs signature `name` on `{input name: array}`; returns `{output name: array}`."""
        specs = self.input_specs(name)
        if set(inputs) != set(specs):
            raise ValueError(
                f"Request inputs {sorted(inputs)} do not match the signature's {sorted(specs)}"
            )
        tensors = {key: tf.constant(value, specs[key].dtype) for key, value in inputs.items()}
        return {key: value.numpy() for key, value in self.signature(name)(**tensors).items()}


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`PredictionService.Predict` for one model name."""

    def __init__(self, model_name, signatures):
        self.model_name = model_name
        self.signatures = signatures

    def Predict(self, request, context):
        if request.model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: {request.model_spec.name}")
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        try:
            outputs = self.signatures.run(name, inputs)
        except (KeyError, ValueError, tf.errors.InvalidArgumentError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(error))
        wanted = list(request.output_filter) or list(outputs)
        unknown = sorted(set(wanted) - set(outputs))
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"output tensor alias not found in signature: {unknown[0]}")
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.model_spec.signature_name = name
        for key in wanted:
            response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
        return response


def _message(error):
    return getattr(error, "message", None) or str(error)


@contextlib.contextmanager
def grpc_server(export_dir, model_name="alignseg"):
    """A loopback gRPC PredictionService; yields its target `"127.0.0.1:PORT"`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(model_name, SavedModelSignatures(export_dir)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(timeout=30)


def _json_value(value, dtype):
    """One JSON value of a request as an array of the signature's dtype.

    As TF Serving's json_tensor.cc: integer inputs take JSON integers only, not
    range-checked: TensorFlow casts them to the dtype as C does (300 is 44 in
    uint8, -1 is 255)."""
    if dtype == tf.string:
        return np.array(_bytes_of(value), dtype=object)
    array = np.asarray(value)
    if dtype.is_integer and array.size and array.dtype.kind not in "iu":
        raise ValueError(f"JSON value(s) not of expected type: {dtype.name}")
    return array.astype(np.int64).astype(dtype.as_numpy_dtype) if dtype.is_integer else (
        array.astype(dtype.as_numpy_dtype))


def _bytes_of(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_bytes_of(item) for item in value]
    return value.encode("utf-8") if isinstance(value, str) else value


def _is_named(value):
    """A JSON object of named inputs, not a `{"b64": ...}` value (json_tensor.cc)."""
    return isinstance(value, dict) and set(value) != {"b64"}


def _inputs_of_body(body, specs):
    """`{input name: array}` of a row (`instances`) or columnar (`inputs`) body: as
    TF Serving's json_tensor.cc, named inputs (an object of input names, for one input
    too) or the value of the signature's only input."""
    if "instances" in body:
        rows = body["instances"]
        if rows and _is_named(rows[0]):
            columns = {key: [row[key] for row in rows] for key in rows[0]}
        else:
            columns = {next(iter(specs)): rows}
    elif "inputs" in body:
        inputs = body["inputs"]
        columns = inputs if _is_named(inputs) else {next(iter(specs)): inputs}
    else:
        raise ValueError("Missing 'inputs' or 'instances' key")
    unknown = sorted(set(columns) - set(specs))
    if unknown:
        raise ValueError(f"input(s) {unknown} not in the signature's inputs {sorted(specs)}")
    return {key: _json_value(value, specs[key].dtype) for key, value in columns.items()}


def rest_predict(signatures, body):
    """TF Serving's REST predict on a parsed JSON body; returns the JSON reply as a dict."""
    name = body.get("signature_name", DEFAULT_SIGNATURE)
    specs = signatures.input_specs(name)
    outputs = signatures.run(name, _inputs_of_body(body, specs))
    single = len(outputs) == 1
    if "instances" in body:
        count = len(next(iter(outputs.values())))
        rows = [{key: value[index].tolist() for key, value in outputs.items()}
                for index in range(count)]
        return {"predictions": [next(iter(row.values())) if single else row for row in rows]}
    columns = {key: value.tolist() for key, value in outputs.items()}
    return {"outputs": next(iter(columns.values())) if single else columns}


@contextlib.contextmanager
def rest_server(export_dir, model_name="alignseg"):
    """A loopback HTTP server for TF Serving's REST predict; yields its predict URL."""
    signatures = SavedModelSignatures(export_dir)
    path = re.compile(rf"^/v1/models/{re.escape(model_name)}(/versions/\d+)?:predict$")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            if not path.match(self.path):
                return self._reply(404, {"error": f"Malformed request: POST {self.path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                return self._reply(200, rest_predict(signatures, body))
            except (KeyError, ValueError, tf.errors.InvalidArgumentError) as error:
                return self._reply(400, {"error": _message(error)})

        def _reply(self, status, content):
            data = json.dumps(content).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/models/{model_name}:predict"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
