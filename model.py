"""A small MNIST CNN (under 10k parameters) whose normalization layers are chosen by name."""
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("bn", "ln", "gn")


def norm_layer(norm, channels, groups):
    """The normalization layer `norm` for a conv output with `channels` channels.

    bn: BatchNorm2d, statistics per channel over the batch and the pixels (N, H, W); running averages at eval.
    ln: GroupNorm(1, C), statistics per sample over all channels and pixels (C, H, W); same at train and eval.
    gn: GroupNorm(groups, C), statistics per sample and per group of C/groups channels (C/groups, H, W).
    All three learn a per-channel scale and shift afterwards.
    """
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels)
    if norm == "gn":
        if channels % groups:
            raise ValueError(f"groups={groups} does not divide a layer's {channels} channels; "
                             f"GroupNorm needs a group count that divides every width in {Net.WIDTHS}")
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(map(repr, NORMS))}")


class Net(nn.Module):
    """Conv net for 28x28 digits; `norm` picks "bn", "ln" or "gn" (with `groups` groups) after every 3x3 conv.

    Layout: two 3x3 convs, a 1x1 conv and max-pool, four 3x3 convs, global average pooling, a 1x1 classifier.
    Returns log-probabilities (use with F.nll_loss).
    """

    WIDTHS = (8, 16)  # every normalized layer has one of these channel counts

    def __init__(self, norm="bn", groups=4, dropout=0.05):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.norm, self.groups, self.dropout = norm, groups, dropout

        def block(c_in, c_out, padding=0):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=padding, bias=False),
                                 norm_layer(norm, c_out, groups), nn.ReLU(), nn.Dropout(dropout))

        self.features = nn.Sequential(
            block(1, 8),                                   # 28 -> 26
            block(8, 16),                                  # 26 -> 24
            nn.Conv2d(16, 8, 1, bias=False), nn.MaxPool2d(2),  # 24 -> 12
            block(8, 16),                                  # 12 -> 10
            block(16, 16),                                 # 10 -> 8
            block(16, 16),                                 # 8 -> 6
            block(16, 16, padding=1),                      # 6 -> 6
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(16, 10, 1, bias=False),
        )

    def forward(self, x):
        return F.log_softmax(self.features(x).flatten(1), dim=1)
