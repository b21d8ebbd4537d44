"""Spies on the command line, for its tests."""


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
