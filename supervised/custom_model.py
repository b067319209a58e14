"""`model.arch: module:factory`: the user's own network, trained like the built-in ones.

The factory is called with the data's shapes it declares as parameters (all of them if it
takes **kwargs), then `model.options`, and returns a torch `nn.Module`:

    task         "image" | "sequence" | "lm"
    in_channels  image channels;     image_size   (height, width)
    num_classes  classifiers;        vocab_size   language models (next-character logits)
    feature_dim  features per step of a sequence; seq_len  steps per sequence

Input and output are the built-in models': images (B, C, H, W) -> (B, num_classes);
sequences (B, T, F) -> (B, num_classes); text (B, T) character ids -> (B, T, vocab_size).
"""

from __future__ import annotations

import inspect

from trainyard import usercode

EXAMPLE = "mymodels:make_net"


def check_factory(arch: str, deep: bool) -> str:
    """`module:factory` written right and its module found; with `deep`, imported and the
    factory a callable (its output is checked on the data at run, see `check_output`)."""
    if deep:
        _factory(arch)
    else:
        usercode.find(usercode.split(arch, "your own model", EXAMPLE)[0], arch)
    return arch


def _factory(arch: str):
    module, name = usercode.split(arch, "your own model", EXAMPLE)
    factory = getattr(usercode.load(module, arch), name, None)
    if not callable(factory):
        raise ValueError(f"module {module!r} has no function {name!r} (model.arch {arch!r}); "
                         "define def make_net(num_classes, ...) -> torch.nn.Module there")
    return factory


def shapes(info, sample=None) -> dict:
    """The data's shapes as the factory's keyword arguments (see the module's docstring)."""
    found = {"task": info.task, "num_classes": info.num_classes, "seq_len": info.seq_len}
    if info.task == "image":
        found["in_channels"] = info.in_channels
        if sample is not None:
            found["image_size"] = tuple(sample.shape[-2:])
    elif info.task == "lm":
        found["vocab_size"] = len(info.vocab)
    else:
        found["feature_dim"] = info.feature_dim
    return found


def build(model_spec, info, sample=None):
    """Call the user's factory for this data; ValueError naming what went wrong."""
    from torch import nn

    factory = _factory(model_spec.arch)
    given = shapes(info, sample)
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in given.items() if takes_all or k in params}
    kwargs.update(model_spec.options)
    where = f"model.arch {model_spec.arch}"
    try:
        net = factory(**kwargs)
    except Exception as err:  # noqa: BLE001 - the user's factory: one line, its words
        raise ValueError(f"{where}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
                         f"failed: {type(err).__name__}: {err}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{where} returned {type(net).__name__}, not a torch.nn.Module")
    if sample is not None and any(isinstance(p, nn.parameter.UninitializedParameter)
                                  for p in net.parameters()):
        import torch

        with torch.no_grad():  # lazy layers take their shapes now: DDP cannot wrap them later
            net(sample)
    return net


def check_output(model_spec, info, inputs) -> None:
    """Build the network once in the driver and run it on two examples: a wrong output shape
    is one line here instead of a failure inside every Train worker."""
    import torch

    net = build(model_spec, info, inputs)
    batch = inputs.shape[0]
    want = ((batch, inputs.shape[1], len(info.vocab)) if info.task == "lm"
            else (batch, info.num_classes))
    net.eval()
    try:
        with torch.no_grad():
            out = net(inputs)
    except Exception as err:  # noqa: BLE001 - the user's forward: one line, its words
        raise ValueError(f"model.arch {model_spec.arch}: the network failed on a batch of "
                         f"shape {tuple(inputs.shape)} ({inputs.dtype}): "
                         f"{type(err).__name__}: {err}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model.arch {model_spec.arch}: a batch of shape "
                         f"{tuple(inputs.shape)} gave {got}; it should give {want} "
                         f"({'next-character logits' if info.task == 'lm' else 'class logits'})")
