"""The enrolled avatars a gateway serves (client/avatar.py): each has its own backend, its own frame
inference (warmed and health-checked like the default one) and its loop as its presenter face."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lipsync.client.avatar import Avatar, load_avatars
from lipsync.client.backends import create_backend
from lipsync.client.backends.base import LipSyncBackend
from lipsync.streaming.config import GatewayConfig
from lipsync.streaming.inference import FrameInference
from lipsync.streaming.presenter import PresenterSource


@dataclass
class ServedAvatar:
    """One avatar at the gateway. The inference is made at start-up, on the running event loop."""

    avatar: Avatar
    presenter: PresenterSource
    backend: LipSyncBackend | None = None
    inference: FrameInference | None = None

    @property
    def name(self) -> str:
        return self.avatar.name


def avatar_backend(config: GatewayConfig, avatar: Avatar) -> LipSyncBackend:
    """The avatar's own backend: its served model on Triton (same server), or its weights in-process."""
    return create_backend(config.backend, **config.avatar_backend_options(avatar))


def create_avatar_backends(config: GatewayConfig) -> dict[str, LipSyncBackend]:
    """A backend per configured avatar, by name; on a failure the ones already made are closed."""
    backends: dict[str, LipSyncBackend] = {}
    try:
        for name, avatar in load_avatars(config.avatars).items():
            backends[name] = avatar_backend(config, avatar)
    except BaseException:
        for backend in backends.values():
            backend.close()
        raise
    return backends


def load_served_avatars(
    config: GatewayConfig, backends: Mapping[str, LipSyncBackend] | None = None
) -> dict[str, ServedAvatar]:
    """The configured avatars with their presenter faces decoded; `backends` (by name) may bring their
    backends already made (the rest are made at start-up). A backend for an avatar not configured is an error."""
    avatars = load_avatars(config.avatars)
    backends = dict(backends or {})
    if unknown := sorted(set(backends) - set(avatars)):
        raise ValueError(f"backends given for avatars {unknown} that are not configured (avatars: {sorted(avatars)})")
    return {
        name: ServedAvatar(avatar, PresenterSource.from_clip(avatar.loop), backend=backends.get(name))
        for name, avatar in avatars.items()
    }
