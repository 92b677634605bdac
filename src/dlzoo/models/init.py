"""Weight initialisation schemes selectable by config (the curriculum's normal / Xavier / He)."""

from __future__ import annotations

from torch import nn

from dlzoo.errors import ConfigError

INIT_SCHEMES = ("default", "normal", "xavier", "he", "orthogonal")


def init_recurrent(module: nn.Module, scheme: str, nonlinearity: str = "tanh", std: float = 0.1) -> None:
    """Initialise every weight matrix of `module` with `scheme`; biases to zero.

    'default' keeps PyTorch's own init (uniform +-1/sqrt(hidden)). 'he' is Kaiming-normal with the
    gain of `nonlinearity`, meant for ReLU RNNs; 'xavier' (Glorot-uniform) suits tanh.
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return
    for name, param in module.named_parameters():
        if "bias" in name:
            nn.init.zeros_(param)
        elif scheme == "normal":
            nn.init.normal_(param, 0.0, std)
        elif scheme == "xavier":
            nn.init.xavier_uniform_(param, gain=nn.init.calculate_gain(nonlinearity))
        elif scheme == "he":
            nn.init.kaiming_normal_(param, nonlinearity="relu" if nonlinearity == "relu" else "tanh")
        elif scheme == "orthogonal":
            nn.init.orthogonal_(param)
