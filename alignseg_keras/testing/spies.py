"""Spies on the command line and on the alignment sampler, for their tests."""


def record_predicted_models(monkeypatch):
    """A list that receives the model of every image the command line predicts
    (`alignseg_keras.cli.common.predict_probabilities`), in order.

    Example:
    ```python
    models = record_predicted_models(monkeypatch)
    main(["predict", "a.png", "--model", "m.keras", "--output", "out"])
    models[0].dtype_policy.name  # "float32"
    ```
    """
    from alignseg_keras.cli import common

    models = []
    original = common.predict_probabilities

    def predict_probabilities(model, image, args):
        models.append(model)
        return original(model, image, args)

    monkeypatch.setattr(common, "predict_probabilities", predict_probabilities)
    return models


def record_tap_sums(monkeypatch):
    """A list that receives `batched_taps` of every weighted tap sum the
    alignment sampler traces (`alignseg_keras.layers.alignment._weighted_tap_sum`:
    True where it sums the four taps batched), in order.

    Example:
    ```python
    batched = record_tap_sums(monkeypatch)
    AlignmentLayer("official")([features, offsets], training=True)
    batched  # [True] on JAX's CPU (`alignment.batches_taps`)
    ```
    """
    from alignseg_keras.layers import alignment

    batched = []
    original = alignment._weighted_tap_sum

    def weighted_tap_sum(table, index, weights, batched_taps):
        batched.append(batched_taps)
        return original(table, index, weights, batched_taps)

    monkeypatch.setattr(alignment, "_weighted_tap_sum", weighted_tap_sum)
    return batched
