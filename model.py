"""A small MNIST CNN (under 10k parameters) whose normalization layers are chosen by name, and the packing of several
such nets (one per seed) into one net that trains them together."""
import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("bn", "ln", "gn")
REFERENCE = "none"  # the same net without normalization: the learning-rate range test's reference
INITS = ("default", "kaiming")  # PyTorch's default conv initialization, or Kaiming-normal (fan-in, ReLU)


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalizes each group of `micro_batch` consecutive samples with that group's own
    statistics: in one forward pass, what `len(x) / micro_batch` separate passes through nn.BatchNorm2d compute
    (ghost batch normalization, Hoffer et al., 2017), the micro-batch sweep's BatchNorm at the cost of one pass.

    The g groups of a batch (n, C, H, W) are laid side by side as the channels of an (m, g * C, H * W) view, so one
    batch_norm call takes every group's per-channel mean and biased variance over (samples, H, W) and applies the
    learned scale and shift. The running averages end where one nn.BatchNorm2d update per group, in order, would put
    them: after k updates with momentum a, group i (1..k) weighs a * (1 - a)**(k - i) and the old value (1 - a)**k
    (unbiased variances, as nn.BatchNorm2d keeps). A last group of fewer samples is its own group, as a last forward
    pass would be. In eval mode, or when `micro_batch` is at least the batch, it is nn.BatchNorm2d. Public versions
    differ on purpose or not: cifar10-fast's GhostBatchNorm takes strided, not consecutive, groups and averages their
    running statistics into one update; composer's divides the momentum by the number of groups; neither ends where
    sequential passes do.
    """

    def __init__(self, channels, micro_batch):
        super().__init__(channels)
        self.micro_batch = micro_batch

    def forward(self, x):
        n, m = len(x), self.micro_batch
        if not self.training or m >= n:
            return super().forward(x)
        whole = n - n % m
        parts = [x] if whole == n else [x[:whole], x[whole:]]
        outputs, means, variances = [], [], []
        for part in parts:
            size = min(m, len(part))  # samples per group
            groups, c = len(part) // size, x.shape[1]
            side_by_side = part.reshape(groups, size, c, -1).transpose(0, 1).reshape(size, groups * c, -1)
            mean, var = x.new_zeros(groups * c), x.new_zeros(groups * c)  # batch_norm writes each group's statistics
            out = F.batch_norm(side_by_side, mean, var, self.weight.repeat(groups), self.bias.repeat(groups),
                               training=True, momentum=1.0, eps=self.eps)  # momentum 1: the buffers become them
            outputs.append(out.reshape(size, groups, c, -1).transpose(0, 1).reshape(part.shape))
            means.append(mean.view(groups, c))
            variances.append(var.view(groups, c))
        self._update_running_statistics(torch.cat(means), torch.cat(variances))
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    @torch.no_grad()
    def _update_running_statistics(self, means, variances):
        k, a = len(means), self.momentum
        weights = a * (1 - a) ** torch.arange(k - 1, -1, -1, device=means.device, dtype=means.dtype)
        self.running_mean.mul_((1 - a) ** k).add_(weights @ means)
        self.running_var.mul_((1 - a) ** k).add_(weights @ variances)
        self.num_batches_tracked.add_(k)

    def extra_repr(self):
        return f"{super().extra_repr()}, micro_batch={self.micro_batch}"


class Dropout(nn.Dropout):
    """Dropout for `copies` nets side by side in the channels: copy k's mask comes from `generators[k]`, the random
    stream of its own seed, so that a seed draws the same masks whether it trains alone or with others. Without
    generators (None), from torch's global generator."""

    def __init__(self, p, copies):
        super().__init__(p)
        self.copies, self.generators = copies, None

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        n, c, h, w = x.shape
        shape = (n, c // self.copies, h, w)
        noise = torch.cat([torch.rand(shape, generator=g, device=x.device, dtype=x.dtype)
                           for g in self.generators or [None] * self.copies], 1)
        return x * (noise >= self.p) / (1 - self.p)


def norm_layer(norm, channels, groups, micro_batch=None, copies=1):
    """The normalization layer `norm` for a conv output with `channels` channels in each of `copies` nets side by side.

    bn: BatchNorm2d, statistics per channel over the batch and the pixels (N, H, W); running averages at eval. With
        `micro_batch`, GhostBatchNorm2d: the same over each group of `micro_batch` consecutive samples.
    ln: GroupNorm(1, C), statistics per sample over all channels and pixels (C, H, W); same at train and eval.
    gn: GroupNorm(groups, C), statistics per sample and per group of C/groups channels (C/groups, H, W).
    none: no normalization (the identity).
    All three learn a per-channel scale and shift afterwards. Side by side, each copy's channels are its own groups
    (GroupNorm(copies * groups, copies * C)) and BatchNorm is per channel anyway, so every copy is normalized alone.
    """
    if norm == "bn":
        return GhostBatchNorm2d(copies * channels, micro_batch) if micro_batch else nn.BatchNorm2d(copies * channels)
    if norm == "ln":
        return nn.GroupNorm(copies, copies * channels)
    if norm == "gn":
        if channels % groups:
            raise ValueError(f"groups={groups} does not divide a layer's {channels} channels; "
                             f"GroupNorm needs a group count that divides every width in {Net.WIDTHS}")
        return nn.GroupNorm(copies * groups, copies * channels)
    if norm == REFERENCE:
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(map(repr, NORMS + (REFERENCE,)))}")


