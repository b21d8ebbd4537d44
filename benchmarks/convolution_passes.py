"""The three passes of one convolution in TensorFlow and in PyTorch, side by side.

    python -m benchmarks.convolution_passes --precision bfloat16 --shape 2 128 128 256 --kernel 3 --filters 256

A training step computes, for every convolution, its forward pass, the gradient
of its input and the gradient of its kernel: the same multiply-adds three times.
`benchmarks.convolution_peak` bounds the step as if all three ran at the
forward's best rate; this script measures how fast each one runs, in
TensorFlow (`Conv2D`, `Conv2DBackpropInput`, `Conv2DBackpropFilter`: oneDNN's
kernels on CPU, channels last) and in PyTorch (`aten.convolution_backward`, in
its default channels-first layout and in channels last), round-robin in one
process, the minimum of `--repeats` rounds; TensorFlow's kernel gradient
computed as `k * k` matrix products (`kernel_gradient_by_matrix_products`); and all
three passes together (forward, then both gradients through autodiff) of
TensorFlow's convolution, of `convolution_by_shifted_products` (the offset heads'
form) and of PyTorch's. Prints one JSON line: GFLOP/s (2 per multiply-add, three
times the forward's for the three passes together) of each (library, pass).
"""

import argparse
import json

PASSES = ("forward", "input gradient", "kernel gradient")
# A candidate for the kernel gradient, timed beside TensorFlow's own (see
# `kernel_gradient_by_matrix_products`).
MATRIX_PRODUCTS = "kernel gradient, k*k matrix products"
# Forward and both gradients in one call, as a training step runs them.
ALL_PASSES = "forward and both gradients"
SHIFTED_PRODUCTS = "forward and both gradients, shifted products"


def random_inputs(shape, kernel_size, filters, seed=0):
    """float32 images `(B, H, W, C)`, kernel `(k, k, C, filters)` and upstream gradient."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batch, height, width, channels = shape
    return (rng.normal(size=shape).astype("float32"),
            (rng.normal(size=(kernel_size, kernel_size, channels, filters)) * 0.05).astype("float32"),
            rng.normal(size=(batch, height, width, filters)).astype("float32"))


def channels_first_inputs(inputs):
    """`random_inputs` in PyTorch's layouts: NCHW images and gradient, OIHW kernel."""
    images, kernel, upstream = inputs
    return (images.transpose(0, 3, 1, 2).copy(), kernel.transpose(3, 2, 0, 1).copy(),
            upstream.transpose(0, 3, 1, 2).copy())


def kernel_gradient_by_matrix_products(images, upstream, kernel_size):
    """The kernel gradient of a stride-1 'same' convolution as `k * k` matrix products.

    `dW[i, j] = X_ij^T G`, where `X_ij` is the zero-padded input shifted by `(i, j)` and
    `G` the upstream gradient, both flattened to `(B * H * W, channels)`: a copy of the
    input per kernel position and one matrix product each, instead of oneDNN's
    backward-weights convolution.
    """
    import tensorflow as tf

    _, height, width, channels = images.shape
    pad = kernel_size // 2
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    flat_upstream = tf.reshape(upstream, [-1, upstream.shape[-1]])
    products = [tf.matmul(tf.reshape(padded[:, i:i + height, j:j + width, :], [-1, channels]), flat_upstream,
                          transpose_a=True)
                for i in range(kernel_size) for j in range(kernel_size)]
    return tf.reshape(tf.stack(products), [kernel_size, kernel_size, channels, -1])


