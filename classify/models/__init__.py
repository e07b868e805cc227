"""Models by name, plus user models given as ``module:factory``.

Built-in modules are imported only when their model is asked for, so importing this
package (the CLI, ``soundbus tail``) never imports torch.
A user model is any importable ``module:factory`` where ``factory()`` returns a
classify.models.base.Model (see docs/classify.md). A built-in model that takes options
is named ``NAME:OPTIONS`` (``birdnet:overlap=1.5,min_conf=0.5``): its factory gets the
text after the colon and raises ModelOptionError for a bad option.
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
    "birdnet": "classify.models.birdnet:make_birdnet",
}
# built-in models whose factory takes an options string: ``NAME:OPTIONS``
WITH_OPTIONS = {"birdnet"}


class UnknownModel(ValueError):
    """The name is neither a built-in model nor an importable ``module:factory``."""


class ModelOptionError(UnknownModel):
    """A built-in model's option is unknown or out of range; the message is one sentence saying which."""


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

    ``NAME:OPTIONS`` passes OPTIONS to a built-in model that takes them (WITH_OPTIONS).
    Raises UnknownModel for a name that is neither, ModelOptionError (a subclass) for bad
    options; other exceptions come from the model's own loading (a missing optional
    package raises ImportError).
    """
    base, colon, options = name.partition(":")
    args: tuple[str, ...] = ()
    if name in BUILTIN:
        ref = BUILTIN[name]
    elif colon and base in BUILTIN:
        if base not in WITH_OPTIONS:
            raise ModelOptionError(f"model {base} takes no options (got {options!r})")
        ref, args = BUILTIN[base], (options,)
    elif colon:
        ref = name
    else:
        raise UnknownModel(f"unknown model {name!r}")
    factory = _factory(ref)
    if base in BUILTIN:  # a built-in's own errors (ModelOptionError, ImportError) pass through
        model = factory(*args)
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
