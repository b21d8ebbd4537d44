"""An independent PyTorch re-implementation of the authors' AlignSeg, for equivalence tests.

Written from the facts in the reference notes (docs/pretrained.md summarises
them), not from the authors' code. Module names and registration order give
exactly the `state_dict` of the authors' `networks/alignseg.py` (858 keys for
ResNet-101), so `alignseg_keras.convert` can be checked against real PyTorch:

- deep-stem ResNet (3x3 convs 3->64 /2, 64->64, 64->128, each BN + ReLU; a
  3x3/2 max-pool with padding 1 and ceil_mode), torchvision bottlenecks with
  the stride on the 3x3 conv;
- every normalisation layer, the backbone's included, is an InPlaceABN
  (mapillary/inplace_abn), modelled in inference as that library's
  `forward_cpu` computes it: scale = (|weight| + eps) / sqrt(running_var + eps),
  shift = bias - running_mean * scale, x * scale + shift (eps 1e-5), then
  LeakyReLU(0.01) ("ABN"), or no activation in the backbone;
- RRB: unify 1x1 -> 256; residual 3x3 -> 64, ABN, 3x3 -> 256; ABN(unify + residual);
- CAB: upsample the coarse stream (align_corners=True), two offset generators
  on [fine, coarse], out = U(coarse, delta_gen1) + U(fine, delta_gen2);
- CAM: 3x3 adaptive average pool -> 1x1 -> ABN -> 3x3 -> ABN (context), the
  same convs on the input (local), offsets from [local, up(context)],
  out = U(context, delta) + local;
- U is the legacy sampler: grid_sample (align_corners=False, zero padding) at
  normalised x = linspace(-1, 1, W_out)[j] + delta[0] / W_in (y likewise with
  delta[1] / H_in), i.e. x = j W_in / (W_out - 1) - 0.5 + delta[0] / 2 pixels;
- head / dsn: 3x3 conv (bias) -> ABN -> Dropout2d(0.1) -> 1x1 conv (bias);
- input: RGB 0..255 flipped to BGR minus (104.00698793, 116.66876762,
  122.67891434); logits upsampled to the input size with align_corners=True.
"""

import torch
import torch.nn.functional as F
from torch import nn

BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class InPlaceABN(nn.BatchNorm2d):
    """mapillary/inplace_abn's InPlaceABN in inference, with BatchNorm's state_dict keys.

    Not plain BatchNorm: the library scales by `|weight| + eps`, so negative
    weights act as their absolute value. In training mode it normalises with
    the batch statistics (and updates the running ones), as the library's
    training kernel does; only its in-place memory saving is not modelled.
    """

    def __init__(self, channels, activation="leaky_relu"):
        super().__init__(channels, eps=1e-5)
        self.activation = activation

    def forward(self, x):
        if self.training:
            x = F.batch_norm(
                x, self.running_mean, self.running_var, self.weight.abs() + self.eps,
                self.bias, True, self.momentum, self.eps,
            )
            return F.leaky_relu(x, 0.01) if self.activation == "leaky_relu" else x
        scale = (self.weight.abs() + self.eps) / torch.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        x = x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        return F.leaky_relu(x, 0.01) if self.activation == "leaky_relu" else x


def ABN(channels):
    """The decoder's normalisation: InPlaceABN with LeakyReLU(0.01)."""
    return InPlaceABN(channels, "leaky_relu")


def BatchNorm2d(channels):
    """The backbone's normalisation: InPlaceABN without activation (as the authors define it)."""
    return InPlaceABN(channels, "identity")


def conv(in_channels, out_channels, kernel_size, stride=1, bias=False):
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=bias
    )


def legacy_sample(features, size, offsets):
    """The authors' released sampler U(F, delta) at output `size` (see module docstring)."""
    out_h, out_w = size
    batch, _, in_h, in_w = features.shape
    device = features.device
    ys = torch.linspace(-1.0, 1.0, out_h, device=device).view(1, out_h, 1).expand(batch, out_h, out_w)
    xs = torch.linspace(-1.0, 1.0, out_w, device=device).view(1, 1, out_w).expand(batch, out_h, out_w)
    grid = torch.stack((xs + offsets[:, 0] / in_w, ys + offsets[:, 1] / in_h), dim=-1)
    return F.grid_sample(
        features, grid.to(features.dtype), mode="bilinear", padding_mode="zeros",
        align_corners=False,
    )


