"""pix2pix (Isola et al. 2017): image-to-image translation with a U-Net G and a PatchGAN D.

G is an encoder-decoder whose mirrored layers are joined by skip connections; dropout in its
first decoder blocks is the only noise (no latent), as in the paper. D scores overlapping
patches of the channel-concatenated (input, output) pair. Depth follows the image size: the
encoder halves a side s0 * 2**k down to s0 (4..7) in k stride-2 steps (28 -> 7, 256 -> 4), and
D's receptive field grows with it (16 px at 28-32, 34 at 64, the paper's 70 from 128 up).
"""

from __future__ import annotations

import torch
from torch import nn

from genai_cli.config import ModelConfig
from genai_cli.errors import UsageError
from genai_cli.models.base import GenerativeModel, ModelSpec
from genai_cli.models.blocks import dcgan_init, norm_layer, resolution_plan, stage_widths

DROPOUT_BLOCKS = 3  # decoder blocks nearest the bottleneck with dropout(0.5), as the paper's first three
MAX_PATCH_LAYERS = 3  # the paper's 70x70 PatchGAN


class UNetGenerator(nn.Module):
    def __init__(self, in_channels: int, channels: int, image_size: int, width: int, norm: str) -> None:
        super().__init__()
        _, stages = resolution_plan(image_size)
        if stages < 2:
            raise UsageError(f"--model pix2pix needs an --image-size of 16 or more (two halvings), got {image_size}")
        widths = stage_widths(width, stages)
        bias = norm == "none"
        self.downs = nn.ModuleList([nn.Conv2d(in_channels, widths[0], 4, 2, 1)])
        for w_in, w_out in zip(widths, widths[1:]):
            self.downs.append(nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(w_in, w_out, 4, 2, 1, bias=bias),
                                            norm_layer(norm, w_out)))
        self.ups = nn.ModuleList()
        for i in range(stages - 1, 0, -1):  # innermost first; every later block also reads its skip
            w_in = widths[i] if i == stages - 1 else 2 * widths[i]
            block = [nn.ReLU(), nn.ConvTranspose2d(w_in, widths[i - 1], 4, 2, 1, bias=bias), norm_layer(norm, widths[i - 1])]
            if len(self.ups) < DROPOUT_BLOCKS:
                block.append(nn.Dropout(0.5))
            self.ups.append(nn.Sequential(*block))
        self.out = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * widths[0], channels, 4, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        h = skips.pop()
        for up in self.ups:
            h = torch.cat([up(h), skips.pop()], dim=1)
        return self.out(h)


def patch_layers(image_size: int) -> int:
    """Stride-2 layers of D: receptive field 16, 34 or 70 px, about half the image up to the paper's 70."""
    _, stages = resolution_plan(image_size)
    return max(1, min(MAX_PATCH_LAYERS, stages - 2))


class PatchDiscriminator(nn.Module):
    """(input, candidate output) -> a map of logits, one per overlapping patch."""

    def __init__(self, in_channels: int, channels: int, image_size: int, width: int, norm: str) -> None:
        super().__init__()
        layers = patch_layers(image_size)
        bias = norm == "none"
        w = [width * min(2**i, 8) for i in range(layers + 1)]
        body: list[nn.Module] = [nn.Conv2d(in_channels + channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            body += [nn.Conv2d(w[i - 1], w[i], 4, stride, 1, bias=bias), norm_layer(norm, w[i]), nn.LeakyReLU(0.2)]
        body.append(nn.Conv2d(w[-1], 1, 4, 1, 1))
        self.net = nn.Sequential(*body)

    def forward(self, output: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, output], dim=1))


class TranslationModel(GenerativeModel):
    """A generator from an input image (no latent) and the discriminator that trained it."""

    translates = True
    metrics = ("paired",)  # L1, PSNR and SSIM against the real targets

    def __init__(self, config: ModelConfig, generator: nn.Module, discriminator: nn.Module) -> None:
        super().__init__(config)
        self.generator = generator
        self.discriminator = discriminator

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("input",)  # the graph's output is `image`

    @property
    def input_channels(self) -> int:
        return self.config.in_channels or self.config.channels or 1

    def generating_half(self) -> nn.Module:
        return self.generator

    def generate(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Input images in [-1, 1] -> their translations in [-1, 1]."""
        return self.generator(x)


def build(config: ModelConfig) -> TranslationModel:
    assert config.channels and config.image_size
    in_channels = config.in_channels or config.channels
    args = (in_channels, config.channels, config.image_size, config.width, config.norm)
    model = TranslationModel(config, UNetGenerator(*args), PatchDiscriminator(*args))
    dcgan_init(model)
    return model


SPEC = ModelSpec(
    name="pix2pix",
    build=build,
    description="image-to-image translation: U-Net generator, PatchGAN discriminator (Isola et al. 2017)",
    shape=TranslationModel,
    latent_dim=0,
    # the paper trains at batch 1-10 without a moving average. At equal CPU, batch 16 beats 128 on both
    # derived tasks (classifier FID 18.4 vs 28.0 edges, 3.30 vs 9.09 masked), and the EMA of G (the GAN
    # families' 0.999) beats none (14.9 vs 17.1 edges, standing statistics both): benchmarks/RESULTS.md
    batch_size=16,
)