def tensorflow_passes(shape, kernel_size, filters, precision):
    """Callables computing each of `PASSES` and `MATRIX_PRODUCTS` in TensorFlow, returning NumPy arrays."""
    import tensorflow as tf

    from alignseg_keras.layers.offset_head import convolution_by_shifted_products

    channels = shape[-1]
    images, kernel, upstream = (tf.constant(array, precision) for array in random_inputs(shape, kernel_size, filters))
    strides = [1, 1, 1, 1]
    forward = tf.function(lambda: tf.nn.conv2d(images, kernel, strides, "SAME"))
    input_gradient = tf.function(lambda: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=list(shape), filter=kernel, out_backprop=upstream, strides=strides, padding="SAME"))
    kernel_gradient = tf.function(lambda: tf.raw_ops.Conv2DBackpropFilter(
        input=images, filter_sizes=[kernel_size, kernel_size, channels, filters], out_backprop=upstream,
        strides=strides, padding="SAME"))
    by_products = tf.function(lambda: kernel_gradient_by_matrix_products(images, upstream, kernel_size))
    passes = dict(zip((*PASSES, MATRIX_PRODUCTS), (forward, input_gradient, kernel_gradient, by_products)))
    passes[ALL_PASSES] = all_passes(lambda x, k: tf.nn.conv2d(x, k, strides, "SAME"), images, kernel, upstream)
    passes[SHIFTED_PRODUCTS] = all_passes(convolution_by_shifted_products, images, kernel, upstream)
    return {name: (lambda f=f: tf.nest.map_structure(lambda t: t.numpy(), f())) for name, f in passes.items()}


def all_passes(convolve, images, kernel, upstream):
    """A `tf.function` running `convolve(images, kernel)` and the gradients of
    `sum(output * upstream)` with respect to the images and the kernel."""
    import tensorflow as tf

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch([images, kernel])
            value = tf.reduce_sum(convolve(images, kernel) * upstream)
        return tape.gradient(value, [images, kernel])

    return run


def torch_passes(shape, kernel_size, filters, precision, channels_last):
    """Callables computing each of `PASSES` in PyTorch (channels-first results), on the
    same numbers as `tensorflow_passes`."""
    import torch

    dtype = getattr(torch, precision)
    images, kernel, upstream = (torch.from_numpy(array).to(dtype) for array in channels_first_inputs(
        random_inputs(shape, kernel_size, filters)))
    if channels_last:
        images, upstream = (t.contiguous(memory_format=torch.channels_last) for t in (images, upstream))
    padding = [kernel_size // 2] * 2

    def backward(mask):
        def run():
            with torch.no_grad():
                gradients = torch.ops.aten.convolution_backward(upstream, images, kernel, None, [1, 1], padding,
                                                                [1, 1], False, [0, 0], 1, mask)
            return gradients[mask.index(True)]
        return run

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(images, kernel, padding=padding)

    def all_three():
        inputs, weights = images.detach().requires_grad_(), kernel.detach().requires_grad_()
        (torch.nn.functional.conv2d(inputs, weights, padding=padding) * upstream).sum().backward()
        return inputs.grad, weights.grad

    passes = dict(zip(PASSES, (forward, backward([True, False, False]), backward([False, True, False]))))
    passes[ALL_PASSES] = all_three
    return passes


def measure(shape, kernel_size, filters, precision, repeats=7):
    """GFLOP/s of each (library, pass), round-robin in this process; PyTorch's only if installed."""
    from benchmarks.convolution_peak import convolution_gflop
    from benchmarks.timing import interleaved_minimum

    candidates = {("tensorflow", name): f for name, f in tensorflow_passes(shape, kernel_size, filters,
                                                                             precision).items()}
    try:
        for layout, channels_last in (("torch", False), ("torch channels_last", True)):
            for name, f in torch_passes(shape, kernel_size, filters, precision, channels_last).items():
                candidates[(layout, name)] = f
    except ImportError:
        pass  # PyTorch is optional: TensorFlow's passes alone
    seconds = interleaved_minimum(candidates, repeats, warmup=2)
    gflop = convolution_gflop(shape, kernel_size, filters)
    passes_of = {ALL_PASSES: 3, SHIFTED_PRODUCTS: 3}
    return {"shape": list(shape), "kernel_size": kernel_size, "filters": filters, "precision": precision,
            "gflop": gflop, "gflops": {f"{library}, {name}": passes_of.get(name, 1) * gflop / s
                                       for (library, name), s in seconds.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--shape", type=int, nargs=4, default=(2, 128, 128, 256), metavar=("B", "H", "W", "C"))
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--filters", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.kernel % 2 == 0:
        parser.error(f"--kernel {args.kernel}: an odd size, so that 'same' padding is symmetric on both sides")
    print(json.dumps(measure(tuple(args.shape), args.kernel, args.filters, args.precision, args.repeats)))


if __name__ == "__main__":
    main()