class Net(nn.Module):
    """Conv net for 28x28 digits; `norm` picks "bn", "ln" or "gn" (with `groups` groups) after every 3x3 conv ("none":
    no normalization, the learning-rate range test's reference).

    The study's nets have bias-free convs and PyTorch's default initialization, which suit a net with normalization.
    A fair net without it needs what normalization otherwise provides: `bias=True` gives every conv that no
    normalization follows a bias (zero at the start), and `init="kaiming"` draws every conv's weights Kaiming-normal
    (fan-in, ReLU gain; He et al., 2015), so that the signal keeps its scale from layer to layer.

    `micro_batch` (bn only) makes BatchNorm take its training statistics over groups of that many consecutive samples
    (GhostBatchNorm2d): the micro-batch sweep. LN and GN take theirs per sample, so no micro-batch changes them.

    Layout: two 3x3 convs, a 1x1 conv and max-pool, four 3x3 convs, global average pooling, a 1x1 classifier.
    Takes (N, 1, 28, 28) digits and returns (N, 10) log-probabilities (use with F.nll_loss).

    `copies` > 1 builds that many such nets side by side, as one net with the same operators (pack() fills it from
    plain nets): copy k reads input channel k, its convs are group k of grouped convs, its normalization statistics
    are its own, and it returns (N, copies, 10). The training loop trains the seeds of a configuration this way.
    """

    WIDTHS = (8, 16)  # every normalized layer has one of these channel counts

    def __init__(self, norm="bn", groups=4, dropout=0.05, micro_batch=None, copies=1, bias=False, init="default"):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies must be a positive int, got {copies!r}")
        if micro_batch is not None:
            if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
                raise ValueError(f"micro_batch must be a positive int or None, got {micro_batch!r}")
            if norm != "bn":
                raise ValueError(f"micro_batch applies to BatchNorm only, not norm={norm!r}: LN and GN normalize each "
                                 f"sample on its own, so a micro-batch does not change them")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be True or False, got {bias!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; allowed: {', '.join(map(repr, INITS))}")
        self.norm, self.groups, self.dropout, self.micro_batch, self.copies = norm, groups, dropout, micro_batch, copies
        self.bias, self.init = bias, init

        def conv(c_in, c_out, size, padding=0, normalized=False):
            return nn.Conv2d(copies * c_in, copies * c_out, size, padding=padding, groups=copies,
                             bias=bias and not (normalized and norm != REFERENCE))

        def block(c_in, c_out, padding=0):
            return nn.Sequential(conv(c_in, c_out, 3, padding, normalized=True),
                                 norm_layer(norm, c_out, groups, micro_batch, copies), nn.ReLU(),
                                 Dropout(dropout, copies))

        self.features = nn.Sequential(
            block(1, 8),                            # 28 -> 26
            block(8, 16),                           # 26 -> 24
            conv(16, 8, 1), nn.MaxPool2d(2),        # 24 -> 12
            block(8, 16),                           # 12 -> 10
            block(16, 16),                          # 10 -> 8
            block(16, 16),                          # 8 -> 6
            block(16, 16, padding=1),               # 6 -> 6
            nn.AdaptiveAvgPool2d(1),
            conv(16, 10, 1),
        )
        if init == "kaiming":
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, x):
        log_probs = F.log_softmax(self.features(x).view(len(x), self.copies, 10), dim=-1)
        return log_probs if self.copies > 1 else log_probs[:, 0]

    def draw_from(self, generators):
        """Draw copy k's dropout masks from generators[k] (its seed's own stream); None: torch's global generator."""
        if generators is not None and len(generators) != self.copies:
            raise ValueError(f"a net of {self.copies} copies needs {self.copies} generators, got {len(generators)}")
        for module in self.modules():
            if isinstance(module, Dropout):
                module.generators = generators


def _settings(net):
    return {"norm": net.norm, "groups": net.groups, "dropout": net.dropout, "micro_batch": net.micro_batch,
            "bias": net.bias, "init": net.init}


def pack(nets):
    """One Net of len(nets) copies that computes, side by side, exactly what each of the plain `nets` computes: their
    weights and statistics laid one after another along the channels."""
    settings = _settings(nets[0])
    if any(_settings(net) != settings or net.copies != 1 for net in nets):
        raise ValueError("pack() takes plain nets (copies=1) that differ in their weights only")
    packed = Net(**settings, copies=len(nets)).to(next(nets[0].parameters()).device)
    states = [net.state_dict() for net in nets]
    packed.load_state_dict({name: torch.cat([s[name] for s in states]) if tensor.dim() else tensor
                            for name, tensor in states[0].items()})
    return packed


def unpack(packed):
    """The plain Nets (copies=1) that `packed` holds side by side, in order: pack() undone."""
    nets = [Net(**_settings(packed)).to(next(packed.parameters()).device) for _ in range(packed.copies)]
    state = packed.state_dict()
    for k, net in enumerate(nets):
        net.load_state_dict({name: tensor.chunk(packed.copies)[k] if tensor.dim() else tensor
                             for name, tensor in state.items()})
    return nets
