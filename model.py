"""A small MNIST CNN (under 10k parameters) whose normalization layers are chosen by name."""
import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("bn", "ln", "gn")


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalizes each group of `micro_batch` consecutive samples with that group's own
    statistics: in one forward pass, what `len(x) / micro_batch` separate passes through nn.BatchNorm2d compute
    (ghost batch normalization, Hoffer et al., 2017), the micro-batch sweep's BatchNorm at the cost of one pass.

    Each group's mean and biased variance over (samples, H, W) normalize it; the learned scale and shift follow. The
    running averages end where one nn.BatchNorm2d update per group, in order, would put them: after k updates with
    momentum a, group i (1..k) weighs a * (1 - a)**(k - i) and the old value (1 - a)**k (unbiased variances, as
    nn.BatchNorm2d keeps). A last group of fewer samples is its own group, as a last forward pass would be. In eval
    mode, or when `micro_batch` is at least the batch, it is nn.BatchNorm2d. Public versions differ on purpose or not:
    cifar10-fast's GhostBatchNorm takes strided, not consecutive, groups and averages their running statistics into
    one update; composer's divides the momentum by the number of groups; neither ends where sequential passes do.
    """

    def __init__(self, channels, micro_batch):
        super().__init__(channels)
        self.micro_batch = micro_batch

    def forward(self, x):
        n, m = len(x), self.micro_batch
        if not self.training or m >= n:
            return super().forward(x)
        whole = n - n % m
        parts = [x[:whole].reshape(whole // m, m, x.shape[1], -1)]
        parts += [x[whole:].unsqueeze(0).flatten(3)] if whole < n else []
        outputs, means, variances = [], [], []
        for g in parts:  # (groups, samples, C, H * W): contiguous reductions over the pixels, then the samples
            mean = g.mean(-1).mean(1)
            centered = g - mean[:, None, :, None]
            var = centered.square().mean(-1).mean(1)  # biased, as BatchNorm normalizes with
            scale = self.weight * torch.rsqrt(var + self.eps)
            outputs.append(torch.addcmul(self.bias[None, None, :, None], centered, scale[:, None, :, None]))
            count = g.shape[1] * g.shape[3]
            means.append(mean)
            variances.append(var * (count / (count - 1)))
        self._update_running_statistics(torch.cat(means).detach(), torch.cat(variances).detach())
        return torch.cat([out.flatten(0, 1) for out in outputs]).reshape(x.shape)

    @torch.no_grad()
    def _update_running_statistics(self, means, variances):
        k, a = len(means), self.momentum
        weights = a * (1 - a) ** torch.arange(k - 1, -1, -1, device=means.device, dtype=means.dtype)
        self.running_mean.mul_((1 - a) ** k).add_(weights @ means)
        self.running_var.mul_((1 - a) ** k).add_(weights @ variances)
        self.num_batches_tracked.add_(k)

    def extra_repr(self):
        return f"{super().extra_repr()}, micro_batch={self.micro_batch}"


def norm_layer(norm, channels, groups, micro_batch=None):
    """The normalization layer `norm` for a conv output with `channels` channels.

    bn: BatchNorm2d, statistics per channel over the batch and the pixels (N, H, W); running averages at eval. With
        `micro_batch`, GhostBatchNorm2d: the same over each group of `micro_batch` consecutive samples.
    ln: GroupNorm(1, C), statistics per sample over all channels and pixels (C, H, W); same at train and eval.
    gn: GroupNorm(groups, C), statistics per sample and per group of C/groups channels (C/groups, H, W).
    All three learn a per-channel scale and shift afterwards.
    """
    if norm == "bn":
        return GhostBatchNorm2d(channels, micro_batch) if micro_batch else nn.BatchNorm2d(channels)
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

    `micro_batch` (bn only) makes BatchNorm take its training statistics over groups of that many consecutive samples
    (GhostBatchNorm2d): the micro-batch sweep. LN and GN take theirs per sample, so no micro-batch changes them.

    Layout: two 3x3 convs, a 1x1 conv and max-pool, four 3x3 convs, global average pooling, a 1x1 classifier.
    Returns log-probabilities (use with F.nll_loss).
    """

    WIDTHS = (8, 16)  # every normalized layer has one of these channel counts

    def __init__(self, norm="bn", groups=4, dropout=0.05, micro_batch=None):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if micro_batch is not None:
            if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
                raise ValueError(f"micro_batch must be a positive int or None, got {micro_batch!r}")
            if norm != "bn":
                raise ValueError(f"micro_batch applies to BatchNorm only, not norm={norm!r}: LN and GN normalize each "
                                 f"sample on its own, so a micro-batch does not change them")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.norm, self.groups, self.dropout = norm, groups, dropout

        def block(c_in, c_out, padding=0):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=padding, bias=False),
                                 norm_layer(norm, c_out, groups, micro_batch), nn.ReLU(), nn.Dropout(dropout))

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
