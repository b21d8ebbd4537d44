"""Training callbacks."""

import math

import keras


class NonFiniteLossError(RuntimeError):
    """Raised by `StopOnNaN` when the training loss becomes NaN or infinite."""


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, and says why.

    It raises `NonFiniteLossError` with a message naming the step and the usual
    causes. Raising (rather than `keras.callbacks.TerminateOnNaN`'s quiet stop)
    keeps the checkpoints and the `BackupAndRestore` state of the last good
    epoch untouched: nothing is saved from the broken weights.

    Example:
    ```python
    try:
        model.fit(dataset, callbacks=[StopOnNaN()])
    except NonFiniteLossError as error:
        print(error)
    ```
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = int(self.model.optimizer.iterations.numpy())
        raise NonFiniteLossError(
            f"Training stopped: the loss became {float(loss)} at step {step}. Usual "
            "causes: a learning rate too high for the batch size, label values outside "
            "[0, num_classes) that are not the ignore label, or float16 overflow (try "
            "bfloat16 or float32). The checkpoints of the last good epoch are kept; "
            "training resumes from them when run again."
        )


def training_callbacks(output_dir):
    """The callbacks of a long training run, all writing under `output_dir`.

    `StopOnNaN`; `keras.callbacks.BackupAndRestore` in `backup/` with two
    alternating backups (rerunning the same `fit` resumes from the last completed
    epoch after a crash or kill, also one that hits while a backup is written);
    `ModelCheckpoint` to `checkpoint.keras` after every epoch; TensorBoard logs
    in `logs/`; and `history.csv`. Use epochs as checkpoint intervals
    (`steps_per_epoch` = steps between checkpoints).
    """
    import os

    return [
        StopOnNaN(),
        # Two backups: a kill while one is being written leaves the other intact.
        keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup"), double_checkpoint=True),
        keras.callbacks.ModelCheckpoint(os.path.join(output_dir, "checkpoint.keras")),
        keras.callbacks.TensorBoard(os.path.join(output_dir, "logs")),
        keras.callbacks.CSVLogger(os.path.join(output_dir, "history.csv"), append=True),
    ]
