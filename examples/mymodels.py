"""A network of your own for `model.arch: mymodels:small_vgg` (see README "Your own model")."""

from torch import nn


def small_vgg(in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.2):
    """Two conv-conv-pool blocks and a linear head: for 8x8 to 32x32 images."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(in_channels, width), *block(width, 2 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(2 * width, num_classes))
