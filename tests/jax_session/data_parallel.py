"""One training step of a tiny AlignSeg with `keras.distribution.DataParallel` on JAX.

Run with `KERAS_BACKEND=jax` and several devices, e.g. 2 virtual CPU devices:
`XLA_FLAGS=--xla_force_host_platform_device_count=2`. Trains one step on one
device, then the same step from the same weights data-parallel over all
devices, and prints a JSON line comparing losses and weights (BatchNorm
statistics span the global batch in both).
"""

import json

import jax
import keras
import numpy as np

import cases


def one_step(model, initial_weights, images, labels):
    model.set_weights(initial_weights)
    cases.compile_for_one_step(model)
    loss = float(model.train_on_batch(images, labels))
    return loss, model.get_weights()


def main():
    images, labels = cases.images(), cases.labels()
    model = cases.tiny_alignseg()
    cases.randomize_weights(model)
    initial = model.get_weights()
    single_loss, single = one_step(model, initial, images, labels)

    keras.distribution.set_distribution(keras.distribution.DataParallel())
    parallel_loss, parallel = one_step(cases.tiny_alignseg(), initial, images, labels)
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "single_loss": single_loss,
                "parallel_loss": parallel_loss,
                "max_weight_difference": max(
                    float(np.abs(a - b).max()) for a, b in zip(single, parallel)
                ),
                "weight_scale": max(float(np.abs(w).max()) for w in single),
            }
        )
    )


if __name__ == "__main__":
    main()