def upsample(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class Bottleneck(nn.Module):
    def __init__(self, in_channels, width, stride):
        super().__init__()
        self.conv1 = conv(in_channels, width, 1)
        self.bn1 = BatchNorm2d(width)
        self.conv2 = conv(width, width, 3, stride)
        self.bn2 = BatchNorm2d(width)
        self.conv3 = conv(width, width * 4, 1)
        self.bn3 = BatchNorm2d(width * 4)
        self.downsample = None
        if stride != 1 or in_channels != width * 4:
            self.downsample = nn.Sequential(
                conv(in_channels, width * 4, 1, stride), BatchNorm2d(width * 4)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + shortcut)


class RRB(nn.Module):
    def __init__(self, in_channels, channels=256):
        super().__init__()
        self.unify = conv(in_channels, channels, 1)
        self.residual = nn.Sequential(
            conv(channels, channels // 4, 3), ABN(channels // 4), conv(channels // 4, channels, 3)
        )
        self.norm = ABN(channels)

    def forward(self, x):
        x = self.unify(x)
        return self.norm(x + self.residual(x))


def delta_generator(in_channels, hidden=256):
    return nn.Sequential(conv(in_channels, hidden, 1), ABN(hidden), conv(hidden, 2, 3))


class CAB(nn.Module):
    def __init__(self, channels=256):
        super().__init__()
        self.delta_gen1 = delta_generator(2 * channels)
        self.delta_gen2 = delta_generator(2 * channels)

    def forward(self, fine, coarse):
        size = fine.shape[2:]
        coarse = upsample(coarse, size)
        both = torch.cat([fine, coarse], dim=1)
        return legacy_sample(coarse, size, self.delta_gen1(both)) + legacy_sample(
            fine, size, self.delta_gen2(both)
        )


class CAM(nn.Module):
    def __init__(self, in_channels=2048, channels=256, bins=3):
        super().__init__()
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(bins),
            conv(in_channels, in_channels, 1),
            ABN(in_channels),
            conv(in_channels, channels, 3),
            ABN(channels),
        )
        self.adapt = nn.Sequential(
            conv(in_channels, in_channels, 1),
            ABN(in_channels),
            conv(in_channels, channels, 3),
            ABN(channels),
        )
        self.delta_gen = delta_generator(2 * channels)

    def forward(self, x):
        size = x.shape[2:]
        context = self.pool(x)
        local = self.adapt(x)
        delta = self.delta_gen(torch.cat([local, upsample(context, size)], dim=1))
        return legacy_sample(context, size, delta) + local


def segmentation_head(num_classes, channels=256):
    return nn.Sequential(
        conv(channels, channels, 3, bias=True),
        ABN(channels),
        nn.Dropout2d(0.1),
        conv(channels, num_classes, 1, bias=True),
    )


class ReferenceAlignSeg(nn.Module):
    """The authors' AlignSeg in PyTorch; `forward` takes RGB NCHW images (0..255)."""

    def __init__(self, num_classes=19, depth=101):
        super().__init__()
        self.conv1 = conv(3, 64, 3, 2)
        self.bn1 = BatchNorm2d(64)
        self.conv2 = conv(64, 64, 3)
        self.bn2 = BatchNorm2d(64)
        self.conv3 = conv(64, 128, 3)
        self.bn3 = BatchNorm2d(128)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        in_channels = 128
        for stage, blocks in enumerate(STAGE_BLOCKS[depth]):
            width = 64 * 2**stage
            layers = []
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(Bottleneck(in_channels, width, stride))
                in_channels = width * 4
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        # Registered in the order of the authors' state_dict.
        self.CAM = CAM(2048)
        for stage, stage_channels in ((5, 256), (4, 2048), (3, 1024), (2, 512)):
            setattr(self, f"RRB{stage}a", RRB(stage_channels))
            setattr(self, f"CAB{stage}", CAB())
            setattr(self, f"RRB{stage}b", RRB(256))
        self.RRB1a = RRB(256)
        self.dsn = segmentation_head(num_classes)
        self.head = segmentation_head(num_classes)

    def backbone(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.maxpool(F.relu(self.bn3(self.conv3(x))))
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features

    def forward(self, rgb):
        """Returns `(logits, aux_logits)`, NCHW at the input size."""
        mean = torch.tensor(BGR_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        x = rgb.flip(1) - mean
        x1, x2, x3, x4 = self.backbone(x)
        d1 = self.RRB1a(x1)
        d2 = self.RRB2b(self.CAB2(d1, self.RRB2a(x2)))
        d3 = self.RRB3b(self.CAB3(d2, self.RRB3a(x3)))
        d4 = self.RRB4b(self.CAB4(d3, self.RRB4a(x4)))
        d5 = self.RRB5b(self.CAB5(d4, self.RRB5a(self.CAM(x4))))
        size = rgb.shape[2:]
        return upsample(self.head(d5), size), upsample(self.dsn(d3), size)


def randomize(model, seed=0, offset_scale=1.0, negative_fraction=0.25):
    """Random weights with non-trivial BatchNorm statistics, keeping activations O(1).

    Convolutions get He-normal weights scaled by 0.5 (residual sums stay
    bounded) and small biases; every normalisation layer gets a weight of
    magnitude in [0.5, 1.5], negative with probability `negative_fraction`
    (trained InPlaceABN networks hold such weights), bias ~ N(0, 0.1), running
    mean ~ N(0, 0.1) and running variance in [0.5, 2].
    The last conv of each offset generator (zero at the authors'
    initialisation) is scaled so that offsets reach about `offset_scale` x 2
    half-pixels, so the sampler is really exercised.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor, std):
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    def uniform(tensor, low, high):
        tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                std = 0.5 * (2.0 / fan_in) ** 0.5
                if name.endswith(".2") and "delta_gen" in name:
                    std = offset_scale * (1.0 / fan_in) ** 0.5
                normal(module.weight, std)
                if module.bias is not None:
                    normal(module.bias, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                uniform(module.weight, 0.5, 1.5)
                negative = torch.rand(module.weight.shape, generator=generator) < negative_fraction
                module.weight.mul_(1.0 - 2.0 * negative.float())
                normal(module.bias, 0.1)
                normal(module.running_mean, 0.1)
                uniform(module.running_var, 0.5, 2.0)
                module.num_batches_tracked.fill_(1000)
    return model
