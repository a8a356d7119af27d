"""Kubernetes pod metadata: :mod:`.spec` reads pod objects (pure), :mod:`.watch` keeps this node's pods current."""

from agent.kube.spec import ContainerMeta, EnvSource, PodMeta
from agent.kube.watch import KubeMetadata, KubeStatus, connect

__all__ = ["ContainerMeta", "EnvSource", "KubeMetadata", "KubeStatus", "PodMeta", "connect"]
