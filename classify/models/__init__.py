"""Models by name, plus user models given as ``module:factory``.

Built-in modules are imported only when their model is asked for, so importing this
package (the CLI, ``soundbus tail``) never imports torch.
A user model is any importable ``module:factory`` where ``factory()`` returns a
classify.models.base.Model (see docs/classify.md).
"""

from __future__ import annotations

import importlib

from classify.models.base import Model

# name -> "module:factory"; the modules import torch/onnxruntime themselves.
BUILTIN: dict[str, str] = {
    "vad": "classify.models.vad:make_vad",
    "vad-onnx": "classify.models.vad:make_vad_onnx",
    "yamnet": "classify.models.yamnet:make_yamnet",
    "level": "classify.models.level:make_level",
    "wakeword": "classify.models.wakeword:make_wakeword",
}


class UnknownModel(ValueError):
    """The name is neither a built-in model nor an importable ``module:factory``."""


def known_models() -> list[str]:
    return list(BUILTIN)


def _factory(ref: str):
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise UnknownModel(f"cannot import module {module_name!r} for model {ref!r}") from None
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UnknownModel(f"module {module_name!r} has no factory {attr!r}") from None


def load_model(name: str) -> Model:
    """The model called ``name`` (built-in) or made by ``module:factory``.

    Raises UnknownModel for a name that is neither; other exceptions come from the
    model's own loading (a missing optional package raises ImportError).
    """
    if name in BUILTIN:
        ref = BUILTIN[name]
    elif ":" in name:
        ref = name
    else:
        raise UnknownModel(f"unknown model {name!r}")
    factory = _factory(ref)
    if name in BUILTIN:
        model = factory()
    else:
        try:
            model = factory()
        except ImportError:
            raise
        except Exception as e:  # a user's MODULE:FACTORY that is not a model factory (e.g. json:dumps)
            raise UnknownModel(f"{ref}() failed ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(model, Model) and not (hasattr(model, "spec") and hasattr(model, "forward")):
        raise UnknownModel(f"{ref} returned {type(model).__name__}, not a model (needs .spec and .forward)")
    return model
